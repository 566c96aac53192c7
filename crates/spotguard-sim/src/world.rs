//! The simulated world: cloud and cluster state behind one lock, the queue of things that
//! happen at a set time, the meters and the timeline.
//!
//! The cloud and the cluster are coupled the way they are on AWS: an instance reaching
//! `InService` registers a node, a terminated instance takes its node and its pods with it.
//! Both ports ([`super::SimCloud`], [`super::SimCluster`]) are handles on the same [`World`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::clock::SimClock;
use super::cloud::CloudState;
use super::cluster::ClusterState;
use super::report::{Sample, Source, TimelineEntry};
use super::scenario::Scenario;
use spotguard_core::model::InstanceId;
use spotguard_core::ports::Clock;

/// Something that happens at a set virtual time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Happening {
    /// The scenario's timeline entry with this index.
    Timeline(usize),
    /// EC2 sends the instance its 2-minute interruption notice.
    InterruptionNotice(InstanceId),
    /// EC2 reclaims the interrupted instance.
    Reclaim(InstanceId),
    /// A spot outage of the group ends.
    OutageEnds(usize),
    /// The group retries its failed launches.
    LaunchRetry(usize),
    /// A launching instance reaches InService.
    InService(InstanceId),
    /// A registered node becomes Ready.
    NodeReady(String),
    /// A terminating instance is gone.
    TerminationDone(InstanceId),
}

/// Happenings in time order; ties keep the order they were scheduled in.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    heap: BinaryHeap<Reverse<(SystemTime, u64, Happening)>>,
    seq: u64,
}

impl Queue {
    pub fn push(&mut self, at: SystemTime, what: Happening) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, what)));
    }

    pub fn next_time(&self) -> Option<SystemTime> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next happening due at or before `now`.
    pub fn pop_due(&mut self, now: SystemTime) -> Option<Happening> {
        if self.next_time()? <= now {
            self.heap.pop().map(|Reverse((_, _, what))| what)
        } else {
            None
        }
    }
}

/// Time-weighted meters: cost, instance-hours, pending pod-time, and the node series.
#[derive(Debug)]
pub(crate) struct Meter {
    last: SystemTime,
    pub cost_usd: f64,
    pub spot_hours: f64,
    pub on_demand_hours: f64,
    pub pending_pod_seconds: f64,
    pub peak_nodes: u32,
    pub series: Vec<Sample>,
}

/// Everything the simulator knows, behind one lock.
#[derive(Debug)]
pub(crate) struct World {
    pub clock: SimClock,
    pub start: SystemTime,
    pub cloud: CloudState,
    pub cluster: ClusterState,
    pub queue: Queue,
    pub meter: Meter,
    pub timeline: Vec<TimelineEntry>,
    /// Groups whose current run of failed launches is already on the timeline.
    failing: HashSet<String>,
}

/// A shared handle on the world.
#[derive(Debug, Clone)]
pub(crate) struct Shared(Arc<Mutex<World>>);

impl Shared {
    pub fn new(world: World) -> Self {
        Self(Arc::new(Mutex::new(world)))
    }

