//! The discrete-event driver: runs the real engine over the simulated cloud and cluster on a
//! single-threaded executor, in virtual time.
//!
//! Each step runs every task that can make progress (notice handlers, the monitor loop, the
//! cleanup loop, drains) until all of them wait on the clock; then time jumps to the earliest
//! of the next timer and the next scheduled happening (a timeline event, a launch completing,
//! a node getting Ready, an interruption taking effect), the happenings due then are applied,
//! and the step repeats. Nothing depends on the wall clock, so a run is deterministic.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::mem::Discriminant;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::executor::LocalPool;
use futures::future::{AbortHandle, Abortable};
use futures::task::LocalSpawnExt;
use serde::Serialize;

use super::clock::SimClock;
use super::cloud::SimCloud;
use super::cluster::SimCluster;
use super::report::{Comparison, LedgerEnd, NodeCount, RunReport, Source, Summary, TimelineEntry};
use super::scenario::{clock_text, Capacity, EventKind, Scenario};
use super::world::{Happening, Shared, World};
use async_trait::async_trait;
use spotguard_core::config::DrainOptions;
use spotguard_core::engine::{Engine, Error as EngineError, MonitorHooks, TickReport};
use spotguard_core::events::{Check, Event, Observer};
use spotguard_core::ledger::EntryKind;
use spotguard_core::lock::LocalScaleLock;
use spotguard_core::memory::MemoryLedgerStore;
use spotguard_core::model::{InstanceId, LifecycleState};
use spotguard_core::notice::{Notice, NoticeKind};
use spotguard_core::ports::{Clock, Cluster};
use spotguard_core::predicates::{Reason, Verdict};

/// 2026-01-01T00:00:00Z: the virtual start of every simulation.
const START_SECS: u64 = 1_767_225_600;

/// What runs the cluster in a simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Strategy {
    /// Spot Guard's engine handles notices and gives fallbacks back.
    SpotGuard,
    /// A plain termination handler: cordon and drain on the interruption notice only; the
    /// group replaces the instance once EC2 has taken it.
    NoSpotGuard,
    /// Every group on on-demand capacity; no spot event applies.
    AllOnDemand,
}

impl Strategy {
    /// Name for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Self::SpotGuard => "Spot Guard",
            Self::NoSpotGuard => "no Spot Guard",
            Self::AllOnDemand => "all on-demand",
        }
    }
}

/// How far a run is, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The run.
    pub strategy: Strategy,
    /// Simulated time so far.
    pub simulated: Duration,
    /// Simulated time in all.
    pub total: Duration,
}

type SimEngine = Engine<SimCloud, SimCluster, SimClock, MemoryLedgerStore, LocalScaleLock>;

/// Runs the scenario under one strategy.
///
/// ```
/// use spotguard_sim::{simulate, Scenario, Strategy};
/// let report = simulate(&Scenario::builtin(), Strategy::SpotGuard);
/// assert_eq!(report.summary.pdb_violations, 0);
/// assert_eq!(report.ledger.unwrap().open_fallbacks, 0);
/// ```
pub fn simulate(scenario: &Scenario, strategy: Strategy) -> RunReport {
    simulate_with_progress(scenario, strategy, &mut |_| {})
}

/// [`simulate`], calling `progress` at every simulated percent.
pub fn simulate_with_progress(
    scenario: &Scenario,
    strategy: Strategy,
    progress: &mut dyn FnMut(&Progress),
) -> RunReport {
    Driver::new(scenario, strategy).run(progress)
}

/// Runs the scenario under Spot Guard and both baselines.
///
/// ```
/// use spotguard_sim::{compare, Scenario};
/// let c = compare(&Scenario::example("quiet-day").unwrap(), &mut |_| {});
/// assert!(c.spot_guard.summary.cost_usd < c.all_on_demand.summary.cost_usd);
/// print!("{}", c.table());
/// ```
pub fn compare(scenario: &Scenario, progress: &mut dyn FnMut(&Progress)) -> Comparison {
    let [spot_guard, no_spot_guard, all_on_demand] = [
        Strategy::SpotGuard,
        Strategy::NoSpotGuard,
        Strategy::AllOnDemand,
    ]
    .map(|s| simulate_with_progress(scenario, s, progress));
    Comparison {
        scenario: scenario.name.clone(),
        description: scenario.description.trim().to_string(),
        duration_seconds: scenario.duration.as_secs(),
        spot_guard,
        no_spot_guard,
        all_on_demand,
    }
}

