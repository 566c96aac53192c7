//! Invariants 2 to 4 across a crash: the controller is killed (SIGKILL) in the middle of a
//! scale-down, between the fallback scale-up and the ledger release, while a
//! PodDisruptionBudget holds the drain. A restarted controller takes the leader Lease over,
//! resumes from the ledger and completes the scale-down exactly once.
#![cfg(feature = "daemon")]

mod harness;

use std::time::Duration;

use harness::{
    eventually, fallback_given_back, node_name, reach_fallback, standard_groups, World,
    LEADER_LEASE, LEDGER, ON_DEMAND, SPOT,
};
use spotguard_core::ledger::EntryState;
use spotguard_testkit_aws::ImdsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_scale_down_is_resumed_exactly_once() {
    let world = World::start(&standard_groups()).await;
    let at_risk = world.instances(SPOT).await.into_iter().next().unwrap();
    let baseline = world.instances(ON_DEMAND).await.into_iter().next().unwrap();
    world.add_pods("web", &node_name(&at_risk), 2).await;
    let imds = ImdsServer::start(&at_risk).await;
    world.config("");
    let mut agent = world.spawn("agent", "agent", Some(&imds), &[]).await;
    agent.wait_ready(Duration::from_secs(60)).await;

    let mut controller = world.spawn("controller", "controller", None, &[]).await;
    controller.wait_ready(Duration::from_secs(60)).await;
    let fallback = reach_fallback(&world, &imds, &at_risk).await;
    let od_node = node_name(&fallback.on_demand);
    // Two pods of a database on the fallback node under a budget of one disruption: the
    // drain evicts one and is held on the other (its operator is down: nothing recreates it).
    world
        .add_database_pods("db", &od_node, &["db-0", "db-1"])
        .await;
    world.add_pdb("db", 1).await;
    assert_eq!(
        world.proxy.forwarded("TerminateInstanceInAutoScalingGroup"),
        1
    );

    // Spot is healthy again: the controller starts removing the fallback node.
    world.proxy.clear();
    eventually(
        "the scale-down under way and held by the PDB",
        Duration::from_secs(90),
        || async {
            let draining = world
                .ledger()
                .await
                .get(&fallback.entry)
                .is_some_and(|e| e.state == EntryState::Draining);
            draining && world.app_pods("db").await.len() == 1
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    controller.kill().await;

    // Killed between the scale-up and the release: nothing given back yet.
    let od = world.group(ON_DEMAND).await;
    assert_eq!(od.desired, 2, "{od:?}");
    assert!(od.holds(&fallback.on_demand));
    assert_eq!(
        world.ledger().await.get(&fallback.entry).unwrap().state,
        EntryState::Draining
    );
    assert_eq!(
        world.proxy.forwarded("TerminateInstanceInAutoScalingGroup"),
        1
    );

    // The operator brings a pod up elsewhere, so the budget allows the last eviction.
    let spot_node = node_name(&world.instances(SPOT).await.into_iter().next().unwrap());
    world.add_database_pods("db", &spot_node, &["db-2"]).await;

    let mut restarted = world.spawn("controller-2", "controller", None, &[]).await;
    restarted.wait_ready(Duration::from_secs(60)).await;
    fallback_given_back(
        &world,
        &fallback,
        "the fallback given back by the restarted controller",
    )
    .await;
    // A few more monitor ticks change nothing: exactly once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    restarted.assert_running();
    assert_eq!(
        world.proxy.forwarded("TerminateInstanceInAutoScalingGroup"),
        2,
        "the pre-scale payback and one fallback removal, nothing more"
    );
    let od = world.aws_group(ON_DEMAND).await;
    assert_eq!(od["DesiredCapacity"], 1, "{od}");
    let ids: Vec<&str> = od["Instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["InstanceId"].as_str())
        .collect();
    assert_eq!(
        ids,
        [baseline.as_str()],
        "the baseline instance is untouched"
    );
    let cm = world
        .kubectl_json(&["get", "configmap", LEDGER, "-n", &world.namespace])
        .await;
    let ledger: spotguard_core::ledger::Ledger =
        serde_json::from_str(cm["data"]["ledger.json"].as_str().unwrap()).unwrap();
    assert_eq!(ledger.open().count(), 0, "{ledger:?}");
    let lease = world.lease(LEADER_LEASE).await.expect("leader lease");
    let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions);
    assert!(
        transitions.unwrap_or_default() >= 1,
        "the restarted controller took the lease over: {lease:?}"
    );
    let output = restarted.output();
    assert!(output.contains("leading"), "{output}");
    agent.assert_running();
}
