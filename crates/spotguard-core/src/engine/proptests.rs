//! Property tests: random sequences of notices (alone and concurrent), spot outages, API and
//! store failures, monitor ticks and restarts against the in-memory fakes. After every step
//! the invariants of DESIGN.md hold; at the end, with faults cleared and spot back, the system
//! converges to exactly the capacity it started with.

use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use futures::future::join_all;
use proptest::prelude::*;

use super::fakes::*;
use super::*;
use crate::events::Recorder;
use crate::lock::LocalScaleLock;

const SPOT_BASE: u32 = 4;
const SPOT_MIN: u32 = 2;
const OD_MAX: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Notice { idx: usize, interruption: bool },
    Concurrent { a: usize, b: usize },
    SpotOutage(bool),
    FailNext(&'static str),
    FailSave,
    Tick { secs: u64 },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..8usize, any::<bool>()).prop_map(|(idx, interruption)| Op::Notice { idx, interruption }),
        1 => (0..8usize, 0..8usize).prop_map(|(a, b)| Op::Concurrent { a, b }),
        2 => any::<bool>().prop_map(Op::SpotOutage),
        1 => prop_oneof![
            Just("describe"),
            Just("set_desired"),
            Just("terminate"),
            Just("activities")
        ]
        .prop_map(Op::FailNext),
        1 => Just(Op::FailSave),
        3 => (10..400u64).prop_map(|secs| Op::Tick { secs }),
        1 => Just(Op::Restart),
    ]
}

struct Sim {
    cloud: MemoryCloud,
    cluster: MemoryCluster,
    clock: AutoClock,
    store: MemoryLedgerStore,
    events: Arc<Recorder>,
}

type SimEngine<'a> = Engine<
    &'a MemoryCloud,
    &'a MemoryCluster,
    &'a AutoClock,
    &'a MemoryLedgerStore,
    &'a LocalScaleLock,
>;

impl Sim {
    fn new() -> Self {
        let cloud = MemoryCloud::new(&[("web-spot", SPOT_BASE, 20), ("web-od", 0, OD_MAX)]);
        cloud.st().groups.get_mut("web-spot").unwrap().min = SPOT_MIN;
        let cluster = MemoryCluster::default();
        cluster.sync_nodes(&cloud);
        for i in 0..SPOT_BASE {
            cluster.add_pod(&format!("web-{i}"), &format!("node-i-web-spot-{i}"), 300);
        }
        Self {
            cloud,
            cluster,
            clock: AutoClock::default(),
            store: MemoryLedgerStore::default(),
            events: Arc::new(Recorder::default()),
        }
    }

    fn engine<'a>(&'a self, lock: &'a LocalScaleLock) -> SimEngine<'a> {
        let mut config = test_config();
        config.timings.scale_up_timeout = Duration::from_secs(120);
        config.timings.stability = Duration::from_secs(120);
        config.drain.timeout = Duration::from_secs(60);
        Engine::new(
            config,
            &self.cloud,
            &self.cluster,
            &self.clock,
            &self.store,
            lock,
        )
        .with_observer(self.events.clone())
    }

    fn spot_instance(&self, idx: usize) -> Option<String> {
        let g = self.cloud.group("web-spot");
        (!g.instances.is_empty()).then(|| g.instances[idx % g.instances.len()].id.clone())
    }

    fn notice(&self, idx: usize, interruption: bool) -> Option<Notice> {
        let instance = self.spot_instance(idx)?;
        let kind = if interruption {
            NoticeKind::Interruption {
                action: "terminate".into(),
                deadline: self.clock.now() + Duration::from_secs(120),
            }
        } else {
            NoticeKind::Rebalance
        };
        Some(Notice {
            instance_id: instance,
            kind,
            notice_time: self.clock.now(),
        })
    }

    /// The world moves on: time passes, kubelets register and lose nodes.
    fn pass(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
        self.cloud.set_now(self.clock.now());
        self.cluster.sync_nodes(&self.cloud);
    }

    fn open(&self, kind: EntryKind) -> u32 {
        self.store
            .ledger()
            .open()
            .filter(|e| e.kind == kind)
            .count() as u32
    }

    fn spot_scale_ups_reported(&self) -> u32 {
        self.events
            .events()
            .iter()
            .filter(|(_, e)| matches!(e, Event::ScaledUp { group, .. } if group == "web-spot"))
            .count() as u32
    }

