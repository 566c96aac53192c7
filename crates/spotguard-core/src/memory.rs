//! In-memory ports: an Auto Scaling look-alike ([`MemoryCloud`]), a cluster whose nodes follow
//! the cloud's instances ([`MemoryCluster`]), a versioned ledger store
//! ([`MemoryLedgerStore`]) and a virtual clock that moves on when nothing else happens
//! ([`AutoClock`]).
//!
//! One set, shared by the engine's own tests, the benchmarks, the simulator (its ledger
//! store) and embedders' tests of their own controllers. Each records its mutating calls, can
//! be told to fail or stall, and can yield inside calls so that concurrent flows interleave.
//!
//! ```
//! use spotguard_core::config::{Config, GroupPair};
//! use spotguard_core::engine::{Engine, RebalanceOutcome, Replacement};
//! use spotguard_core::lock::LocalScaleLock;
//! use spotguard_core::memory::{AutoClock, MemoryCloud, MemoryCluster, MemoryLedgerStore};
//! use spotguard_core::notice::{Notice, NoticeKind};
//!
//! let cloud = MemoryCloud::new(&[("web-spot", 2, 10), ("web-od", 0, 10)]);
//! let cluster = MemoryCluster::default();
//! cluster.sync_nodes(&cloud);
//! let config = Config {
//!     groups: vec![GroupPair { spot: "web-spot".into(), on_demand: "web-od".into() }],
//!     ..Config::default()
//! };
//! let clock = AutoClock::default();
//! let notice = Notice {
//!     kind: NoticeKind::Rebalance,
//!     instance_id: "i-web-spot-0".into(),
//!     notice_time: spotguard_core::ports::Clock::now(&clock),
//! };
//! let engine = Engine::new(config, &cloud, &cluster, clock, MemoryLedgerStore::default(), LocalScaleLock::default());
//! let outcome = futures::executor::block_on(engine.handle_rebalance(&notice)).unwrap();
//! // A new spot instance stood in, the at-risk node was drained and its instance terminated
//! // with the group's desired capacity lowered again: the pre-scale is paid back.
//! assert!(matches!(
//!     outcome,
//!     RebalanceOutcome::Handled { replacement: Replacement::Spot { .. }, drain: Some(_), paid_back: true, .. }
//! ));
//! let spot = cloud.group("web-spot");
//! assert_eq!(spot.desired, 2);
//! assert!(!spot.holds("i-web-spot-0"));
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::config::DrainOptions;
use crate::ledger::Ledger;
use crate::model::*;
use crate::ports::*;
use crate::view::ClusterView;

