//! Graceful shutdown in the middle of a step: a controller whose drain of an at-risk node is
//! held by a PodDisruptionBudget gets SIGTERM. It stops taking work, gives the step
//! `daemon.shutdown_timeout` (5s here), abandons it, and exits 0; the ledger still holds the
//! open pre-scale for the next leader to finish.
#![cfg(feature = "daemon")]

mod harness;

use std::time::{Duration, Instant, SystemTime};

use harness::{eventually, node_name, standard_groups, World, SPOT};
use spotguard_core::ledger::{EntryKind, EntryState};
use spotguard_testkit_aws::ImdsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_held_drain_abandons_the_step_within_the_bound() {
    let world = World::start(&standard_groups()).await;
    let at_risk = world.instances(SPOT).await.into_iter().next().unwrap();
    let node = node_name(&at_risk);
    // One pod nothing recreates, under a budget that allows no disruption: the drain waits.
    world.add_database_pods("db", &node, &["db-0"]).await;
    world.add_pdb("db", 1).await;
    let imds = ImdsServer::start(&at_risk).await;
    world.config("");
    let mut agent = world.spawn("agent", "agent", Some(&imds), &[]).await;
    let mut controller = world.spawn("controller", "controller", None, &[]).await;
    agent.wait_ready(Duration::from_secs(60)).await;
    controller.wait_ready(Duration::from_secs(60)).await;
    imds.set_rebalance(&humantime::format_rfc3339_seconds(SystemTime::now()).to_string());

    eventually(
        "a drain held by the budget",
        Duration::from_secs(60),
        || async {
            world
                .controller
                .api
                .requests()
                .iter()
                .any(|(m, p, code)| m == "POST" && p.contains("/eviction") && *code == 429)
        },
    )
    .await;
    let asked = Instant::now();
    controller.terminate();
    let status = controller.wait_exit(Duration::from_secs(30)).await;
    let took = asked.elapsed();
    assert!(status.success(), "{status}\n{}", controller.output());
    assert!(
        took < Duration::from_secs(15),
        "stopped within the 5s bound plus start-up slack, took {took:?}"
    );
    let output = controller.output();
    assert!(
        output.contains("(notice handling or a monitor tick) abandoned at shutdown"),
        "{output}"
    );
    assert!(output.contains("ledger persisted"), "{output}");
    let ledger = world.ledger().await;
    assert!(
        ledger
            .entries
            .iter()
            .any(|e| e.kind == EntryKind::Prescale && e.state == EntryState::Active),
        "the open pre-scale stays in the ledger for the controller: {ledger:?}"
    );
    assert_eq!(
        world.app_pods_on(&node).await.len(),
        1,
        "the held pod is still there"
    );
    agent.terminate();
    assert!(agent.wait_exit(Duration::from_secs(30)).await.success());
}

/// SIGTERM while a notice handler holds the spot group's scale lock (its raise is being
/// throttled by Auto Scaling): the handler is abandoned after `--shutdown-timeout`, and the
/// controller gives the Lease up on its way out instead of leaving the next leader to wait
/// for it to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_lock_held_at_shutdown_is_given_up() {
    let world = World::start(&standard_groups()).await;
    let at_risk = world.instances(SPOT).await.into_iter().next().unwrap();
    let imds = ImdsServer::start(&at_risk).await;
    world.config("");
    let mut agent = world.spawn("agent", "agent", Some(&imds), &[]).await;
    let mut controller = world
        .spawn(
            "controller",
            "controller",
            None,
            // The SDK retries the throttled raise for a long while, all of it under the lock.
            &["--shutdown-timeout", "50ms", "--aws-max-attempts", "20"],
        )
        .await;
    agent.wait_ready(Duration::from_secs(60)).await;
    controller.wait_ready(Duration::from_secs(60)).await;
    world.proxy.throttle("SetDesiredCapacity", 50);
    imds.set_rebalance(&humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
    eventually("a raise under way", Duration::from_secs(60), || async {
        world.proxy.received("SetDesiredCapacity") >= 1
    })
    .await;
    let holder = || async {
        let lease = world
            .lease(&format!("spotguard-scale-{SPOT}"))
            .await
            .expect("the scale lock's Lease exists");
        lease.spec.and_then(|s| s.holder_identity)
    };
    assert!(holder().await.is_some(), "held during the raise");
    controller.terminate();
    let status = controller.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}\n{}", controller.output());
    let output = controller.output();
    assert!(
        output.contains("scale lock leases released at shutdown"),
        "{output}"
    );
    let left = holder().await;
    assert!(
        left.is_none(),
        "given up, not left to expire: held by {left:?}"
    );
    agent.terminate();
    assert!(agent.wait_exit(Duration::from_secs(30)).await.success());
}
