//! The simulated Kubernetes cluster.
//!
//! - A node registers when its instance is `InService` and is Ready after `node_ready_delay`;
//!   DaemonSet pods land on it when it registers.
//! - Deployment pods that lose their node (evicted, or killed with an interrupted instance)
//!   are recreated at once and wait, pending, for a node that fits. A pod fits where it fits
//!   for the safety predicate: the node is Ready and not cordoned, the pod tolerates its
//!   `NoSchedule`/`NoExecute` taints, its node selector and affinity admit the node's labels,
//!   and the node has room for its requests. Among the nodes that fit, the least allocated
//!   wins, as with kube-scheduler's default scoring.
//! - A pod counts for PodDisruptionBudgets once it has been running for `pod_start_delay`.
//!   An eviction the budget cannot afford is refused (HTTP 429 on a real API server) and the
//!   drain retries it every `eviction_retry`; a terminated node takes its pods regardless,
//!   and every pod so lost below a budget's minimum counts as a PDB violation.
//!
//! [`SimCluster`] is the [`Cluster`] port over this state.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::clock::SimClock;
use super::report::Source;
use super::scenario::{Capacity, ClusterSettings, Scenario, WorkloadKind};
use super::world::{Shared, World};
use spotguard_core::config::DrainOptions;
use spotguard_core::model::{
    CapacityType, LabelSelector, Node, OwnerKind, Pdb, Pod, Resources, Taint, TaintEffect,
    Toleration, TolerationOperator,
};
use spotguard_core::ports::{
    Clock, Cluster, ClusterError, DrainReport, PodOutcome, PodReport, SkipReason,
};
use spotguard_core::view::{ClusterView, ClusterViewBuilder};

const MIB: u64 = 1 << 20;

#[derive(Debug)]
struct SimNode {
    node: Node,
    used: Resources,
    /// Deployment pods bound here (slots of `ClusterState::pods`).
    pods: BTreeSet<usize>,
    /// DaemonSet pods.
    daemon_pods: Vec<Pod>,
}

#[derive(Debug)]
struct SimPod {
    pod: Pod,
    workload: usize,
    /// When it became Ready (bound and started); `None` while pending.
    ready_at: Option<SystemTime>,
}

#[derive(Debug)]
struct WorkloadState {
    template: Pod,
    kind: WorkloadKind,
    pods: Vec<usize>,
    /// Budgets covering its pods.
    pdbs: Vec<usize>,
}

#[derive(Debug)]
struct PdbState {
    pdb: Pdb,
    min_available: u32,
    workloads: Vec<usize>,
}

/// Nodes, pods and budgets.
#[derive(Debug)]
pub(crate) struct ClusterState {
    pub settings: ClusterSettings,
    nodes: BTreeMap<u64, SimNode>,
    by_name: HashMap<String, u64>,
    next_node: u64,
    pods: Vec<SimPod>,
    pending: BTreeSet<usize>,
    workloads: Vec<WorkloadState>,
    pdbs: Vec<PdbState>,
    pod_seq: u64,
    /// Something changed that may let a pending pod be scheduled.
    dirty: bool,
    /// Successful evictions.
    pub evictions: u64,
    /// Pods lost with their node before being moved.
    pub pods_lost: u64,
    /// Pods lost below a PDB's minimum.
    pub pdb_violations: u64,
    /// Registered nodes: spot, on-demand.
    node_counts: [u32; 2],
}

fn capacity_label(c: Capacity) -> &'static str {
    match c {
        Capacity::Spot => "SPOT",
        Capacity::OnDemand => "ON_DEMAND",
    }
}