/// The scenario with every group on on-demand capacity and no spot event.
fn all_on_demand(scenario: &Scenario) -> Scenario {
    let mut s = scenario.clone();
    for g in &mut s.groups {
        g.capacity = Capacity::OnDemand;
        g.fallback_for = None;
    }
    s.timeline.clear();
    s
}

/// The kinds of reasons of a verdict: a wait that keeps its shape is told once.
type Shape = Vec<Discriminant<Reason>>;

/// Puts the engine's events on the timeline; repeated verdicts of the same shape are folded
/// so a long wait reads as one line (progress of the stability wait always shows).
struct TimelineObserver {
    world: Shared,
    last: Mutex<HashMap<(String, Check), Shape>>,
}

impl Observer for TimelineObserver {
    fn observe(&self, at: SystemTime, event: &Event) {
        let mut text = None;
        if let Event::Verdict {
            entry,
            check,
            verdict,
        } = event
        {
            let mut shape: Shape = verdict
                .reasons()
                .iter()
                .map(std::mem::discriminant)
                .collect();
            shape.dedup();
            let progressing = verdict
                .reasons()
                .iter()
                .any(|r| matches!(r, Reason::HealthyTooShort { .. }));
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let key = (entry.clone(), *check);
            if last.get(&key) == Some(&shape) && !progressing {
                return;
            }
            last.insert(key, shape);
            text = Some(verdict_text(entry, *check, verdict));
        }
        let mut w = self.world.lock();
        let offset = w.offset(at);
        w.timeline.push(TimelineEntry {
            at: offset,
            source: Source::SpotGuard,
            text: text.unwrap_or_else(|| event.to_string()),
            event: Some(event.clone()),
        });
    }
}

/// A verdict in words, with a run of failed scaling activities told as the latest one and a
/// count (the event itself keeps every reason).
fn verdict_text(entry: &str, check: Check, verdict: &Verdict) -> String {
    if verdict.is_go() {
        return format!("{entry}: {check:?} go");
    }
    let failures: Vec<&Reason> = verdict
        .reasons()
        .iter()
        .filter(|r| matches!(r, Reason::RecentFailure { .. }))
        .collect();
    let latest = failures.iter().min_by_key(|r| match r {
        Reason::RecentFailure { ago, .. } => *ago,
        _ => Duration::MAX,
    });
    let mut parts: Vec<String> = Vec::new();
    let mut told = false;
    for r in verdict.reasons() {
        match (r, latest) {
            (Reason::RecentFailure { .. }, Some(latest)) => {
                if !told {
                    told = true;
                    parts.push(if failures.len() > 1 {
                        format!(
                            "{latest} ({} failed activities within the error window)",
                            failures.len()
                        )
                    } else {
                        latest.to_string()
                    });
                }
            }
            (other, _) => parts.push(other.to_string()),
        }
    }
    format!("{entry}: {check:?} wait: {}", parts.join("; "))
}

struct Driver {
    scenario: Scenario,
    strategy: Strategy,
    clock: SimClock,
    world: Shared,
    pool: LocalPool,
    store: MemoryLedgerStore,
    tasks: Vec<AbortHandle>,
    noticed: HashSet<InstanceId>,
    start: SystemTime,
    end: SystemTime,
    start_nodes: NodeCount,
}

