//! Branch tests of both flows: mockall for exact call order, in-memory fakes (with call logs)
//! for the branches that need a cloud that behaves.

use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use futures::future::join_all;
use mockall::predicate::eq;
use mockall::Sequence;

use super::fakes::*;
use super::*;
use crate::events::Recorder;
use crate::lock::LocalScaleLock;
use crate::model::{
    Activity, CapacityType, ClusterSnapshot, HealthStatus, Instance, LifecycleState,
};
use crate::ports::{MockCloud, MockCluster, PodOutcome, PodReport};

type FakeEngine<'a> = Engine<
    &'a MemoryCloud,
    &'a MemoryCluster,
    &'a AutoClock,
    &'a MemoryLedgerStore,
    LocalScaleLock,
>;

struct World {
    cloud: MemoryCloud,
    cluster: MemoryCluster,
    clock: AutoClock,
    store: MemoryLedgerStore,
    events: Arc<Recorder>,
}

impl World {
    fn new(spot: u32, od: u32) -> Self {
        let cloud = MemoryCloud::new(&[("web-spot", spot, 20), ("web-od", od, 10)]);
        let cluster = MemoryCluster::default();
        cluster.sync_nodes(&cloud);
        Self {
            cloud,
            cluster,
            clock: AutoClock::default(),
            store: MemoryLedgerStore::default(),
            events: Arc::new(Recorder::default()),
        }
    }

    fn engine(&self) -> FakeEngine<'_> {
        self.engine_with(test_config())
    }

    fn engine_with(&self, config: Config) -> FakeEngine<'_> {
        Engine::new(
            config,
            &self.cloud,
            &self.cluster,
            &self.clock,
            &self.store,
            LocalScaleLock::default(),
        )
        .with_observer(self.events.clone())
    }

    fn notice(&self, instance: &str) -> Notice {
        Notice {
            instance_id: instance.into(),
            kind: NoticeKind::Rebalance,
            notice_time: self.clock.now(),
        }
    }

    fn interruption(&self, instance: &str, in_secs: u64) -> Notice {
        Notice {
            instance_id: instance.into(),
            kind: NoticeKind::Interruption {
                action: "terminate".into(),
                deadline: self.clock.now() + Duration::from_secs(in_secs),
            },
            notice_time: self.clock.now(),
        }
    }

    fn mutations(&self) -> Vec<String> {
        self.cloud
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("set_desired") || c.starts_with("terminate"))
            .collect()
    }

    fn event_texts(&self) -> Vec<String> {
        self.events
            .events()
            .iter()
            .map(|(_, e)| e.to_string())
            .collect()
    }

    /// Turns Capacity Rebalancing on for the spot group.
    fn enable_capacity_rebalancing(&self) {
        let mut st = self.cloud.st();
        st.groups.get_mut("web-spot").unwrap().capacity_rebalance = true;
    }

    /// Lets the kubelets register nodes for new instances and pass time.
    fn settle(&self, d: Duration) {
        self.clock.advance(d);
        self.cloud.set_now(self.clock.now());
        self.cluster.sync_nodes(&self.cloud);
    }
}

// ----- phase 1 with mockall: exact calls in exact order ---------------------------------------

fn group(name: &str, desired: u32, ids: &[&str]) -> Group {
    Group {
        name: name.into(),
        min: 0,
        max: 10,
        desired,
        instances: ids
            .iter()
            .map(|id| Instance {
                id: id.to_string(),
                lifecycle: LifecycleState::InService,
                health: HealthStatus::Healthy,
            })
            .collect(),
        capacity_rebalance: false,
    }
}

fn snapshot(ids: &[&str]) -> ClusterView {
    ClusterView::new(ClusterSnapshot {
        nodes: ids
            .iter()
            .map(|id| node_for(id, CapacityType::Spot))
            .collect(),
        ..Default::default()
    })
}

#[test]
fn spot_replacement_calls_in_order() {
    let mut cloud = MockCloud::new();
    let mut cluster = MockCluster::new();
    let mut seq = Sequence::new();
    let names = vec!["web-spot".to_string(), "web-od".to_string()];
    cloud
        .expect_describe_groups()
        .with(eq(names))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| {
            Ok(vec![
                group("web-spot", 2, &["i-a", "i-risk"]),
                group("web-od", 0, &[]),
            ])
        });
    cluster
        .expect_snapshot()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|| Ok(Arc::new(snapshot(&["i-a", "i-risk"]))));
    cluster
        .expect_taint()
        .withf(|node, taint| node == "node-i-risk" && taint.key == "spotguard.dev/draining")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    cloud
        .expect_describe_groups()
        .with(eq(vec!["web-spot".to_string()]))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![group("web-spot", 2, &["i-a", "i-risk"])]));
    cloud
        .expect_set_desired_capacity()
        .with(eq("web-spot"), eq(3))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    cloud
        .expect_describe_groups()
        .with(eq(vec!["web-spot".to_string()]))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![group("web-spot", 3, &["i-a", "i-risk", "i-new"])]));
    cluster
        .expect_snapshot()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|| Ok(Arc::new(snapshot(&["i-a", "i-risk", "i-new"]))));
    cluster
        .expect_annotate()
        .withf(|node, key, value| {
            node == "node-i-new"
                && key == "cluster-autoscaler.kubernetes.io/scale-down-disabled"
                && value.as_deref() == Some("true")
        })
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| Ok(()));
    cluster
        .expect_drain()
        .withf(|node, _| node == "node-i-risk")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|node, _| {
            Ok(DrainReport {
                node: node.into(),
                pods: vec![PodReport {
                    pod: "default/web-1".into(),
                    outcome: PodOutcome::Evicted,
                }],
            })
        });
    cloud
        .expect_describe_groups()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![group("web-spot", 3, &["i-a", "i-risk", "i-new"])]));
    cloud
        .expect_terminate_instance()
        .with(eq("i-risk"), eq(true))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    cluster
        .expect_annotate()
        .withf(|node, _, value| node == "node-i-new" && value.is_none())
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| Ok(()));
    // The wait also reads activities only when no instance showed up: not here.
    cloud.expect_scaling_activities().never();

    let clock = AutoClock::default();
    let store = MemoryLedgerStore::default();
    let engine = Engine::new(
        test_config(),
        cloud,
        cluster,
        &clock,
        &store,
        LocalScaleLock::default(),
    );
    let w = World::new(0, 0);
    let out = block_on(engine.handle_rebalance(&w.notice("i-risk"))).unwrap();
    match out {
        RebalanceOutcome::Handled {
            replacement,
            paid_back,
            ..
        } => {
            assert_eq!(
                replacement,
                Replacement::Spot {
                    instance: "i-new".into()
                }
            );
            assert!(paid_back);
        }
        other => panic!("{other:?}"),
    }
    let ledger = store.ledger();
    assert_eq!(ledger.entries.len(), 1);
    assert_eq!(ledger.entries[0].kind, EntryKind::Prescale);
    assert_eq!(ledger.entries[0].state, EntryState::Released);
}