/// Returns `Pending` once after waking itself, so concurrent futures interleave there.
pub async fn yield_now() {
    let mut yielded = false;
    futures::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// The time the in-memory cloud and [`AutoClock`] start at: 2027-01-15T08:00:00Z.
pub fn start_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[derive(Debug)]
/// What [`MemoryCloud`] holds; tests reach in through [`MemoryCloud::st`] to set faults.
pub struct CloudState {
    /// The groups by name.
    pub groups: BTreeMap<String, Group>,
    /// Every scaling activity so far, oldest first.
    pub activities: Vec<Activity>,
    /// The last instance or activity number handed out.
    pub next: u32,
    /// Spot launches fail (InsufficientInstanceCapacity) while true.
    pub spot_outage: bool,
    /// Spot launches neither succeed nor fail (no activity) while true.
    pub spot_silent: bool,
    /// The next call of this operation fails with this error.
    pub fail_next: BTreeMap<&'static str, CloudError>,
    /// The next N calls of this operation fail with this error (a burst).
    pub fail_times: BTreeMap<&'static str, (u32, CloudError)>,
    /// Every describe stalls this many polls before answering.
    pub describe_stall: u32,
    /// The time activities are stamped with ([`MemoryCloud::set_now`]).
    pub now: SystemTime,
    /// Per group: total raised and total lowered desired capacity, over all calls.
    pub deltas: BTreeMap<String, (u32, u32)>,
    /// On-demand instances terminated while a spot group was not healthy (invariant 5).
    pub unsafe_terminations: Vec<String>,
}

/// An Auto Scaling look-alike.
#[derive(Debug)]
pub struct MemoryCloud {
    /// The state; see [`MemoryCloud::st`].
    pub state: Mutex<CloudState>,
    /// Every call, as `describe web-spot,web-od`, `set_desired web-spot 3`, `terminate i-1 decrement=true`, `activities ...`.
    pub calls: Mutex<Vec<String>>,
    /// Yield inside calls so concurrent handlers interleave between read and write.
    pub interleave: bool,
}

fn inst(id: String) -> Instance {
    Instance {
        id,
        lifecycle: LifecycleState::InService,
        health: HealthStatus::Healthy,
    }
}

impl MemoryCloud {
    /// Groups of `(name, desired, max)`, min 0, each with `desired` instances InService and
    /// Healthy. A group whose name contains `spot` is a spot group: its launches fail while
    /// [`CloudState::spot_outage`] is set.
    pub fn new(groups: &[(&str, u32, u32)]) -> Self {
        Self::from_groups(groups.iter().map(|&(name, desired, max)| {
            Group {
                name: name.to_string(),
                min: 0,
                max,
                desired,
                instances: (0..desired)
                    .map(|i| inst(format!("i-{name}-{i}")))
                    .collect(),
                capacity_rebalance: false,
            }
        }))
    }

    /// These groups as they are (same rule for spot groups as [`new`](Self::new)).
    pub fn from_groups(groups: impl IntoIterator<Item = Group>) -> Self {
        let state = CloudState {
            groups: groups.into_iter().map(|g| (g.name.clone(), g)).collect(),
            activities: vec![],
            next: 0,
            spot_outage: false,
            spot_silent: false,
            fail_next: BTreeMap::new(),
            fail_times: BTreeMap::new(),
            describe_stall: 0,
            now: start_time(),
            deltas: BTreeMap::new(),
            unsafe_terminations: vec![],
        };
        Self {
            state: Mutex::new(state),
            calls: Mutex::new(vec![]),
            interleave: false,
        }
    }

    /// Mutating calls so far (`set_desired` and `terminate`).
    pub fn writes(&self) -> usize {
        lock(&self.calls)
            .iter()
            .filter(|c| c.starts_with("set_desired ") || c.starts_with("terminate "))
            .count()
    }

    /// The state, locked.
    pub fn st(&self) -> std::sync::MutexGuard<'_, CloudState> {
        self.state.lock().unwrap()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// Forgets the calls made so far.
    pub fn clear_calls(&self) {
        self.calls.lock().unwrap().clear();
    }

    /// The group as it is now. Panics if there is none of that name.
    pub fn group(&self, name: &str) -> Group {
        self.st().groups[name].clone()
    }

    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn fail(&self, op: &'static str) -> Result<(), CloudError> {
        let mut st = self.st();
        if let Some((left, e)) = st.fail_times.get_mut(op) {
            let e = e.clone();
            *left -= 1;
            if *left == 0 {
                st.fail_times.remove(op);
            }
            return Err(e);
        }
        match st.fail_next.remove(op) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stalls `describe_groups` for this many polls (a slow API): time passes meanwhile.
    pub fn stall_describes(&self, polls: u32) {
        self.st().describe_stall = polls;
    }

    /// Brings the group's instances to its desired capacity, as an ASG does.
    fn reconcile(st: &mut CloudState, name: &str) {
        let spot = name.contains("spot");
        let g = st.groups.get(name).unwrap();
        let live = g.instances.len() as u32;
        if g.desired < live {
            let g = st.groups.get_mut(name).unwrap();
            let excess = (live - g.desired) as usize;
            let keep = g.instances.len() - excess;
            g.instances.truncate(keep);
            return;
        }
        let missing = g.desired - live;
        for _ in 0..missing {
            if spot && st.spot_outage {
                st.next += 1;
                st.activities.push(Activity {
                    id: format!("act-{}", st.next),
                    group: name.into(),
                    status: ActivityStatus::Failed,
                    start: st.now,
                    end: Some(st.now),
                    description: "Launching a new EC2 instance. Status Reason: ...".into(),
                    status_message: Some(
                        "We currently do not have sufficient spot capacity (InsufficientInstanceCapacity)".into(),
                    ),
                });
            } else if spot && st.spot_silent {
                break;
            } else {
                st.next += 1;
                let id = format!("i-{name}-n{}", st.next);
                st.groups.get_mut(name).unwrap().instances.push(inst(id));
                st.activities.push(Activity {
                    id: format!("act-{}", st.next),
                    group: name.into(),
                    status: ActivityStatus::Successful,
                    start: st.now,
                    end: Some(st.now),
                    description: "Launching a new EC2 instance".into(),
                    status_message: None,
                });
            }
        }
    }

    /// Re-runs the ASG loop for every group (after an outage ends).
    pub fn reconcile_all(&self) {
        let mut st = self.st();
        let names: Vec<String> = st.groups.keys().cloned().collect();
        for n in names {
            Self::reconcile(&mut st, &n);
        }
    }

    /// Stamps activities from now on with `now`.
    pub fn set_now(&self, now: SystemTime) {
        self.st().now = now;
    }
}

#[async_trait]
impl Cloud for MemoryCloud {
    async fn describe_groups(&self, names: &[String]) -> Result<Vec<Group>, CloudError> {
        self.log(format!("describe {}", names.join(",")));
        self.fail("describe")?;
        let stall = self.st().describe_stall;
        for _ in 0..stall {
            yield_now().await;
        }
        if self.interleave {
            yield_now().await;
        }
        let st = self.st();
        let mut out = vec![];
        for n in names {
            match st.groups.get(n) {
                Some(g) => out.push(g.clone()),
                None => return Err(CloudError::UnknownGroup { group: n.clone() }),
            }
        }
        Ok(out)
    }

    async fn set_desired_capacity(&self, group: &str, desired: u32) -> Result<(), CloudError> {
        self.log(format!("set_desired {group} {desired}"));
        self.fail("set_desired")?;
        if self.interleave {
            yield_now().await;
        }
        let mut st = self.st();
        let g = st
            .groups
            .get_mut(group)
            .ok_or_else(|| CloudError::UnknownGroup {
                group: group.into(),
            })?;
        g.bounds().check(group, desired)?;
        let old = g.desired;
        g.desired = desired;
        let d = st.deltas.entry(group.to_string()).or_default();
        if desired > old {
            d.0 += desired - old;
        } else {
            d.1 += old - desired;
        }
        Self::reconcile(&mut st, group);
        Ok(())
    }

    async fn terminate_instance(&self, instance: &str, decrement: bool) -> Result<(), CloudError> {
        self.log(format!("terminate {instance} decrement={decrement}"));
        self.fail("terminate")?;
        if self.interleave {
            yield_now().await;
        }
        let mut st = self.st();
        let Some(name) = st
            .groups
            .values()
            .find(|g| g.holds(instance))
            .map(|g| g.name.clone())
        else {
            return Err(CloudError::UnknownInstance {
                instance: instance.into(),
            });
        };
        let g = st.groups.get_mut(&name).unwrap();
        let lowered = if decrement {
            Some(g.bounds().decrement(&name, g.desired)?)
        } else {
            None
        };
        g.instances.retain(|i| i.id != instance);
        if let Some(lowered) = lowered {
            g.desired = lowered;
        }
        if decrement {
            st.deltas.entry(name.clone()).or_default().1 += 1;
        }
        if !name.contains("spot") {
            let unhealthy: Vec<String> = st
                .groups
                .values()
                .filter(|g| g.name.contains("spot") && g.serving_count() != g.desired)
                .map(|g| g.name.clone())
                .collect();
            if !unhealthy.is_empty() {
                st.unsafe_terminations.push(format!(
                    "{instance} while {} unhealthy",
                    unhealthy.join(",")
                ));
            }
        }
        Self::reconcile(&mut st, &name);
        Ok(())
    }

    async fn scaling_activities(
        &self,
        groups: &[String],
        since: SystemTime,
    ) -> Result<Vec<Activity>, CloudError> {
        self.log(format!("activities {}", groups.join(",")));
        self.fail("activities")?;
        if self.interleave {
            yield_now().await;
        }
        Ok(self
            .st()
            .activities
            .iter()
            .filter(|a| groups.contains(&a.group) && a.last_change() >= since)
            .cloned()
            .collect())
    }
}

/// A cluster look-alike whose nodes follow the cloud's instances.
#[derive(Debug, Default)]
pub struct MemoryCluster {
    /// The nodes and pods; change them through [`edit`](Self::edit).
    snap: Mutex<ClusterSnapshot>,
    /// The view [`Cluster::snapshot`] hands out until the next change, shared as a
    /// watch-backed cache shares it.
    view: Mutex<Option<Arc<ClusterView>>>,
    /// Every write, as `taint node-1`, `untaint node-1`, `unschedulable node-1 true`, `annotate node-1 true`, `drain node-1`.
    pub calls: Mutex<Vec<String>>,
    /// Drains report the pods as blocked by this PDB while set.
    pub drain_blocked: Mutex<Option<String>>,
    /// The next drain fails with this error.
    pub fail_next_drain: Mutex<Option<ClusterError>>,
    /// Pods whose node vanished under them without a drain (invariant 5).
    pub lost_pods: Mutex<u32>,
    /// Yield at the start of every call, so concurrent flows interleave there.
    pub interleave: bool,
    /// The next N snapshots fail with an API error.
    pub failing_snapshots: Mutex<u32>,
}

impl MemoryCluster {
    /// A cluster of these nodes, pods and PDBs (no node follows a cloud until
    /// [`sync_nodes`](Self::sync_nodes)).
    pub fn new(snapshot: ClusterSnapshot) -> Self {
        Self {
            snap: Mutex::new(snapshot),
            ..Self::default()
        }
    }

    /// The nodes, pods and PDBs, to change: the next snapshot shows the change.
    pub fn edit(&self) -> MutexGuard<'_, ClusterSnapshot> {
        let snap = lock(&self.snap);
        *lock(&self.view) = None;
        snap
    }

    /// Mutating calls so far (every call but snapshots).
    pub fn writes(&self) -> usize {
        lock(&self.calls).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A Ready node of 4 CPUs and 16 GiB named `node-<instance>` for the instance.
pub fn node_for(instance: &str, capacity_type: CapacityType) -> Node {
    Node {
        name: format!("node-{instance}"),
        instance_id: Some(instance.to_string()),
        capacity_type,
        ready: true,
        unschedulable: false,
        taints: vec![],
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        allocatable: Resources::new(4000, 16 << 30, 110),
    }
}

impl MemoryCluster {
    /// Every write so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    /// Registers a Ready node for every instance of the cloud and drops nodes whose instance
    /// is gone, as kubelets and the node lifecycle controller do.
    pub fn sync_nodes(&self, cloud: &MemoryCloud) {
        let live: Vec<(String, CapacityType)> = cloud
            .st()
            .groups
            .values()
            .flat_map(|g| {
                let ct = if g.name.contains("spot") {
                    CapacityType::Spot
                } else {
                    CapacityType::OnDemand
                };
                g.instances.iter().map(move |i| (i.id.clone(), ct))
            })
            .collect();
        self.sync_instances(live);
    }

    /// Makes the nodes follow these live instances (id and capacity type), from any cloud: a
    /// Ready node ([`node_for`]) for each instance that has none, and the nodes of instances no
    /// longer live dropped, their pods left without a node and counted in `lost_pods`.
    pub fn sync_instances(&self, live: Vec<(String, CapacityType)>) {
        let mut snap = self.edit();
        snap.nodes.retain(|n| {
            live.iter()
                .any(|(id, _)| n.instance_id.as_deref() == Some(id))
        });
        let gone: Vec<String> = snap
            .pods
            .iter()
            .filter_map(|p| p.node.clone())
            .filter(|n| !snap.nodes.iter().any(|node| &node.name == n))
            .collect();
        for p in snap.pods.iter_mut() {
            if p.node.as_ref().is_some_and(|n| gone.contains(n)) {
                p.node = None;
                *self.lost_pods.lock().unwrap() += 1;
            }
        }
        for (id, ct) in live {
            if snap.node_for_instance(&id).is_none() {
                snap.nodes.push(node_for(&id, ct));
            }
        }
    }

    /// The next `n` snapshots fail with an API error.
    pub fn fail_snapshots(&self, n: u32) {
        *self.failing_snapshots.lock().unwrap() = n;
    }

    /// The node of that name. Panics if there is none.
    pub fn node(&self, name: &str) -> Node {
        self.edit().node(name).cloned().unwrap()
    }

    /// Adds a pod of app `web` requesting `cpu` millicores and 256 MiB to the node.
    pub fn add_pod(&self, name: &str, node: &str, cpu: u64) {
        self.edit().pods.push(Pod {
            namespace: "default".into(),
            name: name.into(),
            node: Some(node.into()),
            owner: OwnerKind::ReplicaSet,
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
            requests: Resources::new(cpu, 256 << 20, 1),
            node_selector: BTreeMap::new(),
            required_affinity: vec![],
            tolerations: vec![],
            mirror: false,
            local_storage: false,
            terminal: false,
        });
    }

    fn with_node<R>(&self, node: &str, f: impl FnOnce(&mut Node) -> R) -> Result<R, ClusterError> {
        let mut snap = self.edit();
        let n = snap
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .ok_or_else(|| ClusterError::UnknownNode { node: node.into() })?;
        Ok(f(n))
    }
}

#[async_trait]
impl Cluster for MemoryCluster {
    async fn snapshot(&self) -> Result<Arc<ClusterView>, ClusterError> {
        if self.interleave {
            yield_now().await;
        }
        {
            let mut failing = self.failing_snapshots.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                return Err(ClusterError::Api {
                    operation: "list nodes".into(),
                    target: "nodes".into(),
                    message: "injected".into(),
                    source: None,
                });
            }
        }
        let snap = lock(&self.snap);
        let mut view = lock(&self.view);
        let view = view.get_or_insert_with(|| Arc::new(ClusterView::new(snap.clone())));
        Ok(Arc::clone(view))
    }

    async fn taint(&self, node: &str, taint: &Taint) -> Result<(), ClusterError> {
        if self.interleave {
            yield_now().await;
        }
        self.log(format!("taint {node}"));
        self.with_node(node, |n| {
            if !n.taints.iter().any(|t| t.key == taint.key) {
                n.taints.push(taint.clone());
            }
        })
    }

    async fn untaint(&self, node: &str, key: &str) -> Result<(), ClusterError> {
        if self.interleave {
            yield_now().await;
        }
        self.log(format!("untaint {node}"));
        self.with_node(node, |n| n.taints.retain(|t| t.key != key))
    }

    async fn set_unschedulable(&self, node: &str, unschedulable: bool) -> Result<(), ClusterError> {
        if self.interleave {
            yield_now().await;
        }
        self.log(format!("unschedulable {node} {unschedulable}"));
        self.with_node(node, |n| n.unschedulable = unschedulable)
    }

    async fn annotate(
        &self,
        node: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<(), ClusterError> {
        self.log(format!("annotate {node} {}", value.is_some()));
        self.with_node(node, |n| match value {
            Some(v) => {
                n.annotations.insert(key.into(), v);
            }
            None => {
                n.annotations.remove(key);
            }
        })
    }

    async fn drain(
        &self,
        node: &str,
        _options: &DrainOptions,
    ) -> Result<DrainReport, ClusterError> {
        self.log(format!("drain {node}"));
        if self.interleave {
            yield_now().await;
        }
        if let Some(e) = self.fail_next_drain.lock().unwrap().take() {
            return Err(e);
        }
        let blocked = self.drain_blocked.lock().unwrap().clone();
        let mut snap = self.edit();
        let mut report = DrainReport {
            node: node.into(),
            pods: vec![],
        };
        let target = snap
            .nodes
            .iter()
            .find(|n| n.name != node && n.is_schedulable() && n.taints.is_empty())
            .map(|n| n.name.clone());
        for p in snap
            .pods
            .iter_mut()
            .filter(|p| p.node.as_deref() == Some(node))
        {
            let outcome = if blocked.is_some() {
                PodOutcome::Blocked {
                    pdb: blocked.clone(),
                }
            } else {
                p.node = target.clone();
                PodOutcome::Evicted
            };
            report.pods.push(PodReport {
                pod: p.key(),
                outcome,
            });
        }
        Ok(report)
    }
}

/// A virtual clock. A sleep ends when the clock reaches its wake time; the clock jumps to
/// the earliest wake time once that sleeper has found nothing else happening for a few polls
/// in a row (no other sleep began or ended meanwhile). So concurrent sleeps overlap as they
/// do in real time, the shorter one ending first, and a lone sleep passes at once.
#[derive(Debug)]
pub struct AutoClock {
    state: Mutex<ClockState>,
}

#[derive(Debug)]
struct ClockState {
    now: SystemTime,
    /// Wake times of the sleeps under way, by sleep id.
    sleepers: BTreeMap<u64, SystemTime>,
    next_id: u64,
    /// Bumped whenever a sleep begins or ends, or time moves.
    epoch: u64,
}

/// Polls the earliest sleeper waits, with nothing else happening, before time jumps to it.
const IDLE_POLLS: u32 = 4;

impl Default for AutoClock {
    fn default() -> Self {
        Self {
            state: Mutex::new(ClockState {
                now: start_time(),
                sleepers: BTreeMap::new(),
                next_id: 0,
                epoch: 0,
            }),
        }
    }
}

impl AutoClock {
    fn st(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut st = self.st();
        st.now += d;
        st.epoch += 1;
    }
}

/// Ends a sleep's registration however the sleep ends (completed or dropped).
struct Sleeper<'a> {
    clock: &'a AutoClock,
    id: u64,
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        let mut st = self.clock.st();
        st.sleepers.remove(&self.id);
        st.epoch += 1;
    }
}

#[async_trait]
impl Clock for AutoClock {
    fn now(&self) -> SystemTime {
        self.st().now
    }

    async fn sleep(&self, d: Duration) {
        let (id, wake) = {
            let mut st = self.st();
            let id = st.next_id;
            st.next_id += 1;
            let wake = st.now + d;
            st.sleepers.insert(id, wake);
            st.epoch += 1;
            (id, wake)
        };
        let _registered = Sleeper { clock: self, id };
        let mut seen = None;
        let mut idle = 0;
        futures::future::poll_fn(|cx| {
            let mut st = self.st();
            if st.now >= wake {
                return Poll::Ready(());
            }
            let earliest = st.sleepers.values().min() == Some(&wake);
            if earliest && seen == Some(st.epoch) {
                idle += 1;
                if idle >= IDLE_POLLS {
                    st.now = wake;
                    st.epoch += 1;
                    return Poll::Ready(());
                }
            } else {
                idle = 0;
                seen = Some(st.epoch);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }
}

/// A versioned ledger in memory, with compare-and-swap saves as a ConfigMap's resourceVersion
/// gives them; clones share it, so an engine restarted over a clone recovers what the last one
/// wrote.
///
/// ```
/// use spotguard_core::ledger::Ledger;
/// use spotguard_core::memory::MemoryLedgerStore;
/// use spotguard_core::ports::{LedgerStore, StoreError};
/// futures::executor::block_on(async {
///     let store = MemoryLedgerStore::default();
///     assert_eq!(store.load().await.unwrap().version, None);
///     let v1 = store.save(&Ledger::default(), None).await.unwrap();
///     // A save based on a stale version is refused.
///     assert!(matches!(store.save(&Ledger::default(), None).await, Err(StoreError::Conflict { .. })));
///     store.save(&Ledger::default(), Some(v1)).await.unwrap();
///     assert_eq!(store.saves(), 2);
/// });
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryLedgerStore {
    state: Arc<Mutex<StoreState>>,
    interleave: bool,
}

#[derive(Debug, Default)]
struct StoreState {
    ledger: Ledger,
    /// 0 while nothing was ever saved.
    version: u64,
    conflicts: u32,
    failures: u32,
    saves: u64,
}

impl MemoryLedgerStore {
    /// A store holding `ledger`, as if saved once.
    pub fn with_ledger(ledger: Ledger) -> Self {
        let store = Self::default();
        store.replace(ledger);
        store
    }

    /// The same store, yielding before every load and save so concurrent flows interleave
    /// there.
    pub fn interleaved(mut self) -> Self {
        self.interleave = true;
        self
    }

    fn lock(&self) -> MutexGuard<'_, StoreState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ledger as stored now.
    pub fn ledger(&self) -> Ledger {
        self.lock().ledger.clone()
    }

    /// Stores `ledger` as another writer would: the version moves on, so a save based on an
    /// earlier load conflicts.
    pub fn replace(&self, ledger: Ledger) {
        let mut s = self.lock();
        s.ledger = ledger;
        s.version += 1;
    }

    /// The next `n` saves conflict, as if someone else saved just before each.
    pub fn inject_conflicts(&self, n: u32) {
        self.lock().conflicts = n;
    }

    /// The next `n` saves fail with [`StoreError::Io`].
    pub fn fail_saves(&self, n: u32) {
        self.lock().failures = n;
    }

    /// Saves that succeeded so far.
    pub fn saves(&self) -> u64 {
        self.lock().saves
    }

    fn version(v: u64) -> Option<String> {
        (v > 0).then(|| v.to_string())
    }
}

#[async_trait]
impl LedgerStore for MemoryLedgerStore {
    async fn load(&self) -> Result<Versioned<Ledger>, StoreError> {
        if self.interleave {
            yield_now().await;
        }
        let s = self.lock();
        Ok(Versioned {
            value: s.ledger.clone(),
            version: Self::version(s.version),
        })
    }

    async fn save(&self, ledger: &Ledger, expected: Option<String>) -> Result<String, StoreError> {
        if self.interleave {
            yield_now().await;
        }
        let mut s = self.lock();
        if s.failures > 0 {
            s.failures -= 1;
            return Err(StoreError::Io {
                location: "memory".into(),
                message: "injected failure".into(),
                source: None,
            });
        }
        if s.conflicts > 0 {
            s.conflicts -= 1;
            s.version += 1; // someone else saved
            return Err(StoreError::Conflict { expected });
        }
        if Self::version(s.version) != expected {
            return Err(StoreError::Conflict { expected });
        }
        s.ledger = ledger.clone();
        s.version += 1;
        s.saves += 1;
        Ok(s.version.to_string())
    }
}