impl Driver {
    fn new(scenario: &Scenario, strategy: Strategy) -> Self {
        let scenario = match strategy {
            Strategy::AllOnDemand => all_on_demand(scenario),
            _ => scenario.clone(),
        };
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(START_SECS);
        let clock = SimClock::new(start);
        let mut world = World::new(&scenario, clock.clone());
        world.seed(start);
        let [spot, od] = world.cluster.node_counts();
        let pods = world.cluster.snapshot(start).pods.len();
        world.note(
            Source::Scenario,
            format!(
                "{} under {}: {spot} spot and {od} on-demand nodes, {pods} pods of {} workloads, {} PDBs",
                scenario.name,
                strategy.label(),
                scenario.workloads.len(),
                scenario.pdbs.len()
            ),
        );
        let pending = world.cluster.pending_count();
        if pending > 0 {
            world.note(
                Source::Cluster,
                format!("{pending} pods find no node at the start"),
            );
        }
        for (i, e) in scenario.timeline.iter().enumerate() {
            world.queue.push(start + e.at, Happening::Timeline(i));
        }
        world.settle(start);
        let end = start + scenario.duration;
        Self {
            scenario,
            strategy,
            clock,
            world: Shared::new(world),
            pool: LocalPool::new(),
            store: MemoryLedgerStore::default(),
            tasks: Vec::new(),
            noticed: HashSet::new(),
            start,
            end,
            start_nodes: NodeCount {
                spot,
                on_demand: od,
            },
        }
    }

    fn spawn(&mut self, task: impl Future<Output = ()> + 'static) {
        let (handle, registration) = AbortHandle::new_pair();
        self.pool
            .spawner()
            .spawn_local(async move {
                let _ = Abortable::new(task, registration).await;
            })
            .expect("the local pool accepts tasks");
        self.tasks.push(handle);
    }

    fn cloud(&self) -> SimCloud {
        SimCloud {
            world: self.world.clone(),
        }
    }

    fn cluster(&self) -> SimCluster {
        SimCluster {
            world: self.world.clone(),
            clock: self.clock.clone(),
        }
    }

    /// Starts (or restarts) Spot Guard: a new engine over the same ledger store, running the
    /// daemon's monitor loop ([`Engine::run_monitor`]: recovery, then ticks and cleanups).
    fn start_engine(&mut self) -> Arc<SimEngine> {
        let config = self.scenario.engine_config();
        let engine = Arc::new(
            Engine::new(
                config.clone(),
                self.cloud(),
                self.cluster(),
                self.clock.clone(),
                self.store.clone(),
                LocalScaleLock::default(),
            )
            .with_observer(TimelineObserver {
                world: self.world.clone(),
                last: Mutex::new(HashMap::new()),
            }),
        );
        let (e, world) = (engine.clone(), self.world.clone());
        self.spawn(async move {
            e.run_monitor(futures::future::pending(), &TimelineHooks { world })
                .await
        });
        engine
    }

