//! `spotguard status`, and the same as the real `kubectl`'s `kubectl spotguard` plugin, against
//! a real run: the agent and controller processes on moto and the real control plane (as in
//! `e2e.rs`) reach an on-demand fallback that spot cannot give back yet; status shows the open
//! entry with its pool, instance, node, age, state and the monitor's latest verdict, and the
//! recent actions, read with an operator's kubeconfig. Once spot is back and the fallback
//! given back, it shows no open entry and the payback. Bad kubeconfigs, contexts and
//! namespaces are refused with one line naming them. The controller's webhook notifications
//! of the same run reach a local receiver, in order.
#![cfg(feature = "daemon")]

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{
    fallback_given_back, node_name, reach_fallback, run_cli, standard_groups, World, ON_DEMAND,
    SPOT,
};
use serde_json::Value;
use spotguard_testkit_aws::ImdsServer;

/// `spotguard status --kubeconfig <admin> -n <namespace> <args>`: (success, stdout, stderr).
async fn status(world: &World, args: &[&str]) -> (bool, String, String) {
    let kubeconfig = world.cp.kubeconfig_path().to_str().unwrap().to_string();
    let mut all = vec![
        "status",
        "--kubeconfig",
        &kubeconfig,
        "-n",
        &world.namespace,
    ];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(&all, &[], world.dir.path()).await;
    (code.success(), out, err)
}

