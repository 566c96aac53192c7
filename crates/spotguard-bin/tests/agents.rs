//! Invariant 1 with many agents: agents on several spot nodes get rebalance notices at the
//! same moment and hand them to the controller, which handles them at once. Each raise of the
//! spot group is taken under the group's Lease scale lock, so the group goes up by exactly one
//! per notice and, after the pre-scales are paid back, ends where it started — a lost update
//! would leave it short.
#![cfg(feature = "daemon")]

mod harness;

use std::time::{Duration, SystemTime};

use harness::{eventually, node_name, reach_fallback, World, ON_DEMAND, SPOT};
use spotguard_core::ledger::{EntryKind, EntryState};
use spotguard_testkit_aws::{GroupSpec, ImdsServer};

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
        world.add_pods("web", &node_name(instance), 2).await;
    }
    let imds_a = ImdsServer::start(&at_risk[0]).await;
    let imds_b = ImdsServer::start(&at_risk[1]).await;
    world.config("");
    let mut a = world.spawn("agent-a", "agent", Some(&imds_a), &[]).await;
    let mut b = world.spawn("agent-b", "agent", Some(&imds_b), &[]).await;
    let mut controller = world.spawn("controller", "controller", None, &[]).await;
    a.wait_ready(Duration::from_secs(60)).await;
    b.wait_ready(Duration::from_secs(60)).await;
    controller.wait_ready(Duration::from_secs(60)).await;

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
    eventually(
        "both pre-scales released",
        Duration::from_secs(30),
        || async {
            let ledger = world.ledger().await;
            ledger
                .entries
                .iter()
                .filter(|e| e.kind == EntryKind::Prescale && e.state == EntryState::Released)
                .count()
                == 2
        },
    )
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
    let ledger = world.ledger().await;
    let mut raised_from: Vec<u32> = ledger
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Prescale)
        .map(|e| e.desired_before)
        .collect();
    raised_from.sort();
    assert_eq!(raised_from, [4, 5], "one raise after the other: {ledger:?}");
    assert!(world.lease("spotguard-scale-web-spot").await.is_some());
    for instance in &at_risk {
        // Drained, and then the node deleted with its instance.
        assert!(world.app_pods_on(&node_name(instance)).await.is_empty());
    }
    for daemon in [&mut a, &mut b, &mut controller] {
        daemon.terminate();
    }
    for daemon in [&mut a, &mut b, &mut controller] {
        assert!(daemon.wait_exit(Duration::from_secs(30)).await.success());
    }
}

/// A rebalance recommendation, noticed now, on every one of these IMDS endpoints.
fn recommend_rebalance(servers: &[ImdsServer]) {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    for server in servers {
        server.set_rebalance(&now);
    }
}

/// How many ledger entries, open or released, are of this kind.
fn entries_of(ledger: &spotguard_core::ledger::Ledger, kind: EntryKind) -> usize {
    ledger.entries.iter().filter(|e| e.kind == kind).count()
}

/// One agent per at-risk instance (on its node, with its IMDS), after `others`; all ready.
async fn spawn_agents(
    world: &World,
    at_risk: &[String],
    imds: &[ImdsServer],
    mut others: Vec<harness::Daemon>,
) -> Vec<harness::Daemon> {
    for (i, (instance, imds)) in at_risk.iter().zip(imds).enumerate() {
        others.push(
            world
                .spawn(
                    &format!("agent-{i}"),
                    "agent",
                    Some(imds),
                    &["--node-name", &node_name(instance)],
                )
                .await,
        );
    }
    for daemon in &mut others {
        daemon.wait_ready(Duration::from_secs(120)).await;
    }
    others
}