    fn run(mut self, progress: &mut dyn FnMut(&Progress)) -> RunReport {
        let mut engine = match self.strategy {
            Strategy::SpotGuard => Some(self.start_engine()),
            _ => None,
        };
        let total = self.end.duration_since(self.start).unwrap_or_default();
        let step = (total / 100).max(Duration::from_secs(1));
        let mut next_report = self.start + step;
        loop {
            self.pool.run_until_stalled();
            let now = self.clock.now();
            self.world.lock().settle(now);
            let queued = self.world.lock().queue.next_time();
            let next = [self.clock.next_deadline(), queued]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|t| *t < self.end) else {
                break;
            };
            self.world.lock().integrate(next);
            self.clock.advance_to(next);
            while let Some(what) = self.pop_due(next) {
                self.happen(what, next, &mut engine);
            }
            while next >= next_report {
                progress(&Progress {
                    strategy: self.strategy,
                    simulated: next_report.duration_since(self.start).unwrap_or_default(),
                    total,
                });
                next_report += step;
            }
        }
        self.world.lock().integrate(self.end);
        for t in &self.tasks {
            t.abort();
        }
        progress(&Progress {
            strategy: self.strategy,
            simulated: total,
            total,
        });
        self.report()
    }

    fn pop_due(&self, now: SystemTime) -> Option<Happening> {
        self.world.lock().queue.pop_due(now)
    }

    fn happen(&mut self, what: Happening, now: SystemTime, engine: &mut Option<Arc<SimEngine>>) {
        match what {
            Happening::Timeline(i) => self.timeline_event(i, now, engine),
            Happening::InterruptionNotice(id) => self.interruption_notice(&id, now, engine),
            Happening::Reclaim(id) => {
                let mut w = self.world.lock();
                if w.cloud.lifecycle(&id).is_some_and(|l| !l.is_leaving()) {
                    let group = w.cloud.instances[&id].group;
                    let node = w.cloud.instances[&id].node.clone();
                    w.note(
                        Source::Ec2,
                        format!("reclaimed spot instance {id} (node {node})"),
                    );
                    w.begin_termination(&id, "spot instance interrupted", now);
                    w.reconcile(group, now);
                }
            }
            other => self.world.lock().apply(other, now),
        }
    }

    /// The `count` oldest InService instances of the group not noticed before.
    fn pick(&mut self, group: usize, count: u32) -> Vec<(InstanceId, String)> {
        let w = self.world.lock();
        let picked: Vec<(InstanceId, String)> = w.cloud.groups[group]
            .members
            .iter()
            .filter(|id| {
                !self.noticed.contains(*id)
                    && w.cloud.instances[*id].lifecycle == LifecycleState::InService
            })
            .take(count as usize)
            .map(|id| (id.clone(), w.cloud.instances[id].node.clone()))
            .collect();
        drop(w);
        for (id, _) in &picked {
            self.noticed.insert(id.clone());
        }
        picked
    }

    fn timeline_event(&mut self, i: usize, now: SystemTime, engine: &mut Option<Arc<SimEngine>>) {
        let event = self.scenario.timeline[i].clone();
        if event.event == EventKind::ControllerRestart {
            if self.strategy == Strategy::SpotGuard {
                self.world.lock().note(
                    Source::Scenario,
                    "Spot Guard restarts: running actions stop, a new engine recovers the ledger"
                        .into(),
                );
                for t in self.tasks.drain(..) {
                    t.abort();
                }
                *engine = Some(self.start_engine());
            }
            return;
        }
        let Some(group_name) = self.scenario.event_group(&event).map(|g| g.name.clone()) else {
            return;
        };
        let Some(group) = self.world.lock().cloud.group_index(&group_name) else {
            return;
        };
        if self.world.lock().cloud.groups[group].capacity != Capacity::Spot {
            return;
        }
        let count = event.count.unwrap_or(1);
        match event.event {
            EventKind::Rebalance => {
                for (id, node) in self.pick(group, count) {
                    self.world.lock().note(
                        Source::Ec2,
                        format!("rebalance recommendation for {id} (node {node})"),
                    );
                    if let Some(after) = event.interruption_after {
                        self.world
                            .lock()
                            .queue
                            .push(now + after, Happening::InterruptionNotice(id.clone()));
                    }
                    if let (Strategy::SpotGuard, Some(e)) = (self.strategy, engine.as_ref()) {
                        let notice = Notice {
                            instance_id: id,
                            kind: NoticeKind::Rebalance,
                            notice_time: now,
                        };
                        let e = e.clone();
                        self.spawn(async move {
                            let _ = e.handle_notice(&notice).await;
                        });
                    }
                }
            }
            EventKind::Interruption => {
                for (id, _) in self.pick(group, count) {
                    self.interruption_notice(&id, now, engine);
                }
            }
            EventKind::SpotOutage => {
                let duration = event.duration.unwrap_or_default();
                let mut w = self.world.lock();
                w.note(
                    Source::Ec2,
                    format!(
                        "spot capacity for {group_name} runs out for {}",
                        humantime::format_duration(duration)
                    ),
                );
                w.set_outage(group, true, now);
                w.queue.push(now + duration, Happening::OutageEnds(group));
            }
            EventKind::ControllerRestart => {}
        }
    }

    fn interruption_notice(
        &mut self,
        id: &str,
        now: SystemTime,
        engine: &mut Option<Arc<SimEngine>>,
    ) {
        let (deadline, node) = {
            let mut w = self.world.lock();
            let live = w.cloud.lifecycle(id).is_some_and(|l| !l.is_leaving());
            if !live {
                w.note(
                    Source::Ec2,
                    format!("interruption of {id} does not happen: the instance is already gone"),
                );
                return;
            }
            let deadline = now + w.cloud.settings.interruption_notice;
            let node = w.cloud.instances[id].node.clone();
            let at = clock_text(w.offset(deadline));
            w.note(
                Source::Ec2,
                format!("interruption notice for {id} (node {node}): EC2 reclaims it at {at}"),
            );
            w.queue.push(deadline, Happening::Reclaim(id.to_string()));
            (deadline, node)
        };
        let notice = Notice {
            instance_id: id.to_string(),
            kind: NoticeKind::Interruption {
                action: "terminate".into(),
                deadline,
            },
            notice_time: now,
        };
        match (self.strategy, engine.as_ref()) {
            (Strategy::SpotGuard, Some(e)) => {
                let e = e.clone();
                self.spawn(async move {
                    let _ = e.handle_notice(&notice).await;
                });
            }
            (Strategy::NoSpotGuard, _) => {
                let (cluster, world) = (self.cluster(), self.world.clone());
                let drain = self.scenario.engine_config().drain;
                self.spawn(termination_handler(cluster, world, node, drain));
            }
            _ => {}
        }
    }

    fn report(self) -> RunReport {
        let w = self.world.lock();
        let m = &w.meter;
        let summary = Summary {
            cost_usd: m.cost_usd,
            spot_instance_hours: m.spot_hours,
            on_demand_instance_hours: m.on_demand_hours,
            pending_pod_minutes: m.pending_pod_seconds / 60.0,
            evictions: w.cluster.evictions,
            pods_lost: w.cluster.pods_lost,
            pdb_violations: w.cluster.pdb_violations,
            peak_nodes: m.peak_nodes,
        };
        let ledger = (self.strategy == Strategy::SpotGuard).then(|| {
            let l = self.store.ledger();
            let recorded = w
                .timeline
                .iter()
                .filter(|e| matches!(e.event, Some(Event::FallbackRecorded { .. })))
                .count();
            let open_fallbacks = l.open().filter(|e| e.kind == EntryKind::Fallback).count();
            LedgerEnd {
                entries: l.entries.len(),
                open: l.open().count(),
                open_fallbacks,
                fallbacks_recorded: recorded,
                fallbacks_released: recorded.saturating_sub(open_fallbacks),
            }
        });
        let [spot, on_demand] = w.cluster.node_counts();
        RunReport {
            strategy: self.strategy,
            summary,
            ledger,
            start_nodes: self.start_nodes,
            end_nodes: NodeCount { spot, on_demand },
            timeline: w.timeline.clone(),
            series: m.series.clone(),
        }
    }
}

