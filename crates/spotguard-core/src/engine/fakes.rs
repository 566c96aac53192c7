//! In-memory ports for the engine's tests: a cloud that behaves like Auto Scaling (launches
//! on raise, fails spot launches during an outage, replaces on terminate without decrement),
//! a cluster that honours PDBs on drain, a versioned ledger store and an instant clock. Each
//! records its mutating calls so tests can assert which call, in which order, with what.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::config::{Config, DrainOptions, GroupPair};
use crate::ledger::Ledger;
use crate::model::*;
use crate::ports::*;
use crate::view::ClusterView;

/// Returns Pending once after waking itself, so concurrent futures interleave.
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

pub fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[derive(Debug)]
pub struct CloudState {
    pub groups: BTreeMap<String, Group>,
    pub activities: Vec<Activity>,
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
    pub now: SystemTime,
    /// Per group: total raised and total lowered desired capacity, over all calls.
    pub deltas: BTreeMap<String, (u32, u32)>,
    /// On-demand instances terminated while a spot group was not healthy (invariant 5).
    pub unsafe_terminations: Vec<String>,
}

/// An Auto Scaling look-alike.
#[derive(Debug)]
pub struct FakeCloud {
    pub state: Mutex<CloudState>,
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

impl FakeCloud {
    pub fn new(groups: &[(&str, u32, u32)]) -> Self {
        let mut state = CloudState {
            groups: BTreeMap::new(),
            activities: vec![],
            next: 0,
            spot_outage: false,
            spot_silent: false,
            fail_next: BTreeMap::new(),
            fail_times: BTreeMap::new(),
            describe_stall: 0,
            now: t0(),
            deltas: BTreeMap::new(),
            unsafe_terminations: vec![],
        };
        for (name, desired, max) in groups {
            let instances = (0..*desired)
                .map(|i| inst(format!("i-{name}-{i}")))
                .collect();
            state.groups.insert(
                name.to_string(),
                Group {
                    name: name.to_string(),
                    min: 0,
                    max: *max,
                    desired: *desired,
                    instances,
                    capacity_rebalance: false,
                },
            );
        }
        Self {
            state: Mutex::new(state),
            calls: Mutex::new(vec![]),
            interleave: false,
        }
    }

    pub fn st(&self) -> std::sync::MutexGuard<'_, CloudState> {
        self.state.lock().unwrap()
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    pub fn clear_calls(&self) {
        self.calls.lock().unwrap().clear();
    }

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