impl ClusterState {
    /// Workloads and budgets from the scenario; no nodes, every Deployment pod pending.
    pub fn new(scenario: &Scenario) -> Self {
        let mut state = Self {
            settings: scenario.cluster.clone(),
            nodes: BTreeMap::new(),
            by_name: HashMap::new(),
            next_node: 0,
            pods: Vec::new(),
            pending: BTreeSet::new(),
            workloads: Vec::new(),
            pdbs: Vec::new(),
            pod_seq: 0,
            dirty: true,
            evictions: 0,
            pods_lost: 0,
            pdb_violations: 0,
            node_counts: [0, 0],
        };
        for w in &scenario.workloads {
            let mut labels = w.labels.clone();
            labels.insert("app".into(), w.name.clone());
            let daemon = w.kind == WorkloadKind::Daemonset;
            let template = Pod {
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                node: None,
                owner: if daemon {
                    OwnerKind::DaemonSet
                } else {
                    OwnerKind::ReplicaSet
                },
                labels,
                requests: Resources::new(w.cpu_millis, w.memory_mib * MIB, 1),
                node_selector: w.node_selector.clone(),
                required_affinity: Vec::new(),
                tolerations: if daemon {
                    vec![Toleration {
                        key: None,
                        operator: TolerationOperator::Exists,
                        value: String::new(),
                        effect: None,
                    }]
                } else {
                    Vec::new()
                },
                mirror: false,
                local_storage: false,
                terminal: false,
            };
            state.workloads.push(WorkloadState {
                template,
                kind: w.kind,
                pods: Vec::new(),
                pdbs: Vec::new(),
            });
        }
        for (i, p) in scenario.pdbs.iter().enumerate() {
            let selector = LabelSelector {
                match_labels: p.match_labels(),
                match_expressions: Vec::new(),
            };
            let pdb = Pdb {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                selector,
                disruptions_allowed: 0,
            };
            let workloads: Vec<usize> = state
                .workloads
                .iter()
                .enumerate()
                .filter(|(_, w)| w.kind == WorkloadKind::Deployment && pdb.covers(&w.template))
                .map(|(j, _)| j)
                .collect();
            for &w in &workloads {
                state.workloads[w].pdbs.push(i);
            }
            state.pdbs.push(PdbState {
                pdb,
                min_available: p.min_available,
                workloads,
            });
        }
        for (w, spec) in scenario.workloads.iter().enumerate() {
            for _ in 0..spec.replicas.unwrap_or(0) {
                let pod = state.new_pod(w);
                let slot = state.pods.len();
                state.pods.push(SimPod {
                    pod,
                    workload: w,
                    ready_at: None,
                });
                state.workloads[w].pods.push(slot);
                state.pending.insert(slot);
            }
        }
        state
    }

    fn new_pod(&mut self, workload: usize) -> Pod {
        self.pod_seq += 1;
        let mut pod = self.workloads[workload].template.clone();
        pod.name = format!("{}-{}", pod.name, self.pod_seq);
        pod
    }

    /// Pods without a node.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Registered nodes: spot, on-demand.
    pub fn node_counts(&self) -> [u32; 2] {
        self.node_counts
    }