#[test]
fn unknown_instance_is_an_error_and_mutates_nothing() {
    let mut cloud = MockCloud::new();
    cloud.expect_describe_groups().times(1).returning(|_| {
        Ok(vec![
            group("web-spot", 1, &["i-a"]),
            group("web-od", 0, &[]),
        ])
    });
    cloud.expect_set_desired_capacity().never();
    cloud.expect_terminate_instance().never();
    let mut cluster = MockCluster::new();
    cluster.expect_taint().never();
    cluster.expect_drain().never();
    let clock = AutoClock::default();
    let store = MemoryLedgerStore::default();
    let engine = Engine::new(
        test_config(),
        cloud,
        cluster,
        &clock,
        &store,
        LocalScaleLock::default(),
    );
    let w = World::new(0, 0);
    let e = block_on(engine.handle_rebalance(&w.notice("i-stranger"))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "instance i-stranger is not in any configured spot group (web-spot)"
    );
    assert!(store.ledger().entries.is_empty());
}

#[test]
fn instance_without_node_is_an_error_and_mutates_nothing() {
    let mut cloud = MockCloud::new();
    cloud.expect_describe_groups().times(1).returning(|_| {
        Ok(vec![
            group("web-spot", 1, &["i-a"]),
            group("web-od", 0, &[]),
        ])
    });
    cloud.expect_set_desired_capacity().never();
    let mut cluster = MockCluster::new();
    cluster.expect_snapshot().returning(|| Ok(Arc::default()));
    cluster.expect_taint().never();
    let clock = AutoClock::default();
    let store = MemoryLedgerStore::default();
    let engine = Engine::new(
        test_config(),
        cloud,
        cluster,
        &clock,
        &store,
        LocalScaleLock::default(),
    );
    let w = World::new(0, 0);
    let e = block_on(engine.handle_rebalance(&w.notice("i-a"))).unwrap_err();
    assert_eq!(
        e,
        Error::NoNode {
            instance: "i-a".into()
        }
    );
}

#[test]
fn monitor_with_empty_ledger_makes_no_calls() {
    let mut cloud = MockCloud::new();
    cloud.expect_describe_groups().never();
    cloud.expect_scaling_activities().never();
    let mut cluster = MockCluster::new();
    cluster.expect_snapshot().never();
    let clock = AutoClock::default();
    let store = MemoryLedgerStore::default();
    let engine = Engine::new(
        test_config(),
        cloud,
        cluster,
        &clock,
        &store,
        LocalScaleLock::default(),
    );
    assert_eq!(
        block_on(engine.monitor_tick()).unwrap(),
        TickReport::default()
    );
}

// ----- phase 1 branches over the fakes ------------------------------------------------------

#[test]
fn spot_failure_falls_back_to_on_demand_and_records_it() {
    let w = World::new(2, 0);
    w.cloud.st().spot_outage = true;
    w.cluster.add_pod("web-1", "node-i-web-spot-1", 500);
    let out = block_on(w.engine().handle_rebalance(&w.notice("i-web-spot-1"))).unwrap();
    let RebalanceOutcome::Handled {
        replacement,
        drain,
        paid_back,
        ..
    } = out
    else {
        panic!()
    };
    let Replacement::OnDemand { instance, entry } = replacement else {
        panic!("{replacement:?}")
    };
    assert!(drain.unwrap().is_complete());
    assert!(paid_back);
    assert_eq!(
        w.mutations(),
        vec![
            "set_desired web-spot 3".to_string(),
            "set_desired web-od 1".into(),
            "terminate i-web-spot-1 decrement=true".into(),
        ]
    );
    let ledger = w.store.ledger();
    let fb = ledger.get(&entry).unwrap();
    assert_eq!(fb.state, EntryState::Active);
    assert_eq!(fb.instance.as_deref(), Some(instance.as_str()));
    assert_eq!(fb.at_risk_instance, "i-web-spot-1");
    // Spot keeps trying for the slot it was raised by; the at-risk instance is gone.
    let spot = w.cloud.group("web-spot");
    assert_eq!((spot.desired, spot.instances.len()), (2, 1));
    assert!(w
        .event_texts()
        .iter()
        .any(|e| e.contains("scale-up of web-spot failed: launch failed: We currently do not have sufficient spot capacity")));
}

#[test]
fn spot_at_max_falls_back_without_raising_spot() {
    let w = World::new(2, 0);
    w.cloud.st().groups.get_mut("web-spot").unwrap().max = 2;
    let out = block_on(w.engine().handle_rebalance(&w.notice("i-web-spot-0"))).unwrap();
    assert!(matches!(
        out,
        RebalanceOutcome::Handled {
            replacement: Replacement::OnDemand { .. },
            paid_back: false,
            ..
        }
    ));
    // No pre-scale to pay back: the drained instance goes back to its group, which replaces it
    // (no node is left tainted and empty waiting for EC2).
    assert_eq!(
        w.mutations(),
        vec![
            "set_desired web-od 1".to_string(),
            "terminate i-web-spot-0 decrement=false".into()
        ]
    );
    assert_eq!(w.cloud.group("web-spot").desired, 2);
}

