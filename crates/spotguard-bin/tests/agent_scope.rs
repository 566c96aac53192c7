//! What an agent touches: its own Node, and nothing else. It keeps no watch cache and reads no
//! pod or budget; on a notice it makes one write, on its node. With the controller down it
//! still taints its node and records the notice there — no new pod lands on the node, nothing
//! is drained or scaled — and the controller that comes up takes the record in and acts.
//! Without `daemon.node_name`, an agent that may not list nodes fails to start, naming the
//! setting.
#![cfg(feature = "daemon")]

mod harness;

use std::time::Duration;

use harness::{eventually, node_name, run_cli, standard_groups, World, SPOT};
use spotguard_k8s::notice::NOTICE_ANNOTATION;
use spotguard_testkit_aws::ImdsServer;

/// A request's path without its query.
fn path_of(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

fn has_taint(node: &k8s_openapi::api::core::v1::Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_controller_down_an_agent_marks_only_its_node_and_the_next_leader_acts() {
    let world = World::start(&standard_groups()).await;
    let at_risk = world.instances(SPOT).await.into_iter().next().unwrap();
    let node = node_name(&at_risk);
    world.add_pods("web", &node, 2).await;
    let spot_before = world.group(SPOT).await;
    world.config("");
    let imds = ImdsServer::start(&at_risk).await;
    let mut agent = world
        .spawn("agent", "agent", Some(&imds), &["--node-name", &node])
        .await;
    agent.wait_ready(Duration::from_secs(60)).await;
    // Start-up read the agent's own node, and nothing else.
    let own = format!("/api/v1/nodes/{node}");
    let requests = world.agent.api.requests();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|(m, p, _)| m == "GET" && (path_of(p) == own || p.starts_with("/version"))),
        "{requests:?}"
    );

    // A notice, no controller: the node is tainted and the notice recorded, in one write.
    imds.set_rebalance(
        &humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    );
    eventually("the node marked", Duration::from_secs(30), || async {
        world.node(&node).await.is_some_and(|n| {
            has_taint(&n, "spotguard.dev/draining")
                && n.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(NOTICE_ANNOTATION))
        })
    })
    .await;
    let writes: Vec<_> = world
        .agent
        .api
        .requests()
        .into_iter()
        .filter(|(m, _, _)| m != "GET")
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        (writes[0].0.as_str(), path_of(&writes[0].1)),
        ("PATCH", own.as_str())
    );
    assert!(world
        .agent
        .api
        .requests()
        .iter()
        .all(|(_, p, _)| path_of(p) == own || p.starts_with("/version")));
    // Nothing else happens while no controller runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.group(SPOT).await.desired, spot_before.desired);
    assert_eq!(
        world.pods_on(&node).await.len(),
        2 + 1,
        "the two pods and the agent's"
    );
    assert!(world.ledger().await.entries.is_empty());

    // The controller comes up and acts on the record: pre-scale, drain, payback.
    let mut controller = world.spawn("controller", "controller", None, &[]).await;
    controller.wait_ready(Duration::from_secs(60)).await;
    world
        .group_until(SPOT, "the spot pre-scale", Duration::from_secs(60), |g| {
            g.desired == spot_before.desired + 1
        })
        .await;
    world
        .group_until(
            SPOT,
            "the pre-scale paid back",
            Duration::from_secs(90),
            |g| g.desired == spot_before.desired && !g.holds(&at_risk),
        )
        .await;
    assert_eq!(world.proxy.received("SetDesiredCapacity"), 1, "one raise");
    controller.terminate();
    agent.terminate();
    assert!(controller
        .wait_exit(Duration::from_secs(30))
        .await
        .success());
    assert!(agent.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_node_fails_to_start_naming_the_setting() {
    let world = World::start(&standard_groups()).await;
    let imds = ImdsServer::start("i-0000000000nowhere").await;
    world.config("");
    let config = world.dir.path().join("spotguard.toml");
    let imds_url = imds.url();
    let args = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--role",
        "agent",
        "--metrics-addr",
        "127.0.0.1:0",
        "--imds-endpoint",
        imds_url.as_str(),
    ];
    // Starts the agent with `kubeconfig`: its one error line.
    let start = |kubeconfig: std::path::PathBuf| {
        let args = args.map(str::to_string);
        let dir = world.dir.path().to_path_buf();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let kubeconfig = kubeconfig.to_str().unwrap().to_string();
            let (status, _, stderr) = run_cli(
                &args,
                &[("SPOTGUARD_KUBECONFIG", kubeconfig.as_str())],
                &dir,
            )
            .await;
            assert_eq!(status.code(), Some(1), "{stderr}");
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "one error line:\n{stderr}");
            lines[0].to_string()
        }
    };
    // The agents' account, with the chart's rules: it may not list nodes to find its own.
    let line = start(world.agent.kubeconfig.clone()).await;
    for part in [
        "cannot find this agent's node for instance i-0000000000nowhere",
        "cannot list resource \"nodes\"",
        "daemon.node_name / SPOTGUARD_NODE_NAME",
    ] {
        assert!(line.contains(part), "{part}: {line}");
    }
    // With the right to list nodes (the controller's), an unknown instance says so.
    let line = start(world.controller.kubeconfig.clone()).await;
    assert!(
        line.contains("no node has i-0000000000nowhere in its spec.providerID"),
        "{line}"
    );
    assert_eq!(world.writes_to_kubernetes(), vec![]);
}