    /// Marks every bound pod Ready now (the scenario's starting state).
    pub fn mark_all_ready(&mut self, now: SystemTime) {
        for p in &mut self.pods {
            if p.pod.node.is_some() {
                p.ready_at = Some(now);
            }
        }
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut SimNode, ClusterError> {
        self.by_name
            .get(name)
            .and_then(|k| self.nodes.get_mut(k))
            .ok_or_else(|| ClusterError::UnknownNode {
                node: name.to_string(),
            })
    }

    fn has_node(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn is_healthy(&self, slot: usize, now: SystemTime) -> bool {
        let p = &self.pods[slot];
        p.pod.node.is_some() && p.ready_at.is_some_and(|r| r <= now)
    }

    fn healthy_of(&self, pdb: usize, now: SystemTime) -> u32 {
        self.pdbs[pdb]
            .workloads
            .iter()
            .flat_map(|w| &self.workloads[*w].pods)
            .filter(|s| self.is_healthy(**s, now))
            .count() as u32
    }

    fn unbind(&mut self, slot: usize) {
        let Some(node) = self.pods[slot].pod.node.take() else {
            return;
        };
        if let Some(n) = self.by_name.get(&node).and_then(|k| self.nodes.get_mut(k)) {
            n.used = n.used.saturating_sub(&self.pods[slot].pod.requests);
            n.pods.remove(&slot);
        }
        self.recreate(slot);
    }

    /// The ReplicaSet recreates a pod that lost its node under a new name; it waits, pending,
    /// for a node that fits.
    fn recreate(&mut self, slot: usize) {
        let w = self.pods[slot].workload;
        let fresh = self.new_pod(w);
        self.pods[slot] = SimPod {
            pod: fresh,
            workload: w,
            ready_at: None,
        };
        self.pending.insert(slot);
        self.dirty = true;
    }

    /// Whether the pod fits on the node: the rules of the safety predicate.
    fn fits(node: &SimNode, pod: &Pod) -> bool {
        node.node.is_schedulable()
            && node
                .node
                .allocatable
                .saturating_sub(&node.used)
                .covers(&pod.requests)
            && pod.admits_labels(&node.node.labels)
            && (node
                .node
                .taints
                .iter()
                .all(|t| t.effect == TaintEffect::PreferNoSchedule)
                || pod.tolerates_taints(&node.node.taints))
    }

    /// Free share after placing `req`, in thousandths of CPU plus thousandths of memory.
    fn score(node: &SimNode, req: &Resources) -> u64 {
        let a = &node.node.allocatable;
        let free = a.saturating_sub(&node.used).saturating_sub(req);
        free.cpu_millis * 1000 / a.cpu_millis.max(1)
            + free.memory_bytes * 1000 / a.memory_bytes.max(1)
    }

    /// Binds every pending pod that fits somewhere (least-allocated node first).
    pub fn schedule_pending(&mut self, now: SystemTime) {
        if !self.dirty || self.pending.is_empty() {
            self.dirty = false;
            return;
        }
        self.dirty = false;
        let start = self.settings.pod_start_delay;
        let pending: Vec<usize> = self.pending.iter().copied().collect();
        for slot in pending {
            let pod = &self.pods[slot].pod;
            let best = self
                .nodes
                .iter()
                .filter(|(_, n)| Self::fits(n, pod))
                .max_by_key(|(k, n)| (Self::score(n, &pod.requests), Reverse(**k)))
                .map(|(k, _)| *k);
            let Some(k) = best else { continue };
            let node = self.nodes.get_mut(&k).expect("node just found");
            node.used = node.used.add(&pod.requests);
            node.pods.insert(slot);
            let name = node.node.name.clone();
            let p = &mut self.pods[slot];
            p.pod.node = Some(name);
            p.ready_at = Some(now + start);
            self.pending.remove(&slot);
        }
    }

    /// A consistent copy of nodes, pods and budgets, with each budget's allowance now; pods
    /// come grouped by node, as the simulator keeps them.
    pub fn snapshot(&self, now: SystemTime) -> ClusterView {
        let mut b = ClusterViewBuilder::with_capacity(self.nodes.len(), self.pods.len());
        for n in self.nodes.values() {
            let deployment = n.pods.iter().map(|&slot| self.pods[slot].pod.clone());
            b.node(
                n.node.clone(),
                deployment.chain(n.daemon_pods.iter().cloned()),
            );
        }
        b.pods(
            self.pods
                .iter()
                .filter(|p| p.pod.node.as_ref().is_none_or(|n| !self.has_node(n)))
                .map(|p| p.pod.clone()),
        );
        b.pdbs((0..self.pdbs.len()).map(|i| {
            let mut pdb = self.pdbs[i].pdb.clone();
            pdb.disruptions_allowed = self
                .healthy_of(i, now)
                .saturating_sub(self.pdbs[i].min_available);
            pdb
        }));
        b.build()
    }

    /// Tries to evict one pod through the budgets: `Ok` when evicted, `Err(pdb)` when a
    /// budget refuses.
    fn evict(&mut self, slot: usize, now: SystemTime) -> Result<(), String> {
        let healthy = self.is_healthy(slot, now);
        let w = self.pods[slot].workload;
        for &b in &self.workloads[w].pdbs {
            let have = self.healthy_of(b, now);
            let min = self.pdbs[b].min_available;
            // An unready pod may go as long as the budget is met (IfHealthyBudget).
            let allowed = if healthy { have > min } else { have >= min };
            if !allowed {
                return Err(self.pdbs[b].pdb.key());
            }
        }
        self.unbind(slot);
        self.evictions += 1;
        Ok(())
    }

    /// Removes a node: its DaemonSet pods go, its Deployment pods are lost and recreated,
    /// and each loss below a budget's minimum is a violation. Returns the pods lost.
    fn remove_node(&mut self, name: &str, now: SystemTime) -> Option<(Capacity, u32)> {
        let k = self.by_name.remove(name)?;
        let node = self.nodes.remove(&k)?;
        let capacity = if node.node.capacity_type == CapacityType::Spot {
            Capacity::Spot
        } else {
            Capacity::OnDemand
        };
        self.node_counts[capacity as usize] -= 1;
        let mut lost = 0;
        for slot in node.pods {
            if self.is_healthy(slot, now) {
                let w = self.pods[slot].workload;
                for &b in &self.workloads[w].pdbs {
                    if self.healthy_of(b, now) <= self.pdbs[b].min_available {
                        self.pdb_violations += 1;
                    }
                }
            }
            // The node is gone: the pod's place went with it.
            self.recreate(slot);
            lost += 1;
        }
        self.pods_lost += u64::from(lost);
        self.dirty = true;
        Some((capacity, lost))
    }
}

impl World {
    /// A node registers for an instance that reached InService (not Ready yet).
    pub(crate) fn join_node(
        &mut self,
        name: &str,
        instance: &str,
        group: &str,
        capacity: Capacity,
        instance_type: usize,
        _now: SystemTime,
    ) {
        let (tname, t) = &self.cloud.types[instance_type];
        let labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), name.to_string()),
            (
                "node.kubernetes.io/instance-type".to_string(),
                tname.clone(),
            ),
            (
                "eks.amazonaws.com/capacityType".to_string(),
                capacity_label(capacity).to_string(),
            ),
            ("eks.amazonaws.com/nodegroup".to_string(), group.to_string()),
        ]);
        let node = Node {
            name: name.to_string(),
            instance_id: Some(instance.to_string()),
            capacity_type: match capacity {
                Capacity::Spot => CapacityType::Spot,
                Capacity::OnDemand => CapacityType::OnDemand,
            },
            ready: false,
            unschedulable: false,
            taints: Vec::new(),
            labels,
            annotations: BTreeMap::new(),
            allocatable: Resources::new(t.cpu_millis, t.memory_mib * MIB, t.max_pods),
        };
        let c = &mut self.cluster;
        let mut sim = SimNode {
            node,
            used: Resources::default(),
            pods: BTreeSet::new(),
            daemon_pods: Vec::new(),
        };
        for w in c
            .workloads
            .iter()
            .filter(|w| w.kind == WorkloadKind::Daemonset)
        {
            if w.template.admits_labels(&sim.node.labels) {
                let mut pod = w.template.clone();
                pod.name = format!("{}-{}", w.template.name, name);
                pod.node = Some(name.to_string());
                sim.used = sim.used.add(&pod.requests);
                sim.daemon_pods.push(pod);
            }
        }
        c.next_node += 1;
        c.by_name.insert(name.to_string(), c.next_node);
        c.nodes.insert(c.next_node, sim);
        c.node_counts[capacity as usize] += 1;
    }

    /// A registered node became Ready.
    pub(crate) fn node_ready(&mut self, name: &str, now: SystemTime) {
        if let Ok(n) = self.cluster.node_mut(name) {
            n.node.ready = true;
            self.cluster.dirty = true;
            self.note(Source::Cluster, format!("node {name} Ready"));
            self.schedule_pending(now);
        }
    }

    /// A node leaves with its instance: pods on it are lost.
    pub(crate) fn leave_node(&mut self, name: &str, now: SystemTime) {
        if let Some((_, lost)) = self.cluster.remove_node(name, now) {
            if lost > 0 {
                self.note(
                    Source::Cluster,
                    format!("node {name} left the cluster with {lost} pods still on it"),
                );
            }
            self.schedule_pending(now);
        }
    }

    /// Binds pending pods if anything changed.
    pub(crate) fn schedule_pending(&mut self, now: SystemTime) {
        self.cluster.schedule_pending(now);
    }

    /// Seeds a node that is Ready from the start.
    pub(crate) fn seed_node(&mut self, name: &str) {
        if let Ok(n) = self.cluster.node_mut(name) {
            n.node.ready = true;
            self.cluster.dirty = true;
        }
    }

    /// One drain pass over the node's pods: evicts what the budgets allow.
    fn drain_pass(
        &mut self,
        name: &str,
        options: &DrainOptions,
        now: SystemTime,
        outcomes: &mut BTreeMap<String, PodOutcome>,
    ) -> Result<bool, ClusterError> {
        let c = &mut self.cluster;
        let node = c.node_mut(name)?;
        for p in &node.daemon_pods {
            outcomes.insert(p.key(), PodOutcome::Skipped(SkipReason::DaemonSet));
        }
        let slots: Vec<usize> = node.pods.iter().copied().collect();
        let mut blocked = false;
        for slot in slots {
            let pod = &c.pods[slot].pod;
            let key = pod.key();
            if pod.owner == OwnerKind::None && !options.force {
                outcomes.insert(
                    key,
                    PodOutcome::Failed {
                        message: "no controller and drain.force is off".into(),
                    },
                );
                continue;
            }
            if pod.local_storage && !options.delete_emptydir_data {
                outcomes.insert(
                    key,
                    PodOutcome::Failed {
                        message: "emptyDir storage and drain.delete_emptydir_data is off".into(),
                    },
                );
                continue;
            }
            match c.evict(slot, now) {
                Ok(()) => {
                    outcomes.insert(key, PodOutcome::Evicted);
                }
                Err(pdb) => {
                    blocked = true;
                    outcomes.insert(key, PodOutcome::Blocked { pdb: Some(pdb) });
                }
            }
        }
        self.schedule_pending(now);
        Ok(blocked)
    }
}