    /// Invariants that hold after every step, and every spot scale-up reported.
    fn check_step(&self) -> Result<(), TestCaseError> {
        self.check_capacity()?;
        let (spot_up, _) = self
            .cloud
            .st()
            .deltas
            .get("web-spot")
            .copied()
            .unwrap_or_default();
        // 1: every reported spot scale-up is a real +1 (none lost to a race).
        prop_assert_eq!(
            spot_up,
            self.spot_scale_ups_reported(),
            "lost or phantom spot update"
        );
        Ok(())
    }

    /// The invariants on capacity, ledger and pods. (A flow dropped between a scale-up and
    /// its report leaves the report out; the ledger holds the unit all the same.)
    fn check_capacity(&self) -> Result<(), TestCaseError> {
        let st = self.cloud.st();
        let spot = st.groups["web-spot"].clone();
        let od = st.groups["web-od"].clone();
        let (spot_up, spot_down) = st.deltas.get("web-spot").copied().unwrap_or_default();
        let (od_up, od_down) = st.deltas.get("web-od").copied().unwrap_or_default();
        drop(st);
        // 4: never below the minimum, never more given back than taken.
        prop_assert!(spot.desired >= SPOT_MIN, "spot below min: {}", spot.desired);
        prop_assert!(
            spot_down <= spot_up,
            "spot double decrement: up {spot_up} down {spot_down}"
        );
        prop_assert!(
            od_down <= od_up,
            "on-demand double decrement: up {od_up} down {od_down}"
        );
        // 3: every unit above the baseline is held by an open ledger entry.
        prop_assert!(
            od.desired <= self.open(EntryKind::Fallback),
            "on-demand leak: desired {} with {} open fallbacks",
            od.desired,
            self.open(EntryKind::Fallback)
        );
        let spot_entries = self.open(EntryKind::Prescale) + self.open(EntryKind::Surplus);
        prop_assert!(
            spot.desired <= SPOT_BASE + spot_entries,
            "spot leak: desired {} with {spot_entries} open pre-scales",
            spot.desired,
        );
        // 5: no fallback removed while spot was unhealthy; no pod lost its node undrained.
        let unsafe_terms = self.cloud.st().unsafe_terminations.clone();
        prop_assert!(
            unsafe_terms.is_empty(),
            "unsafe scale-down: {unsafe_terms:?}"
        );
        let lost = *self.cluster.lost_pods.lock().unwrap();
        prop_assert_eq!(lost, 0, "pods lost without a drain");
        Ok(())
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let sim = Sim::new();
    let lock = LocalScaleLock::default();
    let mut engine = sim.engine(&lock);
    for op in ops {
        match op {
            Op::Notice { idx, interruption } => {
                if let Some(n) = sim.notice(idx, interruption) {
                    let _ = block_on(engine.handle_rebalance(&n));
                }
            }
            Op::Concurrent { a, b } => {
                let notices: Vec<Notice> = [a, b]
                    .iter()
                    .filter_map(|&i| sim.notice(i, false))
                    .collect();
                let _ = block_on(join_all(notices.iter().map(|n| engine.handle_rebalance(n))));
            }
            Op::SpotOutage(on) => {
                sim.cloud.st().spot_outage = on;
                if !on {
                    sim.cloud.reconcile_all();
                }
            }
            Op::FailNext(op) => {
                sim.cloud.st().fail_next.insert(
                    op,
                    CloudError::Api {
                        operation: op.into(),
                        target: "web".into(),
                        message: "injected".into(),
                        retryable: false,
                        source: None,
                    },
                );
            }
            Op::FailSave => sim.store.fail_saves(1),
            Op::Tick { secs } => {
                sim.pass(secs);
                let _ = block_on(engine.monitor_tick());
            }
            Op::Restart => {
                engine = sim.engine(&lock);
                let _ = block_on(engine.recover());
            }
        }
        sim.pass(1);
        sim.check_step()?;
    }

    // Convergence: faults cleared, spot back; the monitor settles everything.
    sim.cloud.st().fail_next.clear();
    sim.store.fail_saves(0);
    sim.cloud.st().spot_outage = false;
    sim.cloud.reconcile_all();
    engine = sim.engine(&lock);
    block_on(engine.recover()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for _ in 0..80 {
        sim.pass(30);
        block_on(engine.monitor_tick()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        sim.check_step()?;
    }
    let open: Vec<_> = sim.store.ledger().open().cloned().collect();
    prop_assert!(open.is_empty(), "entries left open: {open:#?}");
    prop_assert_eq!(
        sim.cloud.group("web-od").desired,
        0,
        "on-demand not given back"
    );
    prop_assert_eq!(
        sim.cloud.group("web-spot").desired,
        SPOT_BASE,
        "spot not back to base"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("SPOTGUARD_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(192), ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_histories(ops in proptest::collection::vec(op(), 1..24)) {
        run(ops)?;
    }
}

#[test]
fn a_fallback_history_converges() {
    run(vec![
        Op::SpotOutage(true),
        Op::Notice {
            idx: 1,
            interruption: false,
        },
        Op::Tick { secs: 60 },
        Op::Restart,
        Op::SpotOutage(false),
        Op::Tick { secs: 300 },
    ])
    .unwrap();
}

// ----- interleavings ----------------------------------------------------------------------
//
// Several agents (each its own engine, as on different nodes) handle notices while the
// controller's monitor ticks, all sharing one cloud, cluster, ledger and scale lock. Every
// port call yields, and a random schedule picks which flow runs at each await point, so
// raises, both kinds of payback, unfilled-slot lowering and monitor scale-downs interleave in
// every order the real system allows. After each batch the groups' desired capacities are
// exactly their start plus what the ledger still holds open.

/// Spot maximum: two raises fit, a third concurrent notice falls back to on-demand.
const SPOT_MAX: u32 = SPOT_BASE + 2;

#[derive(Debug, Clone)]
enum Actor {
    /// An agent handling a rebalance recommendation for the spot instance at this index.
    Agent(usize),
    /// The controller's monitor, ticking this many times 30 s apart.
    Monitor(u8),
}

#[derive(Debug, Clone)]
struct Batch {
    actors: Vec<Actor>,
    /// Which unfinished flow runs next, cycled.
    schedule: Vec<usize>,
    /// Spot launches fail during the batch.
    outage: bool,
    /// Time passing after the batch.
    pass_secs: u64,
}

fn batch() -> impl Strategy<Value = Batch> {
    let actor = prop_oneof![
        3 => (0..8usize).prop_map(Actor::Agent),
        1 => (1..4u8).prop_map(Actor::Monitor),
    ];
    (
        proptest::collection::vec(actor, 1..6),
        proptest::collection::vec(0..64usize, 1..48),
        proptest::bool::weighted(0.25),
        0..300u64,
    )
        .prop_map(|(actors, schedule, outage, pass_secs)| Batch {
            actors,
            schedule,
            outage,
            pass_secs,
        })
}

/// Polls the flows one at a time, in the order `schedule` picks (cycled, shifted by one each
/// round), until all are done: any interleaving of their await points can be chosen.
fn run_scheduled(
    mut flows: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>>,
    schedule: &[usize],
) -> Result<(), TestCaseError> {
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut step = 0usize;
    while !flows.is_empty() {
        prop_assert!(step < 2_000_000, "flows made no progress in {step} polls");
        // Shifted by one every round through the schedule, so no flow starves.
        let i = (schedule[step % schedule.len()] + step / schedule.len()) % flows.len();
        step += 1;
        if flows[i].as_mut().poll(&mut cx).is_ready() {
            drop(flows.swap_remove(i));
        }
    }
    Ok(())
}

impl Sim {
    fn interleaved() -> Self {
        let mut sim = Sim::new();
        sim.cloud.st().groups.get_mut("web-spot").unwrap().max = SPOT_MAX;
        sim.cloud.interleave = true;
        sim.cluster.interleave = true;
        sim.store = sim.store.interleaved();
        sim
    }

    /// Desired capacity of each group equals its start plus the open entries that hold a
    /// unit of it (invariants 1 and 4, exactly).
    fn check_exact(&self) -> Result<(), TestCaseError> {
        let ledger = self.store.ledger();
        let holding = |group: &str| {
            ledger
                .open()
                .filter(|e| e.group == group && e.state != EntryState::Pending)
                .count() as u32
        };
        let spot = self.cloud.group("web-spot").desired;
        let od = self.cloud.group("web-od").desired;
        prop_assert_eq!(
            spot,
            SPOT_BASE + holding("web-spot"),
            "spot desired capacity is not its start plus the open entries: {:#?}",
            ledger.open().collect::<Vec<_>>()
        );
        prop_assert_eq!(
            od,
            holding("web-od"),
            "on-demand desired capacity is not the open fallbacks: {:#?}",
            ledger.open().collect::<Vec<_>>()
        );
        Ok(())
    }
}

fn run_interleaved(batches: Vec<Batch>) -> Result<(), TestCaseError> {
    let sim = Sim::interleaved();
    let lock = LocalScaleLock::default();
    let controller = sim.engine(&lock);
    for batch in batches {
        sim.cloud.st().spot_outage = batch.outage;
        // One agent per node, as the DaemonSet runs them: notices for one instance go to
        // one engine, which merges them.
        let mut agents: Vec<(SimEngine<'_>, Vec<Notice>)> = Vec::new();
        for actor in &batch.actors {
            let Actor::Agent(idx) = *actor else { continue };
            let Some(notice) = sim.notice(idx, false) else {
                continue;
            };
            match agents
                .iter_mut()
                .find(|(_, n)| n[0].instance_id == notice.instance_id)
            {
                Some((_, notices)) => notices.push(notice),
                None => agents.push((sim.engine(&lock), vec![notice])),
            }
        }
        let mut flows: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>> = agents
            .iter()
            .flat_map(|(engine, notices)| {
                notices.iter().map(move |notice| {
                    Box::pin(async move {
                        let _ = engine.handle_notice(notice).await;
                    }) as _
                })
            })
            .collect();
        for actor in &batch.actors {
            if let Actor::Monitor(ticks) = *actor {
                let controller = &controller;
                let clock = &sim.clock;
                flows.push(Box::pin(async move {
                    for _ in 0..ticks {
                        let _ = controller.monitor_tick().await;
                        clock.sleep(Duration::from_secs(30)).await;
                    }
                }));
            }
        }
        run_scheduled(flows, &batch.schedule)?;
        sim.check_exact()?;
        sim.cloud.st().spot_outage = false;
        sim.cloud.reconcile_all();
        sim.pass(batch.pass_secs);
        sim.check_step()?;
    }
    // Convergence: spot back; the monitor gives every fallback back.
    for _ in 0..80 {
        sim.pass(30);
        block_on(controller.monitor_tick()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        sim.check_exact()?;
    }
    let open: Vec<_> = sim.store.ledger().open().cloned().collect();
    prop_assert!(open.is_empty(), "entries left open: {open:#?}");
    prop_assert_eq!(sim.cloud.group("web-od").desired, 0);
    prop_assert_eq!(sim.cloud.group("web-spot").desired, SPOT_BASE);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("SPOTGUARD_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(192), ..ProptestConfig::default() })]

    #[test]
    fn capacity_changes_never_overwrite_each_other(batches in proptest::collection::vec(batch(), 1..6)) {
        run_interleaved(batches)?;
    }
}

/// Found by `capacity_changes_never_overwrite_each_other`: two monitor passes overlapping on
/// one entry, one abandoning (reopening the node) the scale-down the other was finishing;
/// the reopened node was then terminated under a pod.
#[test]
fn overlapping_monitor_passes_lose_no_pod() {
    use Actor::*;
    let b = |actors: Vec<Actor>, schedule: Vec<usize>, outage: bool, pass_secs: u64| Batch {
        actors,
        schedule,
        outage,
        pass_secs,
    };
    run_interleaved(vec![
        b(vec![Agent(0), Agent(1)], vec![0], true, 37),
        b(vec![Agent(2)], vec![0], false, 246),
        b(vec![Monitor(3)], vec![0], false, 147),
        b(vec![Monitor(2)], vec![0], false, 90),
        b(
            vec![Agent(4), Monitor(1), Monitor(1), Agent(1), Monitor(2)],
            vec![6, 2, 36, 14, 19, 35, 31, 46, 26, 15],
            false,
            0,
        ),
    ])
    .unwrap();
}

// ----- cancellation -----------------------------------------------------------------------
//
// An embedder may drop any engine future at any await point: a timeout around
// `handle_rebalance`, a task aborted at shutdown. Each flow below is polled N times and then
// dropped, for every N from 0 until it completes on its own; every port call yields, so every
// await point of the flow is a place it is dropped at. After each drop the invariants hold;
// this engine has no instance in flight and no entry claimed; no scale lock is held; the next
// notice for the instance is handled, not merged into the dropped one; and recovery and the
// monitor then settle every entry the dropped flow left, back to the starting capacity.

/// Polls `flow` at most `polls` times; whether it completed. An unfinished flow is dropped.
fn poll_at_most<F: std::future::Future>(flow: F, polls: usize) -> bool {
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut flow = std::pin::pin!(flow);
    (0..polls).any(|_| flow.as_mut().poll(&mut cx).is_ready())
}

/// What is cancelled.
#[derive(Debug, Clone, Copy)]
enum Flow {
    /// A rebalance recommendation; spot launches.
    Rebalance,
    /// A rebalance recommendation while spot launches fail: the on-demand fallback.
    Fallback,
    /// An interruption notice while spot launches fail.
    Interruption,
    /// A monitor tick that gives a fallback back (health, stability, safety, drain,
    /// terminate).
    GiveBack,
}

impl Sim {
    /// Spot back, its failed launches older than the error window: what the monitor needs
    /// to find it healthy.
    fn spot_back(&self) {
        self.cloud.st().spot_outage = false;
        self.cloud.reconcile_all();
        self.pass(660);
    }

    /// The world before the flow, and the notice it (or the next attempt) handles.
    fn prepare(&self, flow: Flow, engine: &SimEngine<'_>) -> Notice {
        let notice = self.notice(0, matches!(flow, Flow::Interruption)).unwrap();
        if !matches!(flow, Flow::Rebalance) {
            self.cloud.st().spot_outage = true;
        }
        if let Flow::GiveBack = flow {
            block_on(engine.handle_notice(&notice)).unwrap();
            assert_eq!(
                self.open(EntryKind::Fallback),
                1,
                "the fallback to give back"
            );
            self.spot_back();
            // The monitor's first pass starts the stability clock; the cancelled one acts.
            block_on(engine.monitor_tick()).unwrap();
            self.pass(300);
        }
        notice
    }
}

fn cancelled_at_every_await_point(flow: Flow) {
    let mut completed_after = None;
    for polls in 0..20_000 {
        let sim = Sim::interleaved();
        let lock = LocalScaleLock::default();
        let engine = sim.engine(&lock);
        let notice = sim.prepare(flow, &engine);
        let before = sim.events.events().len();
        let done = match flow {
            Flow::GiveBack => poll_at_most(engine.monitor_tick(), polls),
            _ => poll_at_most(engine.handle_rebalance(&notice), polls),
        };
        let at = format!("{flow:?} dropped after {polls} polls");
        sim.check_capacity().unwrap_or_else(|e| panic!("{at}: {e}"));
        {
            let state = engine.state.lock().unwrap();
            assert!(
                state.in_flight.is_empty(),
                "{at}: {:?} in flight",
                state.in_flight
            );
            assert!(
                state.monitoring.is_empty(),
                "{at}: {:?} claimed",
                state.monitoring
            );
        }
        for group in ["web-spot", "web-od"] {
            assert!(
                poll_at_most(lock.acquire(group), 1),
                "{at}: the {group} scale lock is still held"
            );
            block_on(lock.release(group)).unwrap();
        }
        // The next notice for the instance is acted on (spot is back by now).
        sim.cloud.st().spot_outage = false;
        sim.cloud.reconcile_all();
        let _ = block_on(engine.handle_notice(&notice));
        let merged = sim.events.events()[before..]
            .iter()
            .any(|(_, e)| matches!(e, Event::NoticeCoalesced { .. }));
        assert!(
            !merged,
            "{at}: the next notice was merged into the dropped one"
        );
        // Recovery and the monitor settle what the dropped flow left.
        sim.pass(600);
        block_on(engine.recover()).unwrap_or_else(|e| panic!("{at}: recover: {e}"));
        for _ in 0..40 {
            if sim.store.ledger().open().next().is_none()
                && sim.cloud.group("web-od").desired == 0
                && sim.cloud.group("web-spot").desired == SPOT_BASE
            {
                break;
            }
            sim.pass(30);
            let _ = block_on(engine.monitor_tick());
            sim.check_capacity().unwrap_or_else(|e| panic!("{at}: {e}"));
        }
        let open: Vec<_> = sim.store.ledger().open().cloned().collect();
        assert!(open.is_empty(), "{at}: entries left open: {open:#?}");
        assert_eq!(sim.cloud.group("web-od").desired, 0, "{at}");
        assert_eq!(sim.cloud.group("web-spot").desired, SPOT_BASE, "{at}");
        if done {
            if let Flow::GiveBack = flow {
                let scaled_down = sim.events.events()[before..]
                    .iter()
                    .any(|(_, e)| matches!(e, Event::ScaleDownStarted { .. }));
                assert!(scaled_down, "the cancelled tick is the one that gives back");
            }
            completed_after = Some(polls);
            break;
        }
    }
    let polls = completed_after.expect("the flow completes within 20,000 polls");
    // Every port call yields at least once: a flow this short would not have been cut at
    // its await points.
    assert!(polls > 10, "{flow:?} completed after only {polls} polls");
}

#[test]
fn every_flow_cancelled_at_every_await_point_rebalance() {
    cancelled_at_every_await_point(Flow::Rebalance);
}

#[test]
fn every_flow_cancelled_at_every_await_point_fallback() {
    cancelled_at_every_await_point(Flow::Fallback);
}

#[test]
fn every_flow_cancelled_at_every_await_point_interruption() {
    cancelled_at_every_await_point(Flow::Interruption);
}

#[test]
fn every_flow_cancelled_at_every_await_point_give_back() {
    cancelled_at_every_await_point(Flow::GiveBack);
}