#[test]
fn spot_timeout_falls_back() {
    let w = World::new(1, 0);
    w.cloud.st().spot_silent = true;
    let start = w.clock.now();
    let out = block_on(w.engine().handle_rebalance(&w.notice("i-web-spot-0"))).unwrap();
    assert!(matches!(
        out,
        RebalanceOutcome::Handled {
            replacement: Replacement::OnDemand { .. },
            ..
        }
    ));
    let waited = w.clock.now().duration_since(start).unwrap();
    assert!(waited >= Duration::from_secs(300), "{waited:?}");
    assert!(w
        .event_texts()
        .iter()
        .any(|e| e.contains("no instance InService after 5m")));
}

#[test]
fn both_failing_without_interruption_keeps_the_node_and_gives_back() {
    let w = World::new(1, 0);
    w.cloud.st().spot_outage = true;
    w.cloud.st().groups.get_mut("web-od").unwrap().max = 0;
    let out = block_on(w.engine().handle_rebalance(&w.notice("i-web-spot-0"))).unwrap();
    let RebalanceOutcome::Handled {
        replacement, drain, ..
    } = out
    else {
        panic!()
    };
    assert!(matches!(replacement, Replacement::None { .. }));
    assert!(drain.is_none());
    // The unfilled spot slot is given back; the taint is removed; nothing drained.
    assert_eq!(
        w.mutations(),
        vec![
            "set_desired web-spot 2".to_string(),
            "set_desired web-spot 1".into()
        ]
    );
    assert!(w.cluster.node("node-i-web-spot-0").taints.is_empty());
    assert!(!w.cluster.calls().iter().any(|c| c.starts_with("drain")));
    assert!(w.store.ledger().open().next().is_none());
}

#[test]
fn both_failing_with_interruption_still_drains() {
    let w = World::new(1, 0);
    w.cloud.st().spot_outage = true;
    w.cloud.st().groups.get_mut("web-od").unwrap().max = 0;
    w.cluster.add_pod("web-1", "node-i-web-spot-0", 100);
    let out = block_on(
        w.engine()
            .handle_rebalance(&w.interruption("i-web-spot-0", 120)),
    )
    .unwrap();
    let RebalanceOutcome::Handled { drain, .. } = out else {
        panic!()
    };
    assert!(drain.is_some());
    assert!(w
        .cluster
        .calls()
        .contains(&"drain node-i-web-spot-0".to_string()));
}

#[test]
fn interruption_caps_the_wait_so_the_drain_fits() {
    let w = World::new(1, 0);
    w.cloud.st().spot_silent = true;
    let start = w.clock.now();
    block_on(
        w.engine()
            .handle_rebalance(&w.interruption("i-web-spot-0", 120)),
    )
    .unwrap();
    let drained_at = w
        .events
        .events()
        .into_iter()
        .find(|(_, e)| matches!(e, Event::Drained { .. }))
        .map(|(t, _)| t)
        .unwrap();
    // 120 s notice minus the 90 s drain window: the drain starts by 30 s.
    assert!(drained_at.duration_since(start).unwrap() <= Duration::from_secs(30));
}

#[test]
fn taint_comes_before_any_scaling() {
    let w = World::new(1, 0);
    block_on(w.engine().handle_rebalance(&w.notice("i-web-spot-0"))).unwrap();
    let texts = w.event_texts();
    let tainted = texts.iter().position(|e| e.starts_with("tainted")).unwrap();
    let scaled = texts.iter().position(|e| e.starts_with("scaled")).unwrap();
    assert!(tainted < scaled, "{texts:?}");
}

#[test]
fn capacity_rebalance_refused_or_drain_only() {
    let w = World::new(1, 0);
    w.enable_capacity_rebalancing();
    let e = block_on(w.engine().handle_rebalance(&w.notice("i-web-spot-0"))).unwrap_err();
    assert!(e
        .to_string()
        .contains("web-spot has Capacity Rebalancing enabled"));
    assert!(w.mutations().is_empty());
    assert!(w.cluster.calls().is_empty());

    let mut config = test_config();
    config.capacity_rebalance = crate::config::CapacityRebalancePolicy::DrainOnly;
    let out = block_on(
        w.engine_with(config)
            .handle_rebalance(&w.notice("i-web-spot-0")),
    )
    .unwrap();
    assert!(matches!(
        out,
        RebalanceOutcome::Handled {
            replacement: Replacement::NotAttempted,
            drain: Some(_),
            ..
        }
    ));
    assert!(w.mutations().is_empty());
}

#[test]
fn concurrent_notices_for_one_instance_coalesce() {
    let w = World::new(2, 0);
    let engine = w.engine();
    let n = w.notice("i-web-spot-0");
    let outs = block_on(join_all((0..3).map(|_| engine.handle_rebalance(&n))));
    let coalesced = outs
        .iter()
        .filter(|o| matches!(o, Ok(RebalanceOutcome::Coalesced)))
        .count();
    assert_eq!(coalesced, 2);
    assert_eq!(
        w.cloud.group("web-spot").desired,
        2,
        "raised once, paid back once"
    );
    assert_eq!(
        w.mutations()
            .iter()
            .filter(|c| c.starts_with("set_desired"))
            .count(),
        1
    );
}

/// Invariant 1: N concurrent notices raise the spot group by exactly N.
fn raise_concurrently<L: ScaleLock>(lock: L) -> u32 {
    let mut w = World::new(6, 0);
    w.cloud.interleave = true;
    let mut config = test_config();
    config.payback_prescale = false; // keep the raises visible
    let engine = Engine::new(config, &w.cloud, &w.cluster, &w.clock, &w.store, lock);
    let notices: Vec<Notice> = (0..6)
        .map(|i| w.notice(&format!("i-web-spot-{i}")))
        .collect();
    let outs = block_on(join_all(notices.iter().map(|n| engine.handle_rebalance(n))));
    assert!(outs.iter().all(|o| o.is_ok()), "{outs:?}");
    w.cloud.group("web-spot").desired - 6
}

#[test]
fn concurrent_notices_raise_by_exactly_n() {
    assert_eq!(raise_concurrently(LocalScaleLock::default()), 6);
}

#[test]
fn without_the_lock_the_race_loses_updates() {
    // Negative control: proves the test above would catch a missing lock.
    assert!(raise_concurrently(NoLock) < 6);
}