/// The [`Cluster`] port over the simulated cluster.
#[derive(Clone)]
pub struct SimCluster {
    pub(crate) world: Shared,
    pub(crate) clock: SimClock,
}

impl std::fmt::Debug for SimCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimCluster")
    }
}

#[async_trait]
impl Cluster for SimCluster {
    async fn snapshot(&self) -> Result<Arc<ClusterView>, ClusterError> {
        let w = self.world.lock();
        let now = w.now();
        Ok(Arc::new(w.cluster.snapshot(now)))
    }

    async fn taint(&self, node: &str, taint: &Taint) -> Result<(), ClusterError> {
        let mut w = self.world.lock();
        let n = w.cluster.node_mut(node)?;
        if !n
            .node
            .taints
            .iter()
            .any(|t| t.key == taint.key && t.effect == taint.effect)
        {
            n.node.taints.push(taint.clone());
        }
        Ok(())
    }

    async fn untaint(&self, node: &str, key: &str) -> Result<(), ClusterError> {
        let mut w = self.world.lock();
        let now = w.now();
        w.cluster
            .node_mut(node)?
            .node
            .taints
            .retain(|t| t.key != key);
        w.cluster.dirty = true;
        w.schedule_pending(now);
        Ok(())
    }

    async fn set_unschedulable(&self, node: &str, unschedulable: bool) -> Result<(), ClusterError> {
        let mut w = self.world.lock();
        let now = w.now();
        w.cluster.node_mut(node)?.node.unschedulable = unschedulable;
        if !unschedulable {
            w.cluster.dirty = true;
            w.schedule_pending(now);
        }
        Ok(())
    }

