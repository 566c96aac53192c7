//! The real `kubectl` against the fake API server: `get`, `cordon`, `drain`, and the same end
//! state from `kubectl drain --ignore-daemonsets --delete-emptydir-data` as from Spot Guard's
//! cordon + drain on an identical cluster.

mod common;

use std::time::Duration;

use serde_json::json;
use spotguard_core::config::DrainOptions;
use spotguard_core::ports::Cluster;
use spotguard_k8s::testing::{pdb_min_available, FakeApiServer, FakeConfig, PodBuilder};

fn text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_and_cordon_work_against_the_fake() {
    let fake = FakeApiServer::start().await;
    common::three_nodes_with_web(&fake, 2);
    let kubectl = fake.kubectl();

    let out = kubectl.run(&["get", "nodes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().next().unwrap().starts_with("NAME"),
        "{stdout}"
    );
    for n in ["old", "new-a", "new-b"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(n) && l.contains("Ready")),
            "{stdout}"
        );
    }

    let out = kubectl.run(&["cordon", "old"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("node/old cordoned"));
    assert_eq!(
        fake.get("", "nodes", None, "old").unwrap()["spec"]["unschedulable"],
        json!(true)
    );
    let out = kubectl.run(&["get", "node", "old"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Ready,SchedulingDisabled"),
        "{}",
        text(&out)
    );

    let out = kubectl
        .run(&["get", "pods", "-n", "shop", "-o", "json"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    let out = kubectl.run(&["uncordon", "old"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(fake.get("", "nodes", None, "old").unwrap()["spec"]
        .get("unschedulable")
        .is_none());
    assert!(
        !fake.requests().iter().any(|(_, _, code)| *code >= 500),
        "kubectl never hit a server error"
    );
}

/// The cluster both drains start from: a ReplicaSet with a PDB, a DaemonSet pod, a mirror
/// pod and an emptyDir pod on `old`.
fn setup(fake: &FakeApiServer) {
    common::three_nodes_with_web(fake, 3);
    fake.create(pdb_min_available("shop", "web-pdb", "web", json!(2)));
    fake.create(
        PodBuilder::new("shop", "cache-0", "old")
            .owned_by("ReplicaSet", "cache")
            .label("app", "cache")
            .empty_dir()
            .build(),
    );
}

fn config() -> FakeConfig {
    FakeConfig {
        termination_delay: Duration::from_millis(100),
        replacement_ready_delay: Duration::from_millis(200),
        ..FakeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_and_spotguard_drain_leave_the_same_state() {
    let by_kubectl = FakeApiServer::start_with(config()).await;
    setup(&by_kubectl);
    by_kubectl.track_pdb_low_water();
    let out = by_kubectl
        .kubectl()
        .run(&[
            "drain",
            "old",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=60s",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("node/old drained"), "{stdout}");

    let by_spotguard = FakeApiServer::start_with(config()).await;
    setup(&by_spotguard);
    by_spotguard.track_pdb_low_water();
    let cluster = common::cluster(&by_spotguard).await;
    cluster.set_unschedulable("old", true).await.unwrap();
    let report = cluster
        .drain(
            "old",
            &DrainOptions {
                timeout: Duration::from_secs(60),
                ..DrainOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(report.is_complete(), "{:?}", report.remaining());

    // Replacements become Ready shortly after; compare once both clusters settled.
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Which of the two fresh nodes a replacement lands on depends on eviction order, which
    // differs between the two tools; everything else must be identical.
    let normalized = |fake: &FakeApiServer| -> Vec<String> {
        let mut lines: Vec<String> = fake
            .state_summary()
            .into_iter()
            .map(|l| {
                l.replace("node=new-a", "node=new-*")
                    .replace("node=new-b", "node=new-*")
            })
            .collect();
        lines.sort();
        lines
    };
    let expected = normalized(&by_kubectl);
    assert_eq!(normalized(&by_spotguard), expected);
    assert!(
        expected.contains(&"node old unschedulable=true taints=[]".to_string()),
        "{expected:#?}"
    );
    assert_eq!(
        expected.iter().filter(|l| l.contains("node=old")).count(),
        2,
        "DaemonSet and mirror pods stay: {expected:#?}"
    );
    for fake in [&by_kubectl, &by_spotguard] {
        assert!(fake.pdb_low_water("shop/web-pdb").unwrap() >= 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_and_spotguard_refuse_alike_without_delete_emptydir_data() {
    let fake = FakeApiServer::start_with(config()).await;
    setup(&fake);
    let out = fake
        .kubectl()
        .run(&["drain", "old", "--ignore-daemonsets", "--timeout=10s"])
        .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("local storage"),
        "{}",
        text(&out)
    );
    assert!(
        !fake
            .requests()
            .iter()
            .any(|(_, p, _)| p.contains("/eviction")),
        "kubectl evicted nothing"
    );

    let cluster = common::cluster(&fake).await;
    let report = cluster
        .drain(
            "old",
            &DrainOptions {
                delete_emptydir_data: false,
                timeout: Duration::from_secs(10),
                ..DrainOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(!report.is_complete());
    assert!(
        !fake
            .requests()
            .iter()
            .any(|(_, p, _)| p.contains("/eviction")),
        "Spot Guard evicted nothing either"
    );
}
