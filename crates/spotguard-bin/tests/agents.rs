//! Invariant 1 across processes: two agents, on two spot nodes, get rebalance notices at the
//! same moment. Each raises the spot group under the group's Lease scale lock, so the group
//! goes up by exactly two and, after both pre-scales are paid back, ends where it started —
//! a lost update would leave it one short.
#![cfg(feature = "daemon")]

mod harness;

use std::time::{Duration, SystemTime};

use harness::{node_name, World, NAMESPACE, ON_DEMAND, SPOT};
use spotguard_aws::testing::{GroupSpec, ImdsServer};
use spotguard_core::ledger::{EntryKind, EntryState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_agents_raise_the_group_once_each() {
    let world = World::start(&[
        GroupSpec::spot(SPOT, 0, 10, 4),
        GroupSpec::on_demand(ON_DEMAND, 0, 5, 0),
    ])
    .await;
    let before = world.instances(SPOT).await;
    let at_risk: Vec<String> = before.iter().take(2).cloned().collect();
    for instance in &at_risk {
        world.add_pods("web", &node_name(instance), 2);
    }
    let imds_a = ImdsServer::start(&at_risk[0]).await;
    let imds_b = ImdsServer::start(&at_risk[1]).await;
    world.config("");
    let mut a = world.spawn("agent-a", "agent", Some(&imds_a), &[]);
    let mut b = world.spawn("agent-b", "agent", Some(&imds_b), &[]);
    a.wait_ready(Duration::from_secs(60)).await;
    b.wait_ready(Duration::from_secs(60)).await;

    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    imds_a.set_rebalance(&now);
    imds_b.set_rebalance(&now);

    let after = world
        .group_until(
            SPOT,
            "both at-risk instances replaced and paid back",
            Duration::from_secs(90),
            |g| at_risk.iter().all(|i| !g.holds(i)),
        )
        .await;
    world
        .eventually("both pre-scales released", Duration::from_secs(30), || {
            let ledger = world.ledger();
            ledger
                .entries
                .iter()
                .filter(|e| e.kind == EntryKind::Prescale && e.state == EntryState::Released)
                .count()
                == 2
        })
        .await;
    let after = world.group(SPOT).await.desired.max(after.desired);
    assert_eq!(
        after, 4,
        "the group is back where it started: no scale-up was lost"
    );
    let new: Vec<String> = world
        .instances(SPOT)
        .await
        .into_iter()
        .filter(|i| !before.contains(i))
        .collect();
    assert_eq!(new.len(), 2, "two replacements were launched: {new:?}");
    let ledger = world.ledger();
    let mut raised_from: Vec<u32> = ledger
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Prescale)
        .map(|e| e.desired_before)
        .collect();
    raised_from.sort();
    assert_eq!(raised_from, [4, 5], "one raise after the other: {ledger:?}");
    assert!(world
        .fake
        .get(
            "coordination.k8s.io",
            "leases",
            Some(NAMESPACE),
            "spotguard-scale-web-spot"
        )
        .is_some());
    for instance in &at_risk {
        assert!(world.fake.pods_on(&node_name(instance)).is_empty());
    }
    a.terminate();
    b.terminate();
    assert!(a.wait_exit(Duration::from_secs(30)).await.success());
    assert!(b.wait_exit(Duration::from_secs(30)).await.success());
}
