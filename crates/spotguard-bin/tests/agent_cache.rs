//! What an agent caches: every node, but only the pods of its own node and no
//! PodDisruptionBudgets. Its node is `daemon.node_name` or, unset, the node of the instance IMDS
//! names; without either, start-up fails naming the setting.
#![cfg(feature = "daemon")]

mod harness;

use std::time::Duration;

use harness::{node_name, run_cli, standard_groups, World, SPOT};
use spotguard_aws::testing::ImdsServer;

/// Requests of `role` whose path starts with `prefix`, from position `from` of its log.
fn requests_to(world: &World, role: &str, from: usize, prefix: &str) -> Vec<String> {
    world.access(role).api.requests()[from..]
        .iter()
        .filter(|(_, p, _)| p.starts_with(prefix))
        .map(|(_, p, _)| p.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_watch_their_own_node_pods_and_no_pdbs() {
    let world = World::start(&standard_groups()).await;
    let instances: Vec<String> = world.instances(SPOT).await.into_iter().collect();
    world.config("");

    for (i, explicit) in [(0, false), (1, true)] {
        let instance = &instances[i];
        let node = node_name(instance);
        let imds = ImdsServer::start(instance).await;
        let from = world.agent.api.requests().len();
        let args: Vec<&str> = if explicit {
            vec!["--node-name", node.as_str()]
        } else {
            vec![]
        };
        let mut agent = world.spawn(&format!("agent-{i}"), "agent", Some(&imds), &args);
        agent.wait_ready(Duration::from_secs(60)).await;
        let pods = requests_to(&world, "agent", from, "/api/v1/pods?");
        assert!(!pods.is_empty(), "the agent watches pods");
        let selector = format!("fieldSelector=spec.nodeName%3D{node}");
        assert!(
            pods.iter().all(|p| p.contains(&selector)),
            "every pod list and watch is scoped to {node}: {pods:?}"
        );
        let pdbs = requests_to(
            &world,
            "agent",
            from,
            "/apis/policy/v1/poddisruptionbudgets",
        );
        assert_eq!(pdbs, Vec::<String>::new(), "an agent does not watch PDBs");
        agent.terminate();
        assert!(agent.wait_exit(Duration::from_secs(30)).await.success());
    }

    // The controller caches the whole cluster.
    let from = world.controller.api.requests().len();
    let mut controller = world.spawn("controller", "controller", None, &[]);
    controller.wait_ready(Duration::from_secs(60)).await;
    assert!(requests_to(&world, "controller", from, "/api/v1/pods?")
        .iter()
        .all(|p| !p.contains("fieldSelector")));
    assert!(!requests_to(
        &world,
        "controller",
        from,
        "/apis/policy/v1/poddisruptionbudgets"
    )
    .is_empty());
    controller.terminate();
    assert!(controller
        .wait_exit(Duration::from_secs(30))
        .await
        .success());
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
    let kubeconfig = world.agent.kubeconfig.to_str().unwrap().to_string();
    let (status, _, stderr) = run_cli(
        &args,
        &[("SPOTGUARD_KUBECONFIG", kubeconfig.as_str())],
        world.dir.path(),
    )
    .await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{stderr}");
    for part in [
        "cannot find this agent's node for instance i-0000000000nowhere",
        "no node has i-0000000000nowhere in its spec.providerID",
        "daemon.node_name / SPOTGUARD_NODE_NAME",
    ] {
        assert!(lines[0].contains(part), "{part}: {}", lines[0]);
    }
    assert_eq!(world.writes_to_kubernetes(), vec![]);
}