    pub fn set_now(&self, now: SystemTime) {
        self.st().now = now;
    }
}

#[async_trait]
impl Cloud for FakeCloud {
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
        if desired > g.max {
            return Err(CloudError::AboveMax {
                group: group.into(),
                desired,
                max: g.max,
            });
        }
        if desired < g.min {
            return Err(CloudError::BelowMin {
                group: group.into(),
                desired,
                min: g.min,
            });
        }
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
        if decrement && g.desired <= g.min {
            return Err(CloudError::BelowMin {
                group: name,
                desired: g.desired.saturating_sub(1),
                min: g.min,
            });
        }
        g.instances.retain(|i| i.id != instance);
        if decrement {
            g.desired -= 1;
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
pub struct FakeCluster {
    pub snap: Mutex<ClusterSnapshot>,
    pub calls: Mutex<Vec<String>>,
    /// Drains report the pods as blocked by this PDB while set.
    pub drain_blocked: Mutex<Option<String>>,
    pub fail_next_drain: Mutex<Option<ClusterError>>,
    /// Pods whose node vanished under them without a drain (invariant 5).
    pub lost_pods: Mutex<u32>,
    /// Yield at the start of every call, so concurrent flows interleave there.
    pub interleave: bool,
    /// The next N snapshots fail with an API error.
    pub failing_snapshots: Mutex<u32>,
}

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

impl FakeCluster {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    /// Registers a Ready node for every instance of the cloud and drops nodes whose instance
    /// is gone, as kubelets and the node lifecycle controller do.
    pub fn sync_nodes(&self, cloud: &FakeCloud) {
        let st = cloud.st();
        let mut snap = self.snap.lock().unwrap();
        let live: Vec<(String, CapacityType)> = st
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

    pub fn fail_snapshots(&self, n: u32) {
        *self.failing_snapshots.lock().unwrap() = n;
    }

    pub fn node(&self, name: &str) -> Node {
        self.snap.lock().unwrap().node(name).cloned().unwrap()
    }

    pub fn add_pod(&self, name: &str, node: &str, cpu: u64) {
        self.snap.lock().unwrap().pods.push(Pod {
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
        let mut snap = self.snap.lock().unwrap();
        let n = snap
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .ok_or_else(|| ClusterError::UnknownNode { node: node.into() })?;
        Ok(f(n))
    }
}

#[async_trait]
impl Cluster for FakeCluster {
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
                });
            }
        }
        Ok(Arc::new(ClusterView::new(
            self.snap.lock().unwrap().clone(),
        )))
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
        let mut snap = self.snap.lock().unwrap();
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

/// A versioned in-memory ledger store.
#[derive(Debug, Default)]
pub struct MemStore {
    pub inner: Mutex<(Ledger, u64)>,
    /// The next N saves report a conflict (someone else wrote).
    pub conflicts: Mutex<u32>,
    pub fail_saves: Mutex<u32>,
    /// Yield before every load and save, so concurrent flows interleave there.
    pub interleave: bool,
}

impl MemStore {
    pub fn ledger(&self) -> Ledger {
        self.inner.lock().unwrap().0.clone()
    }
}

#[async_trait]
impl LedgerStore for MemStore {
    async fn load(&self) -> Result<Versioned<Ledger>, StoreError> {
        if self.interleave {
            yield_now().await;
        }
        let g = self.inner.lock().unwrap();
        Ok(Versioned {
            value: g.0.clone(),
            version: (g.1 > 0).then(|| g.1.to_string()),
        })
    }

    async fn save(&self, ledger: &Ledger, expected: Option<String>) -> Result<String, StoreError> {
        if self.interleave {
            yield_now().await;
        }
        {
            let mut f = self.fail_saves.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err(StoreError::Io {
                    location: "memory".into(),
                    message: "injected failure".into(),
                });
            }
        }
        let mut g = self.inner.lock().unwrap();
        {
            let mut c = self.conflicts.lock().unwrap();
            if *c > 0 {
                *c -= 1;
                g.1 += 1; // someone else saved
                return Err(StoreError::Conflict { expected });
            }
        }
        let current = (g.1 > 0).then(|| g.1.to_string());
        if current != expected {
            return Err(StoreError::Conflict { expected });
        }
        g.0 = ledger.clone();
        g.1 += 1;
        Ok(g.1.to_string())
    }
}

/// A virtual clock. A sleep ends when the clock reaches its wake time; the clock jumps to
/// the earliest wake time once that sleeper has found nothing else happening for a few polls
/// in a row (no other sleep began or ended meanwhile). So concurrent sleeps overlap as they
/// do in real time, the shorter one ending first, and a lone sleep passes at once.
#[derive(Debug)]
pub struct TestClock {
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

impl Default for TestClock {
    fn default() -> Self {
        Self {
            state: Mutex::new(ClockState {
                now: t0(),
                sleepers: BTreeMap::new(),
                next_id: 0,
                epoch: 0,
            }),
        }
    }
}

impl TestClock {
    fn st(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn advance(&self, d: Duration) {
        let mut st = self.st();
        st.now += d;
        st.epoch += 1;
    }
}

/// Ends a sleep's registration however the sleep ends (completed or dropped).
struct Sleeper<'a> {
    clock: &'a TestClock,
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
impl Clock for TestClock {
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

/// A lock that does not lock: the negative control for the race test.
#[derive(Debug, Default)]
pub struct NoLock;

#[async_trait]
impl ScaleLock for NoLock {
    async fn acquire(&self, _: &str) -> Result<(), LockError> {
        Ok(())
    }
    async fn release(&self, _: &str) -> Result<(), LockError> {
        Ok(())
    }
    fn release_abandoned(&self, _: &str) {}
}

pub fn test_config() -> Config {
    let mut c = Config {
        groups: vec![GroupPair {
            spot: "web-spot".into(),
            on_demand: "web-od".into(),
        }],
        ..Config::default()
    };
    c.capacity_buffer.cpu_percent = 0;
    c.capacity_buffer.memory_percent = 0;
    c
}