#[test]
fn incomplete_drain_keeps_the_prescale_until_the_monitor_resumes() {
    let w = World::new(2, 0);
    w.cluster.add_pod("web-1", "node-i-web-spot-0", 100);
    *w.cluster.drain_blocked.lock().unwrap() = Some("default/web".into());
    let out = block_on(w.engine().handle_rebalance(&w.notice("i-web-spot-0"))).unwrap();
    assert!(matches!(
        out,
        RebalanceOutcome::Handled {
            paid_back: false,
            ..
        }
    ));
    assert_eq!(w.store.ledger().open().count(), 1);
    // Later the PDB allows it; the monitor resumes the pre-scale once phase 1 is surely over.
    *w.cluster.drain_blocked.lock().unwrap() = None;
    let engine = w.engine();
    block_on(engine.monitor_tick()).unwrap();
    assert_eq!(
        w.store.ledger().open().count(),
        1,
        "too early: phase 1 may still run"
    );
    w.settle(Duration::from_secs(3600));
    block_on(engine.monitor_tick()).unwrap();
    assert_eq!(w.store.ledger().open().count(), 0);
    assert_eq!(w.cloud.group("web-spot").desired, 2);
    assert!(w
        .mutations()
        .contains(&"terminate i-web-spot-0 decrement=true".to_string()));
}

// ----- phase 2 -----------------------------------------------------------------------------

/// A world after a fallback: spot outage over, on-demand node holding one pod.
fn after_fallback() -> (World, String, String) {
    let w = World::new(2, 0);
    w.cloud.st().spot_outage = true;
    let out = block_on(w.engine().handle_rebalance(&w.notice("i-web-spot-1"))).unwrap();
    let RebalanceOutcome::Handled {
        replacement: Replacement::OnDemand { instance, entry },
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    w.cluster.sync_nodes(&w.cloud);
    w.cluster
        .add_pod("web-od-1", &format!("node-{instance}"), 500);
    w.cloud.clear_calls();
    (w, instance, entry)
}

fn recover_spot(w: &World) {
    w.cloud.st().spot_outage = false;
    w.cloud.reconcile_all();
    w.cluster.sync_nodes(&w.cloud);
}

#[test]
fn unhealthy_spot_skips_and_changes_nothing() {
    let (w, _, entry) = after_fallback();
    w.settle(Duration::from_secs(30));
    let report = block_on(w.engine().monitor_tick()).unwrap();
    assert_eq!(report.waiting.len(), 1);
    let (id, verdict) = &report.waiting[0];
    assert_eq!(id, &entry);
    assert!(verdict
        .reasons()
        .iter()
        .any(|r| matches!(r, Reason::CapacityMismatch { .. })));
    assert!(w.mutations().is_empty());
    assert_eq!(
        w.cloud.calls(),
        vec!["describe web-spot,web-od".to_string()],
        "activities are not read while InService != desired"
    );
}

#[test]
fn healthy_but_not_yet_stable_waits() {
    let (w, _, _) = after_fallback();
    w.settle(Duration::from_secs(700)); // past the error window
    recover_spot(&w);
    let engine = w.engine();
    let report = block_on(engine.monitor_tick()).unwrap();
    let reasons = report.waiting[0].1.reasons().to_vec();
    assert!(
        reasons
            .iter()
            .any(|r| matches!(r, Reason::HealthyTooShort { .. })),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| matches!(r, Reason::RecentScalingActivity { .. })),
        "{reasons:?}"
    );
    assert!(w.mutations().is_empty());
}

#[test]
fn stable_and_safe_scales_down_exactly_once() {
    let (w, instance, entry) = after_fallback();
    w.settle(Duration::from_secs(700));
    recover_spot(&w);
    let engine = w.engine();
    let mut released = vec![];
    for _ in 0..10 {
        w.settle(Duration::from_secs(30));
        released.extend(block_on(engine.monitor_tick()).unwrap().released);
    }
    assert_eq!(released, vec![entry.clone()]);
    assert_eq!(
        w.mutations(),
        vec![format!("terminate {instance} decrement=true")]
    );
    assert_eq!(w.cloud.group("web-od").desired, 0);
    let node = format!("node-{instance}");
    let calls = w.cluster.calls();
    let pos = |c: &str| calls.iter().position(|x| x == c).unwrap();
    assert!(pos(&format!("taint {node}")) < pos(&format!("unschedulable {node} true")));
    assert!(pos(&format!("unschedulable {node} true")) < pos(&format!("drain {node}")));
    assert_eq!(
        w.store.ledger().get(&entry).unwrap().state,
        EntryState::Released
    );
    let texts = w.event_texts();
    assert!(texts
        .iter()
        .any(|e| e.contains("Stability wait: group web-spot healthy for")));
    assert!(texts.iter().any(|e| e.contains("Safety go")));
}

#[test]
fn unsafe_scale_down_waits() {
    let (w, instance, _) = after_fallback();
    // A pod that fits nowhere else: only the on-demand node has room for 5000m.
    w.cluster.edit().nodes.iter_mut().for_each(|n| {
        if n.instance_id.as_deref() == Some(instance.as_str()) {
            n.allocatable.cpu_millis = 8000;
        }
    });
    w.cluster.add_pod("huge", &format!("node-{instance}"), 5000);
    w.settle(Duration::from_secs(700));
    recover_spot(&w);
    let engine = w.engine();
    let mut last = TickReport::default();
    for _ in 0..10 {
        w.settle(Duration::from_secs(30));
        last = block_on(engine.monitor_tick()).unwrap();
    }
    let reasons = last.waiting[0].1.reasons().to_vec();
    assert!(
        matches!(&reasons[..], [Reason::PodDoesNotFit { pod, .. }] if pod == "default/huge"),
        "{reasons:?}"
    );
    assert!(w.mutations().is_empty());
}

