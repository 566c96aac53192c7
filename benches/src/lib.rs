//! Synthetic clusters and in-memory ports for Spot Guard's benchmarks.
//!
//! [`cluster`] builds a cluster shaped like a large production one (zones, tainted node pools,
//! node selectors, tolerations, PDBs) deterministically from a size, so every run measures the
//! same input. [`naive_safety`] is the straightforward check the engine is compared with.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ports;

use std::collections::{BTreeMap, HashMap};

use spotguard_core::model::*;
use spotguard_core::view::{ClusterView, ClusterViewBuilder};

/// A small deterministic generator (64-bit LCG), so inputs are identical run to run.
#[derive(Debug, Clone)]
pub struct Lcg(u64);

impl Lcg {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Builds a cluster of `nodes` nodes, `pods_per_node` pods on each (on average) and `pdbs`
/// PodDisruptionBudgets. Every tenth node is tainted `dedicated=batch:NoSchedule`; nodes are
/// spread over three zones; a quarter of the pods select a zone, a tenth tolerate the taint.
/// The first `candidates` nodes are on-demand, the rest spot.
pub fn cluster(
    nodes: usize,
    pods_per_node: usize,
    pdbs: usize,
    candidates: usize,
) -> ClusterSnapshot {
    let mut rng = Lcg::new(42);
    let zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"];
    let mut snapshot = ClusterSnapshot::default();
    for i in 0..nodes {
        let mut labels = BTreeMap::new();
        labels.insert("kubernetes.io/hostname".to_string(), format!("node-{i}"));
        labels.insert(
            "topology.kubernetes.io/zone".to_string(),
            zones[i % 3].to_string(),
        );
        labels.insert(
            "node.kubernetes.io/instance-type".to_string(),
            "m6i.4xlarge".to_string(),
        );
        let taints = if i % 10 == 9 {
            vec![Taint {
                key: "dedicated".into(),
                value: "batch".into(),
                effect: TaintEffect::NoSchedule,
            }]
        } else {
            vec![]
        };
        snapshot.nodes.push(Node {
            name: format!("node-{i}"),
            instance_id: Some(format!("i-{i:08x}")),
            capacity_type: if i < candidates {
                CapacityType::OnDemand
            } else {
                CapacityType::Spot
            },
            ready: true,
            unschedulable: false,
            taints,
            labels,
            annotations: BTreeMap::new(),
            allocatable: Resources::new(16_000, 64 << 30, 110),
        });
    }
    let apps = pdbs.max(1);
    for p in 0..nodes * pods_per_node {
        let node = p % nodes;
        let app = rng.below(apps as u64) as usize;
        let mut node_selector = BTreeMap::new();
        if rng.below(4) == 0 {
            node_selector.insert(
                "topology.kubernetes.io/zone".to_string(),
                zones[node % 3].to_string(),
            );
        }
        let tolerations = if rng.below(10) == 0 || node % 10 == 9 {
            vec![Toleration {
                key: Some("dedicated".into()),
                operator: TolerationOperator::Equal,
                value: "batch".into(),
                effect: Some(TaintEffect::NoSchedule),
            }]
        } else {
            vec![]
        };
        snapshot.pods.push(Pod {
            namespace: format!("team-{}", app % 20),
            name: format!("app-{app}-{p}"),
            node: Some(format!("node-{node}")),
            owner: if p % 37 == 0 {
                OwnerKind::DaemonSet
            } else {
                OwnerKind::ReplicaSet
            },
            labels: BTreeMap::from([("app".to_string(), format!("app-{app}"))]),
            requests: Resources::new(50 + rng.below(200), (64 + rng.below(512)) << 20, 1),
            node_selector,
            required_affinity: vec![],
            tolerations,
            mirror: false,
            local_storage: false,
            terminal: false,
        });
    }
    for i in 0..pdbs {
        snapshot.pdbs.push(Pdb {
            namespace: format!("team-{}", i % 20),
            name: format!("app-{i}"),
            selector: LabelSelector {
                match_labels: BTreeMap::from([("app".to_string(), format!("app-{i}"))]),
                match_expressions: vec![],
            },
            disruptions_allowed: 1 + (i % 3) as u32,
        });
    }
    snapshot
}

/// The view an adapter that keeps pods per node (the Kubernetes watch cache, the simulator)
/// hands out for this snapshot: nodes in order, each with its pods.
pub fn grouped_view(snapshot: &ClusterSnapshot) -> ClusterView {
    let mut per_node: HashMap<&str, Vec<Pod>> = HashMap::new();
    let mut others = Vec::new();
    for pod in &snapshot.pods {
        match pod.node.as_deref() {
            Some(n) => per_node.entry(n).or_default().push(pod.clone()),
            None => others.push(pod.clone()),
        }
    }
    let mut b = ClusterViewBuilder::with_capacity(snapshot.nodes.len(), snapshot.pods.len());
    for node in &snapshot.nodes {
        b.node(
            node.clone(),
            per_node.remove(node.name.as_str()).unwrap_or_default(),
        );
    }
    b.pods(others.into_iter().chain(per_node.into_values().flatten()));
    b.pdbs(snapshot.pdbs.iter().cloned());
    b.build()
}

/// The straightforward check Spot Guard is compared with: for each pod of the candidate, scan
/// every node, recomputing each node's usage from the pod list, first fit. It answers only
/// "does every pod fit", the part that dominates the cost.
pub fn naive_safety(cluster: &ClusterSnapshot, candidate: &str) -> bool {
    let Some(c) = cluster.node_for_instance(candidate) else {
        return false;
    };
    let mut placed: Vec<(String, Resources)> = Vec::new();
    for pod in cluster.pods_on(&c.name).filter(|p| p.is_evictable()) {
        let spot = cluster.nodes.iter().find(|n| {
            if n.name == c.name || !n.is_schedulable() {
                return false;
            }
            let mut used = cluster
                .pods_on(&n.name)
                .fold(Resources::default(), |acc, p| acc.add(&p.requests));
            for (name, r) in &placed {
                if *name == n.name {
                    used = used.add(r);
                }
            }
            n.allocatable.saturating_sub(&used).covers(&pod.requests)
                && pod.tolerates_taints(&n.taints)
                && pod.admits_labels(&n.labels)
        });
        match spot {
            Some(n) => placed.push((n.name.clone(), pod.requests)),
            None => return false,
        }
    }
    true
}