/// The *no Spot Guard* baseline: what a plain termination handler does on the interruption
/// notice — cordon, drain, nothing else.
/// Notes in the timeline what the monitor loop reports: the entries a recovery resumes and
/// failed steps.
struct TimelineHooks {
    world: Shared,
}

#[async_trait]
impl MonitorHooks for TimelineHooks {
    async fn recovered(&self, result: &Result<usize, EngineError>) {
        let text = match result {
            Ok(0) => return,
            Ok(open) => format!("recovered the ledger: {open} open entries resume"),
            Err(err) => format!("ledger recovery failed: {err}"),
        };
        self.world.lock().note(Source::SpotGuard, text);
    }

    async fn ticked(&self, result: &Result<TickReport, EngineError>) {
        if let Err(err) = result {
            self.world
                .lock()
                .note(Source::SpotGuard, format!("monitor tick failed: {err}"));
        }
    }
}

async fn termination_handler(
    cluster: SimCluster,
    world: Shared,
    node: String,
    drain: DrainOptions,
) {
    if cluster.set_unschedulable(&node, true).await.is_err() {
        return;
    }
    world
        .lock()
        .note(Source::Handler, format!("cordoned node {node}"));
    match cluster.drain(&node, &drain).await {
        Ok(report) if report.is_complete() => world.lock().note(
            Source::Handler,
            format!("drained {node} ({} pods evicted)", report.evicted()),
        ),
        Ok(report) => world.lock().note(
            Source::Handler,
            format!(
                "drain of {node} incomplete: {} pods left",
                report.remaining().len()
            ),
        ),
        Err(e) => world
            .lock()
            .note(Source::Handler, format!("drain of {node} failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::fixtures::small;

    fn at(report: &RunReport, text: &str) -> Vec<Duration> {
        report
            .timeline
            .iter()
            .filter(|e| e.text.contains(text))
            .map(|e| e.at)
            .collect()
    }

    #[test]
    fn runs_are_deterministic() {
        let s = Scenario::example("interruption-wave").unwrap();
        assert_eq!(
            simulate(&s, Strategy::SpotGuard),
            simulate(&s, Strategy::SpotGuard)
        );
    }

    #[test]
    fn a_recommendation_is_answered_with_a_spot_replacement_paid_back() {
        let s = small(
            "[[timeline]]\nat = \"00:10\"\nevent = \"rebalance\"\ninterruption_after = \"10m\"",
        );
        let r = simulate(&s, Strategy::SpotGuard);
        assert_eq!(at(&r, "scaled s from 2 to 3"), [Duration::from_secs(600)]);
        assert_eq!(at(&r, "InService in s after 1m 30s").len(), 1);
        assert_eq!(at(&r, "terminated i-00001 with decrement").len(), 1);
        assert_eq!(
            at(&r, "does not happen: the instance is already gone").len(),
            1
        );
        assert_eq!(
            r.end_nodes,
            NodeCount {
                spot: 2,
                on_demand: 0
            }
        );
        assert_eq!(r.summary.pods_lost, 0);
        assert_eq!(r.ledger.as_ref().unwrap().open, 0);
    }

    #[test]
    fn a_late_interruption_notice_shortens_the_running_wait() {
        // Launches take 4 minutes; the interruption comes one minute after the
        // recommendation. The drain must start in time (deadline minus the 90s window).
        let s = small(
            "[cloud]\nlaunch_delay = \"4m\"\n\
             [[timeline]]\nat = \"00:10\"\nevent = \"rebalance\"\ninterruption_after = \"1m\"",
        );
        let r = simulate(&s, Strategy::SpotGuard);
        let drained = at(&r, "drained s-1");
        assert_eq!(
            drained,
            [Duration::from_secs(600 + 60 + 30)],
            "{}",
            r.timeline_text()
        );
        assert_eq!(r.summary.pods_lost, 0);
        assert_eq!(r.summary.pdb_violations, 0);
    }

    #[test]
    fn the_plain_handler_drains_on_the_interruption_only() {
        let s = small(
            "[[timeline]]\nat = \"00:10\"\nevent = \"rebalance\"\ninterruption_after = \"10m\"",
        );
        let r = simulate(&s, Strategy::NoSpotGuard);
        assert_eq!(at(&r, "cordoned node s-1"), [Duration::from_secs(1200)]);
        assert_eq!(
            at(&r, "reclaimed spot instance i-00001"),
            [Duration::from_secs(1320)]
        );
        assert!(r.ledger.is_none());
        assert_eq!(
            r.end_nodes,
            NodeCount {
                spot: 2,
                on_demand: 0
            }
        );
    }

    #[test]
    fn all_on_demand_runs_no_spot_and_sees_no_spot_event() {
        let s = Scenario::example("spot-drought").unwrap();
        let r = simulate(&s, Strategy::AllOnDemand);
        assert_eq!(r.summary.spot_instance_hours, 0.0);
        assert!((r.summary.on_demand_instance_hours - 240.0).abs() < 1e-6);
        assert!((r.summary.cost_usd - 240.0 * 0.192).abs() < 1e-6);
        assert_eq!(r.summary.evictions, 0);
        assert_eq!(r.timeline.len(), 1, "only the start line");
    }

    #[test]
    fn a_restart_resumes_open_fallbacks_from_the_ledger() {
        let r = simulate(&Scenario::builtin(), Strategy::SpotGuard);
        assert_eq!(
            at(&r, "recovered the ledger: 2 open entries resume").len(),
            1
        );
        let ledger = r.ledger.unwrap();
        assert_eq!(ledger.fallbacks_recorded, 3);
        assert_eq!(ledger.open_fallbacks, 0);
    }
}