    async fn annotate(
        &self,
        node: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<(), ClusterError> {
        let mut w = self.world.lock();
        let n = w.cluster.node_mut(node)?;
        match value {
            Some(v) => n.node.annotations.insert(key.to_string(), v),
            None => n.node.annotations.remove(key),
        };
        Ok(())
    }

    async fn drain(&self, node: &str, options: &DrainOptions) -> Result<DrainReport, ClusterError> {
        let (deadline, retry) = {
            let w = self.world.lock();
            (w.now() + options.timeout, w.cluster.settings.eviction_retry)
        };
        let mut outcomes = BTreeMap::new();
        loop {
            let blocked = {
                let mut w = self.world.lock();
                let now = w.now();
                if !w.cluster.has_node(node) && !outcomes.is_empty() {
                    // The node went away mid-drain (its instance was terminated).
                    for o in outcomes.values_mut() {
                        if matches!(o, PodOutcome::Blocked { .. }) {
                            *o = PodOutcome::Failed {
                                message: "lost with its node before it could be evicted".into(),
                            };
                        }
                    }
                    false
                } else {
                    w.drain_pass(node, options, now, &mut outcomes)?
                }
            };
            if !blocked || self.clock.now() >= deadline {
                break;
            }
            let pause = retry.min(
                deadline
                    .duration_since(self.clock.now())
                    .unwrap_or(Duration::ZERO),
            );
            self.clock.sleep(pause).await;
        }
        Ok(DrainReport {
            node: node.to_string(),
            pods: outcomes
                .into_iter()
                .map(|(pod, outcome)| PodReport { pod, outcome })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;
    use crate::scenario::fixtures::small;

    fn cluster(world: &Shared) -> SimCluster {
        let clock = world.lock().clock.clone();
        SimCluster {
            world: world.clone(),
            clock,
        }
    }

    fn snapshot(world: &Shared) -> Arc<ClusterView> {
        block_on(cluster(world).snapshot()).unwrap()
    }

    const PDB: &str = "[[pdbs]]\nname = \"web\"\nworkload = \"web\"\nmin_available = 3";

    #[test]
    fn pods_spread_and_daemonsets_run_everywhere() {
        let world = World::seeded(&small(
            "[[workloads]]\nname = \"agent\"\nkind = \"daemonset\"\ncpu_millis = 100\nmemory_mib = 64",
        ));
        let s = snapshot(&world);
        assert_eq!(s.nodes.len(), 2);
        let on = |n: &str| {
            s.pods_on(n)
                .filter(|p| p.owner == OwnerKind::ReplicaSet)
                .count()
        };
        assert_eq!((on("s-1"), on("s-2")), (2, 1), "least allocated first");
        assert_eq!(
            s.pods
                .iter()
                .filter(|p| p.owner == OwnerKind::DaemonSet)
                .count(),
            2
        );
        assert_eq!(world.lock().cluster.pending_count(), 0);
    }

    #[test]
    fn pods_only_land_where_they_fit_selectors_and_taints() {
        let world = World::seeded(&small(
            "[[workloads]]\nname = \"od-only\"\nreplicas = 1\ncpu_millis = 100\nmemory_mib = 64\n\
             node_selector = { \"eks.amazonaws.com/capacityType\" = \"ON_DEMAND\" }",
        ));
        assert_eq!(
            world.lock().cluster.pending_count(),
            1,
            "no on-demand node yet"
        );
        let c = cluster(&world);
        let taint = Taint {
            key: "spotguard.dev/draining".into(),
            value: "true".into(),
            effect: TaintEffect::NoSchedule,
        };
        block_on(c.taint("s-1", &taint)).unwrap();
        block_on(c.taint("s-1", &taint)).unwrap();
        assert_eq!(snapshot(&world).nodes[0].taints.len(), 1, "idempotent");
        // Evicted pods do not go back to the tainted node.
        block_on(c.drain("s-1", &DrainOptions::default())).unwrap();
        let s = snapshot(&world);
        assert_eq!(s.pods_on("s-1").count(), 0);
        assert_eq!(s.pods_on("s-2").count(), 3);
        block_on(c.untaint("s-1", "spotguard.dev/draining")).unwrap();
        assert!(snapshot(&world).nodes[0].taints.is_empty());
        assert!(matches!(
            block_on(c.taint("ghost", &taint)),
            Err(ClusterError::UnknownNode { .. })
        ));
    }

    #[test]
    fn budgets_refuse_evictions_and_the_drain_reports_them() {
        let world = World::seeded(&small(PDB));
        let s = snapshot(&world);
        assert_eq!(s.pdbs[0].disruptions_allowed, 0);
        let options = DrainOptions {
            timeout: Duration::from_secs(20),
            ..DrainOptions::default()
        };
        let c = cluster(&world);
        // The drain retries every 5s until its timeout; run it on a pool with virtual time.
        let mut pool = futures::executor::LocalPool::new();
        let report = std::rc::Rc::new(std::cell::RefCell::new(None));
        let (r, c2) = (report.clone(), c.clone());
        use futures::task::LocalSpawnExt;
        pool.spawner()
            .spawn_local(async move {
                *r.borrow_mut() = Some(c2.drain("s-1", &options).await.unwrap());
            })
            .unwrap();
        loop {
            pool.run_until_stalled();
            match c.clock.next_deadline() {
                Some(t) => c.clock.advance_to(t),
                None => break,
            }
        }
        let report = report.borrow_mut().take().unwrap();
        assert!(!report.is_complete());
        assert!(report.pods.iter().all(|p| p.outcome
            == PodOutcome::Blocked {
                pdb: Some("default/web".into())
            }));
        assert_eq!(world.lock().cluster.evictions, 0);
    }

    #[test]
    fn a_node_lost_with_pods_counts_violations_below_the_budget() {
        let world = World::seeded(&small(PDB));
        let mut w = world.lock();
        let now = w.now();
        let id = w.cloud.groups[0].members[0].clone();
        w.begin_termination(&id, "test", now);
        assert_eq!(w.cluster.pods_lost, 2);
        assert_eq!(w.cluster.pdb_violations, 2);
        assert_eq!(w.cluster.pending_count(), 0, "both fit on the other node");
        let snap = w.cluster.snapshot(now);
        assert_eq!(snap.nodes.len(), 1);
    }

    #[test]
    fn evicted_pods_count_for_budgets_once_started() {
        let world = World::seeded(&small(
            "[[pdbs]]\nname = \"web\"\nworkload = \"web\"\nmin_available = 2",
        ));
        let c = cluster(&world);
        let report = block_on(c.drain("s-2", &DrainOptions::default())).unwrap();
        assert!(report.is_complete(), "{report:?}");
        let s = snapshot(&world);
        assert_eq!(
            s.pdbs[0].disruptions_allowed, 0,
            "the moved pod is starting"
        );
        let mut w = world.lock();
        let later = w.now() + Duration::from_secs(15);
        w.run_until(later);
        assert_eq!(w.cluster.snapshot(later).pdbs[0].disruptions_allowed, 1);
    }
}