/// The real `kubectl` running the binary as its `kubectl-spotguard` plugin from `PATH`.
async fn kubectl_plugin(world: &World, bin_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new("kubectl")
        .arg("spotguard")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", world.cp.kubeconfig_path())
        .output()
        .await
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_open_fallback_its_verdict_and_the_actions_of_a_real_run() {
    let world = World::start(&standard_groups()).await;
    let at_risk = world.instances(SPOT).await.into_iter().next().unwrap();
    let at_risk_node = node_name(&at_risk);
    world.add_pods("web", &at_risk_node, 2).await;
    let imds = ImdsServer::start(&at_risk).await;
    // The controller notifies a webhook of every action too.
    let hook = harness::webhook::WebhookSink::start().await;
    world.config(&format!(
        "\n[webhook]\nurl = \"{}\"\ncluster = \"test\"\nbackoff = \"100ms\"",
        hook.url
    ));
    let mut agent = world.spawn("agent", "agent", Some(&imds), &[]).await;
    let mut controller = world.spawn("controller", "controller", None, &[]).await;
    agent.wait_ready(Duration::from_secs(60)).await;
    controller.wait_ready(Duration::from_secs(60)).await;

    // Before any notice: installed, nothing owed. The ledger does not exist yet.
    let (ok, _, err) = status(&world, &[]).await;
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "no Spot Guard ledger in namespace {}",
            world.namespace
        )),
        "{err}"
    );

    let fallback = reach_fallback(&world, &imds, &at_risk).await;
    let od_node = node_name(&fallback.on_demand);

    // Spot still launches nothing: the monitor waits on health, and says so.
    let text = spotguard_testkit_k8s::eventually(
        Duration::from_secs(60),
        "status shows the monitor's verdict on the fallback",
        || async {
            let (ok, out, err) = status(&world, &[]).await;
            assert!(ok, "{err}");
            out.contains(&format!("{}: health wait", fallback.entry))
                .then_some(out)
        },
    )
    .await;
    println!("spotguard status, with a fallback open:\n{text}");
    for needle in [
        format!("Spot Guard in namespace {}: leader ", world.namespace),
        fallback.entry.clone(),
        format!("{SPOT} -> {ON_DEMAND}"),
        fallback.on_demand.clone(),
        od_node.clone(),
        "fallback".into(),
        "active".into(),
        "RECENT ACTIONS".into(),
        "FallbackRecorded".into(),
        format!("drained {at_risk_node}"),
        "ScaleUpFailed (warning)".into(),
    ] {
        assert!(text.contains(&needle), "{needle} missing from\n{text}");
    }

    // The same as JSON, and from the real kubectl through its plugin mechanism.
    let (ok, out, err) = status(&world, &["--json"]).await;
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).expect("status --json is JSON");
    let entries = report["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{report}");
    let entry = &entries[0];
    assert_eq!(entry["id"], fallback.entry.as_str());
    assert_eq!(entry["kind"], "fallback");
    assert_eq!(entry["state"], "active");
    assert_eq!(entry["group"], ON_DEMAND);
    assert_eq!(entry["spot_group"], SPOT);
    assert_eq!(entry["node"], od_node.as_str());
    assert_eq!(entry["owed_instance"], fallback.on_demand.as_str());
    assert_eq!(entry["verdict"]["check"], "Health");
    assert!(
        entry["verdict"]["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("group {SPOT}")),
        "{entry}"
    );
    assert!(report["leader"]["identity"].is_string(), "{report}");
    assert!(report["actions"].as_array().unwrap().len() <= 10);

    let plugin_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        harness::daemon_binary(),
        plugin_dir.path().join("kubectl-spotguard"),
    )
    .unwrap();
    let (ok, out, err) = kubectl_plugin(
        &world,
        plugin_dir.path(),
        &["-n", &world.namespace, "--json"],
    )
    .await;
    assert!(ok, "kubectl spotguard: {err}");
    let via_kubectl: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(via_kubectl["entries"][0]["id"], fallback.entry.as_str());
    let (ok, out, _) = kubectl_plugin(&world, plugin_dir.path(), &["--help"]).await;
    assert!(ok);
    assert!(out.contains("Usage: kubectl spotguard"), "{out}");

    // What it cannot read, it names.
    let (ok, _, err) = run_cli(
        &["status", "--kubeconfig", "/nonexistent/kubeconfig"],
        &[],
        world.dir.path(),
    )
    .await;
    assert!(!ok.success());
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
    let (ok, _, err) = status(&world, &["--context", "elsewhere"]).await;
    assert!(!ok);
    assert!(err.contains("context elsewhere"), "{err}");
    let (ok, _, err) = run_cli(
        &[
            "status",
            "--kubeconfig",
            world.cp.kubeconfig_path().to_str().unwrap(),
            "-n",
            "no-such-namespace",
        ],
        &[],
        world.dir.path(),
    )
    .await;
    assert!(!ok.success());
    assert!(
        err.contains("no Spot Guard ledger in namespace no-such-namespace"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // Spot is back: the fallback is given back, and status says so.
    world.proxy.clear();
    fallback_given_back(&world, &fallback, "the on-demand fallback given back").await;
    let text = spotguard_testkit_k8s::eventually(
        Duration::from_secs(30),
        "status shows the payback",
        || async {
            let (ok, out, err) = status(&world, &["--actions", "50"]).await;
            assert!(ok, "{err}");
            let paid_back = format!("{}: gave back {ON_DEMAND} capacity", fallback.entry);
            (out.contains(&paid_back) && out.contains("No open ledger entries")).then_some(out)
        },
    )
    .await;
    println!("spotguard status, once given back:\n{text}");
    let (ok, out, _) = status(&world, &["--all", "--json"]).await;
    assert!(ok);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == fallback.entry.as_str() && e["state"] == "released"),
        "{report}"
    );
    // The controller's record was written through its own ServiceAccount, with the chart's
    // rules alone: created once, then patched as it changed.
    let requests = world.controller.api.requests();
    let saves: Vec<_> = requests
        .iter()
        .filter(|(method, path, _)| {
            method == "PATCH" && path.contains("/configmaps/spotguard-status")
        })
        .collect();
    assert!(
        saves.iter().filter(|(_, _, status)| *status == 200).count() >= 1,
        "the controller patched the status record: {saves:?}"
    );
    assert!(requests.iter().all(|(_, _, status)| *status != 403));
    // The webhook heard the same story, in order, as Slack messages.
    let texts: Vec<String> = spotguard_testkit_k8s::eventually(
        Duration::from_secs(30),
        "the payback notified",
        || async {
            let texts: Vec<String> = hook
                .bodies()
                .iter()
                .filter_map(|b| b["text"].as_str().map(str::to_string))
                .collect();
            texts
                .iter()
                .any(|t| t.contains(&format!("{}: gave back {ON_DEMAND}", fallback.entry)))
                .then_some(texts)
        },
    )
    .await;
    let position = |needle: &str| {
        texts
            .iter()
            .position(|t| t.contains(needle))
            .unwrap_or_else(|| panic!("no notification with {needle:?}: {texts:#?}"))
    };
    assert!(
        position(&format!("rebalance notice for {at_risk}"))
            < position(&format!(
                "fallback to {ON_DEMAND} recorded as {}",
                fallback.entry
            ))
    );
    assert!(texts
        .iter()
        .any(|t| t.starts_with(":warning: *Spot Guard* (test): scale-up of web-spot failed")));
    assert!(
        texts.iter().all(|t| !t.contains(" Health ")),
        "no verdicts are sent: {texts:#?}"
    );
    // Each counted as sent once its answer came back.
    let want = format!(
        "spotguard_notifications_total{{outcome=\"sent\"}} {}",
        hook.bodies().len()
    );
    {
        let controller = &controller;
        spotguard_testkit_k8s::eventually(Duration::from_secs(10), &want, || async {
            controller.metrics().await.contains(&want).then_some(())
        })
        .await;
    }
    agent.terminate();
    controller.terminate();
    assert!(agent.wait_exit(Duration::from_secs(30)).await.success());
    assert!(controller
        .wait_exit(Duration::from_secs(30))
        .await
        .success());
}