#[test]
fn failed_drain_is_retried_next_tick() {
    let (w, instance, entry) = after_fallback();
    w.settle(Duration::from_secs(700));
    recover_spot(&w);
    let engine = w.engine();
    *w.cluster.drain_blocked.lock().unwrap() = Some("default/web".into());
    let mut saw_draining = false;
    for _ in 0..8 {
        w.settle(Duration::from_secs(30));
        let r = block_on(engine.monitor_tick()).unwrap();
        saw_draining |= r.draining.contains(&entry);
    }
    assert!(saw_draining);
    assert_eq!(
        w.store.ledger().get(&entry).unwrap().state,
        EntryState::Draining
    );
    assert!(
        w.mutations().is_empty(),
        "never terminated while pods remain"
    );
    *w.cluster.drain_blocked.lock().unwrap() = None;
    w.settle(Duration::from_secs(30));
    let r = block_on(engine.monitor_tick()).unwrap();
    assert_eq!(r.released, vec![entry]);
    assert_eq!(
        w.mutations(),
        vec![format!("terminate {instance} decrement=true")]
    );
}

#[test]
fn drain_error_is_reported_and_retried() {
    let (w, _, entry) = after_fallback();
    w.settle(Duration::from_secs(700));
    recover_spot(&w);
    let engine = w.engine();
    *w.cluster.fail_next_drain.lock().unwrap() = Some(ClusterError::Api {
        operation: "evict".into(),
        target: "pod".into(),
        message: "boom".into(),
        source: None,
    });
    let mut errors = vec![];
    let mut released = vec![];
    for _ in 0..8 {
        w.settle(Duration::from_secs(30));
        let r = block_on(engine.monitor_tick()).unwrap();
        errors.extend(r.errors);
        released.extend(r.released);
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("boom"));
    assert_eq!(released, vec![entry]);
}

#[test]
fn spot_relapse_during_scale_down_abandons_and_untaints() {
    let (w, instance, entry) = after_fallback();
    w.settle(Duration::from_secs(700));
    recover_spot(&w);
    let engine = w.engine();
    *w.cluster.drain_blocked.lock().unwrap() = Some("default/web".into());
    for _ in 0..8 {
        w.settle(Duration::from_secs(30));
        block_on(engine.monitor_tick()).unwrap();
    }
    assert_eq!(
        w.store.ledger().get(&entry).unwrap().state,
        EntryState::Draining
    );
    // A spot instance disappears: unhealthy again.
    w.cloud.st().spot_outage = true;
    {
        let mut st = w.cloud.st();
        let g = st.groups.get_mut("web-spot").unwrap();
        g.instances.pop();
    }
    w.settle(Duration::from_secs(30));
    block_on(engine.monitor_tick()).unwrap();
    let node = w.cluster.node(&format!("node-{instance}"));
    assert!(node.taints.is_empty());
    assert!(!node.unschedulable);
    assert_eq!(
        w.store.ledger().get(&entry).unwrap().state,
        EntryState::Active
    );
    assert!(w.mutations().is_empty());
}

/// Leadership moved while the former leader drained a fallback node: the new leader judged
/// spot not yet stable and abandoned the scale-down (the node takes pods again). The former
/// leader's removal, already past its drain, must not terminate the reopened node.
#[test]
fn a_scale_down_abandoned_by_another_monitor_does_not_terminate_the_node() {
    let (mut w, instance, entry) = after_fallback();
    w.settle(Duration::from_secs(700));
    recover_spot(&w);
    w.cloud.interleave = true;
    let node = format!("node-{instance}");
    let former = w.engine();
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    // The former leader ticks until spot is stable, drains, and reaches the removal (its
    // fresh describe of both groups), where it is held.
    let reached = || {
        w.cloud
            .calls()
            .contains(&"describe web-od,web-spot".to_string())
    };
    let mut held = None;
    for _ in 0..10 {
        w.settle(Duration::from_secs(30));
        let mut tick = Box::pin(former.monitor_tick());
        loop {
            match std::future::Future::poll(tick.as_mut(), &mut cx) {
                std::task::Poll::Ready(report) => {
                    report.unwrap();
                    break;
                }
                std::task::Poll::Pending if reached() => {
                    held = Some(tick);
                    break;
                }
                std::task::Poll::Pending => {}
            }
        }
        if held.is_some() {
            break;
        }
    }
    let tick = held.expect("the former leader never reached its removal");
    assert!(w.cluster.calls().contains(&format!("drain {node}")));

    // The new leader sees a scaling activity just now: not stable, abandon.
    {
        let mut st = w.cloud.st();
        let now = st.now;
        st.activities.push(Activity {
            id: "act-late".into(),
            group: "web-spot".into(),
            status: ActivityStatus::Successful,
            start: now,
            end: Some(now),
            description: "Launching a new EC2 instance".into(),
            status_message: None,
        });
    }
    block_on(w.engine().monitor_tick()).unwrap();
    assert!(
        !w.cluster.node(&node).unschedulable,
        "the new leader reopens the node"
    );
    // The scheduler puts a pod on it.
    w.cluster.add_pod("late", &node, 100);

    let report = block_on(tick).unwrap();
    assert!(report.released.is_empty(), "{report:?}");
    assert!(w.mutations().is_empty(), "{:?}", w.mutations());
    w.cluster.sync_nodes(&w.cloud);
    assert_eq!(*w.cluster.lost_pods.lock().unwrap(), 0);
    let e = w.store.ledger().get(&entry).unwrap().clone();
    assert_eq!((e.state, e.payback), (EntryState::Active, None));
    assert!(w
        .event_texts()
        .iter()
        .any(|t| t.contains("superseded by another monitor pass")));
}

/// An embedder ticking one engine from two tasks at once: the passes never work on the same
/// entry together (found by `capacity_changes_never_overwrite_each_other`: one pass abandoned
/// the scale-down the other was finishing, and the reopened node was terminated with a pod).
#[test]
fn overlapping_ticks_of_one_engine_work_on_an_entry_one_at_a_time() {
    let (mut w, instance, entry) = after_fallback();
    w.settle(Duration::from_secs(700));
    recover_spot(&w);
    w.cloud.interleave = true;
    w.cluster.interleave = true;
    let engine = w.engine();
    for _ in 0..6 {
        w.settle(Duration::from_secs(30));
        let reports = block_on(join_all([engine.monitor_tick(), engine.monitor_tick()]));
        for r in reports {
            r.unwrap();
        }
    }
    let node = format!("node-{instance}");
    let drains = w
        .cluster
        .calls()
        .iter()
        .filter(|c| **c == format!("drain {node}"))
        .count();
    assert_eq!(drains, 1, "{:?}", w.cluster.calls());
    assert_eq!(
        w.mutations(),
        vec![format!("terminate {instance} decrement=true")]
    );
    assert_eq!(
        w.store.ledger().get(&entry).unwrap().state,
        EntryState::Released
    );
}

