//! Dry-run: every decision of phase 1 is made, logged and exported, and not one mutating call
//! reaches Auto Scaling or the API server (no scaling, taint, eviction, ledger, Lease or
//! Event).
#![cfg(feature = "daemon")]

mod harness;

use std::time::Duration;

use harness::{eventually, node_name, standard_groups, World, LEDGER, ON_DEMAND, SPOT};
use spotguard_testkit_aws::ImdsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_decides_and_logs_but_changes_nothing() {
    let world = World::start(&standard_groups()).await;
    let at_risk = world.instances(SPOT).await.into_iter().next().unwrap();
    let at_risk_node = node_name(&at_risk);
    world.add_pods("web", &at_risk_node, 2).await;
    let spot_before = world.group(SPOT).await;
    let od_before = world.group(ON_DEMAND).await;
    let imds = ImdsServer::start(&at_risk).await;
    world.config("");
    let mut daemon = world
        .spawn(
            "all",
            "all",
            Some(&imds),
            &[
                "--dry-run",
                "--scale-up-timeout",
                "8s",
                "--node-name",
                &at_risk_node,
            ],
        )
        .await;
    daemon.wait_ready(Duration::from_secs(60)).await;
    imds.set_rebalance(
        &humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    );

    // Spot is "raised" (not really) and its launch fails; on-demand is "raised" (not really)
    // and nothing comes: the action is abandoned and the taint "removed".
    let spot_raise = format!(
        "dry-run: would set desired capacity of {SPOT} to {}",
        spot_before.desired + 1
    );
    eventually(
        "the spot scale-up decided",
        Duration::from_secs(60),
        || async { daemon.output().contains(&spot_raise) },
    )
    .await;
    world
        .proxy
        .add_failed_activity(SPOT, "InsufficientInstanceCapacity: no spot capacity");
    let decisions = [
        format!("dry-run: would taint node {at_risk_node}"),
        spot_raise,
        format!(
            "dry-run: would set desired capacity of {ON_DEMAND} to {}",
            od_before.desired + 1
        ),
        format!("dry-run: would remove taint spotguard.dev/draining from node {at_risk_node}"),
        format!("no replacement for {at_risk_node}"),
    ];
    eventually("every decision logged", Duration::from_secs(60), || async {
        let out = daemon.output();
        decisions.iter().all(|d| out.contains(d.as_str()))
    })
    .await;
    let metrics = daemon.metrics().await;
    for needle in [
        "spotguard_build_info{version=",
        "dry_run=\"true\"",
        "spotguard_dry_run_suppressed_calls_total{service=\"autoscaling\",operation=\"SetDesiredCapacity\"} 2",
        "spotguard_dry_run_suppressed_calls_total{service=\"kubernetes\",operation=\"taint node\"} 1",
        "spotguard_fallbacks_total{group=\"web-od\"} 1",
        "spotguard_no_replacement_total 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }

    // Nothing changed anywhere.
    for action in [
        "SetDesiredCapacity",
        "TerminateInstanceInAutoScalingGroup",
        "UpdateAutoScalingGroup",
    ] {
        assert_eq!(world.proxy.received(action), 0, "{action} sent in dry-run");
    }
    assert_eq!(world.group(SPOT).await, spot_before);
    assert_eq!(world.group(ON_DEMAND).await, od_before);
    assert_eq!(
        world.writes_to_kubernetes(),
        vec![],
        "no write reached the API server"
    );
    assert!(world.configmap(LEDGER).await.is_none());
    assert!(world.leases().await.is_empty());
    assert_eq!(world.app_pods_on(&at_risk_node).await.len(), 2);
    let node = world.node(&at_risk_node).await.expect("the at-risk node");
    assert!(
        node.spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .is_empty(),
        "the node was not tainted"
    );

    daemon.terminate();
    let status = daemon.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}\n{}", daemon.output());
}