/// Ten agents on ten spot nodes, one notice each at the same moment, handled by the controller
/// at once; replacements come up at once (moto's default), so the raises of some notices
/// overlap the paybacks (terminate with decrement) of others. Every change of desired capacity is taken under the group's Lease,
/// so the group ends exactly where it started with one replacement per notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_of_notices_leaves_the_group_where_it_started() {
    const AGENTS: usize = 10;
    const START: u32 = 12;
    let world = World::start(&[
        GroupSpec::spot(SPOT, 0, 40, START),
        GroupSpec::on_demand(ON_DEMAND, 0, 5, 0),
    ])
    .await;
    let before = world.instances(SPOT).await;
    let at_risk: Vec<String> = before.iter().take(AGENTS).cloned().collect();
    let mut imds = Vec::new();
    for instance in &at_risk {
        world.add_pods("web", &node_name(instance), 1).await;
        imds.push(ImdsServer::start(instance).await);
    }
    world.config("");
    let controller = world.spawn("controller", "controller", None, &[]).await;
    let mut agents = spawn_agents(&world, &at_risk, &imds, vec![controller]).await;

    recommend_rebalance(&imds);
    eventually(
        "every pre-scale made and settled",
        Duration::from_secs(180),
        || async {
            let ledger = world.ledger().await;
            entries_of(&ledger, EntryKind::Prescale) >= AGENTS && ledger.open().count() == 0
        },
    )
    .await;
    let group = world.group(SPOT).await;
    let new: Vec<String> = group
        .instance_ids()
        .into_iter()
        .filter(|i| !before.contains(i))
        .collect();
    assert_eq!(
        group.desired,
        START,
        "the group is back where it started: {:#?}",
        world.ledger().await
    );
    assert_eq!(new.len(), AGENTS, "one replacement per notice: {new:?}");
    assert!(
        at_risk.iter().all(|i| !group.holds(i)),
        "every at-risk instance paid back"
    );
    let ledger = world.ledger().await;
    assert_eq!(
        entries_of(&ledger, EntryKind::Prescale),
        AGENTS,
        "one raise per notice: {ledger:#?}"
    );
    for agent in &mut agents {
        agent.terminate();
    }
    for agent in &mut agents {
        assert!(agent.wait_exit(Duration::from_secs(30)).await.success());
    }
}

/// The controller's monitor gives a fallback back (terminate with decrement of the on-demand
/// group) while the notices of five agents fall back to the same on-demand group at once (the
/// spot group is at its maximum). Raises and the scale-down are serialized under the group's Lease: once
/// every fallback is given back, both groups are where they started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_gives_a_fallback_back_while_agents_raise_the_same_group() {
    const SPOT_START: u32 = 6;
    const OD_START: u32 = 1;
    let world = World::start(&[
        GroupSpec::spot(SPOT, 0, 10, SPOT_START),
        GroupSpec::on_demand(ON_DEMAND, 0, 10, OD_START),
    ])
    .await;
    let at_risk: Vec<String> = world.instances(SPOT).await.into_iter().take(6).collect();
    let mut imds = Vec::new();
    for instance in &at_risk {
        world.add_pods("web", &node_name(instance), 1).await;
        imds.push(ImdsServer::start(instance).await);
    }
    world.config("");
    let controller = world.spawn("controller", "controller", None, &[]).await;
    let mut daemons = spawn_agents(&world, &at_risk, &imds, vec![controller]).await;
    // A first fallback, while spot launches fail.
    let first = reach_fallback(&world, &imds[0], &at_risk[0]).await;
    // The spot group is full, so the next notices fall back to on-demand at once.
    let spot = world.group(SPOT).await;
    world
        .aws(&[
            "update-auto-scaling-group",
            "--auto-scaling-group-name",
            SPOT,
            "--max-size",
            &spot.desired.to_string(),
        ])
        .await;
    // Spot is healthy again: the monitor starts giving the first fallback back, and the
    // agents' notices arrive at the same moment.
    world.proxy.clear();
    recommend_rebalance(&imds[1..]);
    eventually(
        "six fallbacks made and every one given back",
        Duration::from_secs(240),
        || async {
            let ledger = world.ledger().await;
            entries_of(&ledger, EntryKind::Fallback) == 6 && ledger.open().count() == 0
        },
    )
    .await;
    let ledger = world.ledger().await;
    assert_eq!(
        ledger.get(&first.entry).map(|e| e.state),
        Some(EntryState::Released)
    );
    assert_eq!(
        world.group(ON_DEMAND).await.desired,
        OD_START,
        "on-demand back where it started: {ledger:#?}"
    );
    assert_eq!(world.group(SPOT).await.desired, SPOT_START);
    for daemon in &mut daemons {
        daemon.terminate();
    }
    for daemon in &mut daemons {
        assert!(daemon.wait_exit(Duration::from_secs(30)).await.success());
    }
}