#[test]
fn pending_entry_is_settled_on_recovery() {
    let w = World::new(1, 1);
    // A crash after the intent but before the call: the group was never raised.
    let now = w.clock.now();
    let never = {
        let mut l = Ledger::default();
        let id = l.record_intent(
            Intent {
                kind: EntryKind::Fallback,
                group: "web-od".into(),
                spot_group: "web-spot".into(),
                at_risk_instance: "i-web-spot-0".into(),
                desired_before: 1,
                instances_before: vec!["i-web-od-0".into()],
            },
            now,
        );
        // A crash after the call: raised to 2, new instance present.
        let raised = l.record_intent(
            Intent {
                kind: EntryKind::Fallback,
                group: "web-od".into(),
                spot_group: "web-spot".into(),
                at_risk_instance: "i-web-spot-0".into(),
                desired_before: 0,
                instances_before: vec![],
            },
            now,
        );
        w.store.replace(l);
        (id, raised)
    };
    let engine = w.engine();
    assert_eq!(
        block_on(engine.recover()).unwrap(),
        2,
        "too young to settle"
    );
    w.settle(Duration::from_secs(301));
    assert_eq!(block_on(engine.recover()).unwrap(), 1);
    let l = w.store.ledger();
    assert_eq!(l.get(&never.0).unwrap().state, EntryState::Released);
    assert_eq!(l.get(&never.1).unwrap().state, EntryState::Active);
    // The monitor adopts the unclaimed instance for the raised entry, once phase 1 (maybe in
    // another process) can no longer be waiting for it.
    block_on(engine.monitor_tick()).unwrap();
    assert_eq!(
        w.store.ledger().get(&never.1).unwrap().instance,
        None,
        "too early"
    );
    w.settle(Duration::from_secs(311));
    block_on(engine.monitor_tick()).unwrap();
    assert_eq!(
        w.store.ledger().get(&never.1).unwrap().instance.as_deref(),
        Some("i-web-od-0")
    );
}

#[test]
fn fallback_without_instance_is_settled_when_stale() {
    // The fake's groups named "*spot*" follow the spot outage switches; an on-demand group so
    // named launches nothing while `spot_silent` holds, like a group whose launches hang.
    let mut config = test_config();
    let cloud = MemoryCloud::new(&[("web-spot", 1, 10), ("web-spot-od", 0, 10)]);
    cloud.st().spot_silent = true;
    let cluster = MemoryCluster::default();
    cluster.sync_nodes(&cloud);
    let clock = AutoClock::default();
    let store = MemoryLedgerStore::default();
    config.groups[0].on_demand = "web-spot-od".into();
    let engine = Engine::new(
        config,
        &cloud,
        &cluster,
        &clock,
        &store,
        LocalScaleLock::default(),
    );
    let n = Notice {
        instance_id: "i-web-spot-0".into(),
        kind: NoticeKind::Rebalance,
        notice_time: clock.now(),
    };
    block_on(engine.handle_rebalance(&n)).unwrap();
    let open: Vec<Entry> = store.ledger().open().cloned().collect();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].kind, EntryKind::Fallback);
    assert!(open[0].instance.is_none());
    assert_eq!(cloud.group("web-spot-od").desired, 1);
    clock.advance(Duration::from_secs(3601));
    block_on(engine.monitor_tick()).unwrap();
    assert_eq!(store.ledger().open().count(), 0);
    assert_eq!(
        cloud.group("web-spot-od").desired,
        0,
        "unfilled slot given back"
    );
    assert_eq!(cloud.group("web-spot").desired, 1);
}

#[test]
fn ledger_conflicts_are_retried() {
    let w = World::new(2, 0);
    w.cloud.st().spot_outage = true;
    w.store.inject_conflicts(3);
    block_on(w.engine().handle_rebalance(&w.notice("i-web-spot-1"))).unwrap();
    let l = w.store.ledger();
    assert_eq!(
        l.entries
            .iter()
            .filter(|e| e.kind == EntryKind::Fallback)
            .count(),
        1
    );
}

#[test]
fn cleanup_drops_old_released_entries() {
    let w = World::new(2, 0);
    block_on(w.engine().handle_rebalance(&w.notice("i-web-spot-0"))).unwrap();
    assert_eq!(w.store.ledger().entries.len(), 1);
    let engine = w.engine();
    assert_eq!(block_on(engine.cleanup()).unwrap(), 0);
    w.settle(Duration::from_secs(3601));
    assert_eq!(block_on(engine.cleanup()).unwrap(), 1);
    assert!(w.store.ledger().entries.is_empty());
    assert!(w
        .event_texts()
        .contains(&"dropped 1 released ledger entries".to_string()));
}

#[test]
fn a_waiting_agent_keeps_the_instance_the_monitor_adopted_for_it() {
    // Agent and controller are separate engines over one ledger.
    let w = World::new(1, 0);
    w.cloud.st().spot_outage = true;
    let agent = w.engine();
    let controller = w.engine();
    // The controller ticks while the agent waits: it must not take the instance away.
    let notice = w.notice("i-web-spot-0");
    let (out, _) = block_on(futures::future::join(
        agent.handle_rebalance(&notice),
        async {
            for _ in 0..4 {
                yield_now().await;
                let _ = controller.monitor_tick().await;
            }
        },
    ));
    let RebalanceOutcome::Handled {
        replacement, drain, ..
    } = out.unwrap()
    else {
        panic!()
    };
    assert!(
        matches!(replacement, Replacement::OnDemand { .. }),
        "{replacement:?}"
    );
    assert!(drain.is_some());
}