    pub fn lock(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl World {
    /// An empty world for the scenario, standing at `start`.
    pub fn new(scenario: &Scenario, clock: SimClock) -> Self {
        let start = clock.now();
        Self {
            start,
            cloud: CloudState::new(scenario),
            cluster: ClusterState::new(scenario),
            queue: Queue::default(),
            meter: Meter {
                last: start,
                cost_usd: 0.0,
                spot_hours: 0.0,
                on_demand_hours: 0.0,
                pending_pod_seconds: 0.0,
                peak_nodes: 0,
                series: Vec::new(),
            },
            timeline: Vec::new(),
            failing: HashSet::new(),
            clock,
        }
    }

    /// The starting state: each group's desired instances InService with Ready nodes, and
    /// the pods placed on them and Ready.
    pub fn seed(&mut self, start: SystemTime) {
        for g in 0..self.cloud.groups.len() {
            for _ in 0..self.cloud.groups[g].desired {
                let (id, node) = self.cloud.seed_instance(g);
                let group = &self.cloud.groups[g];
                let (name, capacity, itype) =
                    (group.name.clone(), group.capacity, group.instance_type);
                self.join_node(&node, &id, &name, capacity, itype, start);
                self.seed_node(&node);
            }
        }
        self.schedule_pending(start);
        self.cluster.mark_all_ready(start);
    }

    /// Virtual now.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Offset of `at` from the start.
    pub fn offset(&self, at: SystemTime) -> Duration {
        at.duration_since(self.start).unwrap_or_default()
    }

    /// Adds a line to the timeline.
    pub fn note(&mut self, source: Source, text: String) {
        let at = self.offset(self.now());
        self.timeline.push(TimelineEntry {
            at,
            source,
            text,
            event: None,
        });
    }

    /// Puts the first failed launch of a run of failures on the timeline.
    pub(crate) fn note_launch_failure(&mut self, group: &str, _now: SystemTime) {
        if self.failing.insert(group.to_string()) {
            self.note(
                Source::Ec2,
                format!("spot launches in {group} fail: InsufficientInstanceCapacity"),
            );
        }
    }

    /// A launch of the group succeeded: a later failure starts a new run.
    pub(crate) fn note_launch_success(&mut self, group: &str) {
        self.failing.remove(group);
    }

    /// Applies a happening that concerns only the world (not Spot Guard).
    pub fn apply(&mut self, what: Happening, now: SystemTime) {
        match what {
            Happening::LaunchRetry(g) => self.retry_launch(g, now),
            Happening::InService(id) => self.instance_in_service(&id, now),
            Happening::NodeReady(node) => self.node_ready(&node, now),
            Happening::TerminationDone(id) => self.termination_done(&id, now),
            Happening::OutageEnds(g) => {
                let name = self.cloud.groups[g].name.clone();
                self.note(Source::Ec2, format!("spot capacity for {name} is back"));
                self.set_outage(g, false, now);
            }
            Happening::Timeline(_) | Happening::InterruptionNotice(_) | Happening::Reclaim(_) => {
                unreachable!("handled by the driver")
            }
        }
    }

    /// Adds time-weighted figures for `[meter.last, to)` at the current rates.
    pub fn integrate(&mut self, to: SystemTime) {
        let dt = to
            .duration_since(self.meter.last)
            .unwrap_or_default()
            .as_secs_f64();
        if dt > 0.0 {
            let (usd_per_hour, spot, od) = self.cloud.rate();
            let m = &mut self.meter;
            m.cost_usd += usd_per_hour * dt / 3600.0;
            m.spot_hours += f64::from(spot) * dt / 3600.0;
            m.on_demand_hours += f64::from(od) * dt / 3600.0;
            m.pending_pod_seconds += self.cluster.pending_count() as f64 * dt;
            m.last = to;
        }
    }

    /// Schedules pending pods if anything changed, and records a sample of the series when a
    /// count moved.
    pub fn settle(&mut self, now: SystemTime) {
        self.schedule_pending(now);
        let [spot, od] = self.cluster.node_counts();
        let sample = Sample {
            at: self.offset(now).as_secs(),
            spot_nodes: spot,
            on_demand_nodes: od,
            pending_pods: self.cluster.pending_count() as u32,
        };
        self.meter.peak_nodes = self.meter.peak_nodes.max(spot + od);
        let series = &mut self.meter.series;
        match series.last_mut() {
            Some(last) if last.same_counts(&sample) => {}
            Some(last) if last.at == sample.at => *last = sample,
            _ => series.push(sample),
        }
    }
}

#[cfg(test)]
impl World {
    /// Applies every world happening due up to `to`, moving the clock along (tests only;
    /// scenario timeline entries are skipped).
    pub(crate) fn run_until(&mut self, to: SystemTime) {
        while let Some(at) = self.queue.next_time().filter(|t| *t <= to) {
            self.clock.advance_to(at);
            while let Some(what) = self.queue.pop_due(at) {
                match what {
                    Happening::Timeline(_)
                    | Happening::InterruptionNotice(_)
                    | Happening::Reclaim(_) => {}
                    other => self.apply(other, at),
                }
            }
            self.settle(at);
        }
        self.clock.advance_to(to);
        self.settle(to);
    }

    /// A world for the scenario with its starting instances, nodes and pods in place.
    pub(crate) fn seeded(scenario: &Scenario) -> Shared {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let clock = SimClock::new(start);
        let mut world = World::new(scenario, clock);
        world.seed(start);
        Shared::new(world)
    }
}