#[test]
fn a_prescale_whose_instance_ec2_reclaimed_first_is_given_back_as_surplus() {
    let w = World::new(2, 0);
    w.cluster.add_pod("web-1", "node-i-web-spot-0", 100);
    // The drain is held, so phase 1 cannot pay back before EC2 acts.
    *w.cluster.drain_blocked.lock().unwrap() = Some("default/web".into());
    let out = block_on(w.engine().handle_rebalance(&w.notice("i-web-spot-0"))).unwrap();
    assert!(matches!(
        out,
        RebalanceOutcome::Handled {
            paid_back: false,
            ..
        }
    ));
    *w.cluster.drain_blocked.lock().unwrap() = None;
    assert_eq!(w.cloud.group("web-spot").desired, 3);
    // EC2 reclaims the at-risk instance; the group replaces it at once: 3 instances, 3 desired.
    {
        let mut st = w.cloud.st();
        st.groups
            .get_mut("web-spot")
            .unwrap()
            .instances
            .retain(|i| i.id != "i-web-spot-0");
    }
    w.cloud.reconcile_all();
    w.settle(Duration::from_secs(1));
    assert_eq!(w.cloud.group("web-spot").instances.len(), 3);
    let lost_to_ec2 = *w.cluster.lost_pods.lock().unwrap();

    let engine = w.engine();
    let mut kinds = vec![];
    for _ in 0..60 {
        w.settle(Duration::from_secs(30));
        block_on(engine.monitor_tick()).unwrap();
        kinds.extend(w.store.ledger().entries.iter().map(|e| e.kind));
    }
    assert!(kinds.contains(&EntryKind::Surplus), "{kinds:?}");
    assert_eq!(
        w.store.ledger().open().count(),
        0,
        "{:#?}",
        w.store.ledger()
    );
    assert_eq!(
        w.cloud.group("web-spot").desired,
        2,
        "back to the starting capacity"
    );
    let terminations: Vec<String> = w
        .mutations()
        .into_iter()
        .filter(|c| c.starts_with("terminate"))
        .collect();
    assert_eq!(terminations.len(), 1, "{terminations:?}");
    assert!(terminations[0].ends_with("decrement=true"));
    assert_eq!(
        *w.cluster.lost_pods.lock().unwrap(),
        lost_to_ec2,
        "the surplus node was drained before it went"
    );
}

// ----- an interruption always drains (invariant 7) --------------------------------------------

/// The next `times` group look-ups fail with a retryable API error.
fn fail_describes(w: &World, times: u32, message: &str) {
    let e = CloudError::Api {
        operation: "DescribeAutoScalingGroups".into(),
        target: "web-spot".into(),
        message: message.into(),
        retryable: true,
        source: None,
    };
    w.cloud.st().fail_times.insert("describe", (times, e));
}

fn drained(w: &World, node: &str) -> bool {
    w.cluster.calls().contains(&format!("drain {node}"))
}

fn skipped(w: &World) -> Vec<String> {
    w.events
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::ScalingSkipped { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

/// An interruption of `i-web-spot-0` (with a pod on its node) is handled by draining without
/// asking for capacity.
fn interrupt_and_drain_without_scaling(w: &World) {
    w.cluster.add_pod("web-1", "node-i-web-spot-0", 100);
    let out = block_on(
        w.engine()
            .handle_notice(&w.interruption("i-web-spot-0", 120)),
    )
    .unwrap();
    assert!(matches!(
        out,
        RebalanceOutcome::Handled {
            replacement: Replacement::Skipped { .. },
            drain: Some(_),
            ..
        }
    ));
    assert!(drained(w, "node-i-web-spot-0"));
}

#[test]
fn interruption_of_an_instance_in_no_configured_group_still_drains() {
    let w = World::new(1, 0);
    w.cluster
        .edit()
        .nodes
        .push(node_for("i-stray", CapacityType::Spot));
    w.cluster.add_pod("batch-0", "node-i-stray", 100);
    let out = block_on(w.engine().handle_notice(&w.interruption("i-stray", 120))).unwrap();
    let RebalanceOutcome::Handled {
        replacement, drain, ..
    } = out
    else {
        panic!("not handled: {out:?}")
    };
    assert!(matches!(replacement, Replacement::Skipped { .. }));
    assert!(drain.is_some_and(|d| d.is_complete()));
    assert!(w
        .cluster
        .node("node-i-stray")
        .taints
        .iter()
        .any(|t| t.key == "spotguard.dev/draining"));
    assert!(drained(&w, "node-i-stray"));
    assert!(w.mutations().is_empty(), "{:?}", w.mutations());
    assert!(
        skipped(&w)[0].contains("not in any configured spot group"),
        "{:?}",
        skipped(&w)
    );
}

#[test]
fn interruption_on_a_capacity_rebalancing_group_drains_under_the_refuse_policy() {
    let w = World::new(1, 0);
    w.enable_capacity_rebalancing();
    interrupt_and_drain_without_scaling(&w);
    assert!(w.mutations().is_empty(), "{:?}", w.mutations());
    assert!(skipped(&w)[0].contains("Capacity Rebalancing"));
}

#[test]
fn interruption_drains_when_auto_scaling_cannot_be_reached() {
    let w = World::new(1, 0);
    fail_describes(&w, u32::MAX, "connection refused");
    interrupt_and_drain_without_scaling(&w);
    assert!(skipped(&w)[0].contains("connection refused"));
}

#[test]
fn interruption_drain_is_not_held_up_by_a_slow_auto_scaling_api() {
    let w = World::new(1, 0);
    // Every describe takes far longer than the 30 s before the drain must start.
    w.cloud.stall_describes(5_000);
    w.cluster.add_pod("web-1", "node-i-web-spot-0", 100);
    let start = w.clock.now();
    block_on(
        w.engine()
            .handle_notice(&w.interruption("i-web-spot-0", 120)),
    )
    .unwrap();
    let events = w.events.events();
    let drained_at = events
        .iter()
        .position(|(_, e)| matches!(e, Event::Drained { .. }))
        .expect("drained");
    let (at, _) = &events[drained_at];
    // 120 s notice minus the 90 s drain window.
    assert!(at.duration_since(start).unwrap() <= Duration::from_secs(30));
    // The drain came before any scaling: the describe was still under way.
    assert!(!events[..drained_at]
        .iter()
        .any(|(_, e)| matches!(e, Event::ScaledUp { .. })));
}

// ----- a failed notice is retried -------------------------------------------------------------

#[test]
fn a_notice_meeting_a_burst_of_api_errors_succeeds_on_retry_with_one_raise() {
    let w = World::new(2, 0);
    w.cluster.add_pod("web-1", "node-i-web-spot-0", 100);
    // The first three attempts cannot even look the group up.
    fail_describes(&w, 3, "throttled");
    // Then the drain fails once, after the raise was made.
    *w.cluster.fail_next_drain.lock().unwrap() = Some(ClusterError::Api {
        operation: "evict".into(),
        target: "default/web-1".into(),
        message: "the server is currently unable to handle the request".into(),
        source: None,
    });
    let out = block_on(w.engine().handle_notice(&w.notice("i-web-spot-0"))).unwrap();
    assert!(matches!(
        out,
        RebalanceOutcome::Handled {
            replacement: Replacement::Spot { .. },
            paid_back: true,
            ..
        }
    ));
    let raises: Vec<_> = w
        .mutations()
        .into_iter()
        .filter(|m| m.starts_with("set_desired web-spot"))
        .collect();
    assert_eq!(raises, vec!["set_desired web-spot 3"], "one raise only");
    let retries = w
        .events
        .events()
        .iter()
        .filter(|(_, e)| matches!(e, Event::NoticeRetrying { .. }))
        .count();
    assert_eq!(retries, 4);
    let ledger = w.store.ledger();
    assert_eq!(ledger.entries.len(), 1, "{ledger:#?}");
    assert_eq!(ledger.entries[0].state, EntryState::Released);
    assert_eq!(w.cloud.group("web-spot").desired, 2);
}

#[test]
fn a_notice_is_given_up_after_the_retry_limit() {
    let w = World::new(1, 0);
    fail_describes(&w, u32::MAX, "throttled");
    let start = w.clock.now();
    let e = block_on(w.engine().handle_notice(&w.notice("i-web-spot-0"))).unwrap_err();
    assert!(e.is_transient());
    let events = w.events.events();
    let abandoned: Vec<_> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::NoticeAbandoned { attempts, .. } => Some(*attempts),
            _ => None,
        })
        .collect();
    assert_eq!(abandoned, vec![6]);
    // 5 s, 10 s, 20 s, 40 s, then the 60 s cap.
    assert_eq!(
        w.clock.now().duration_since(start).unwrap(),
        Duration::from_secs(5 + 10 + 20 + 40 + 60)
    );
    assert!(w.mutations().is_empty());
}

#[test]
fn a_permanent_error_is_not_retried() {
    let w = World::new(1, 0);
    let e = block_on(w.engine().handle_notice(&w.notice("i-nowhere"))).unwrap_err();
    assert!(matches!(e, Error::UnknownInstance { .. }));
    assert!(!w
        .events
        .events()
        .iter()
        .any(|(_, e)| matches!(e, Event::NoticeRetrying { .. })));
}

#[test]
fn a_retried_interruption_stops_before_its_deadline() {
    let w = World::new(1, 0);
    *w.cluster.fail_next_drain.lock().unwrap() = None;
    // The node cannot be found in any snapshot: nothing can be drained; retried, but never
    // past the interruption.
    w.cluster.fail_snapshots(u32::MAX);
    let start = w.clock.now();
    let _ = block_on(
        w.engine()
            .handle_notice(&w.interruption("i-web-spot-0", 30)),
    );
    assert!(w.clock.now().duration_since(start).unwrap() < Duration::from_secs(30));
    assert!(w
        .events
        .events()
        .iter()
        .any(|(_, e)| matches!(e, Event::NoticeAbandoned { .. })));
}

/// Records the monitor loop's steps with their times; overruns its third tick by 45 s and
/// asks the loop to stop after its 25th.
struct StepLog<'a> {
    clock: &'a AutoClock,
    steps: std::sync::Mutex<Vec<(&'static str, u64)>>,
    stop: std::sync::atomic::AtomicBool,
}

impl StepLog<'_> {
    fn note(&self, step: &'static str) -> usize {
        let at = self
            .clock
            .now()
            .duration_since(crate::memory::start_time())
            .unwrap()
            .as_secs();
        let mut steps = self.steps.lock().unwrap();
        steps.push((step, at));
        steps.iter().filter(|(s, _)| *s == step).count()
    }
}

#[async_trait::async_trait]
impl MonitorHooks for StepLog<'_> {
    async fn recovered(&self, result: &Result<usize, Error>) {
        assert_eq!(result, &Ok(0));
        self.note("recover");
    }

    async fn ticked(&self, result: &Result<TickReport, Error>) {
        assert!(result.is_ok(), "{result:?}");
        let n = self.note("tick");
        if n == 3 {
            self.clock.advance(Duration::from_secs(45));
        }
        if n == 25 {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    async fn cleaned(&self, result: &Result<usize, Error>) {
        assert_eq!(result, &Ok(0));
        self.note("cleanup");
    }
}

#[test]
fn the_monitor_loop_recovers_ticks_at_once_and_every_interval_cleans_up_between_and_stops_between_steps(
) {
    let w = World::new(2, 0);
    let engine = w.engine();
    let log = StepLog {
        clock: &w.clock,
        steps: Default::default(),
        stop: Default::default(),
    };
    let stop = futures::future::poll_fn(|_| {
        if log.stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    });
    block_on(engine.run_monitor(stop, &log));
    // Ticks every 30 s from the start; the third overran to 105 s, so the next ran at once and
    // the rest count from there; the cleanup came at 600 s, between two ticks; no step ran
    // after the stop.
    let mut expected = vec![("recover", 0), ("tick", 0), ("tick", 30), ("tick", 60)];
    for k in 0..22u64 {
        let at = 105 + 30 * k;
        if at > 600 && !expected.contains(&("cleanup", 600)) {
            expected.push(("cleanup", 600));
        }
        expected.push(("tick", at));
    }
    assert_eq!(*log.steps.lock().unwrap(), expected);
    assert_eq!(
        w.clock
            .now()
            .duration_since(crate::memory::start_time())
            .unwrap()
            .as_secs(),
        735
    );
}
