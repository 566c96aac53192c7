//! [`ClusterView`]: a [`ClusterSnapshot`] with the lookups every decision needs built in —
//! nodes by name and by instance id, the pods of each node, the requests already placed on
//! each node.
//!
//! A snapshot is plain data in any order; a view is read-only (it derefs to the snapshot but
//! never hands out `&mut`), so its lookups can never go stale. Adapters that keep pods per
//! node (the Kubernetes watch cache, the simulator) build views with [`ClusterViewBuilder`]
//! at no extra cost: pods arrive grouped and each node's usage is summed on the way. Any
//! other snapshot goes through [`ClusterView::new`], which groups the pods in one pass.
//!
//! ```
//! use spotguard_core::model::*;
//! use spotguard_core::view::ClusterView;
//! # use std::collections::BTreeMap;
//! # let node = |name: &str| Node { name: name.into(), instance_id: Some(format!("i-{name}")),
//! #     capacity_type: CapacityType::Spot, ready: true, unschedulable: false, taints: vec![],
//! #     labels: BTreeMap::new(), annotations: BTreeMap::new(),
//! #     allocatable: Resources::new(4000, 8 << 30, 110) };
//! # let pod = |name: &str, on: &str| Pod { namespace: "shop".into(), name: name.into(),
//! #     node: Some(on.into()), owner: OwnerKind::ReplicaSet, labels: BTreeMap::new(),
//! #     requests: Resources::new(500, 1 << 30, 1), node_selector: BTreeMap::new(),
//! #     required_affinity: vec![], tolerations: vec![], mirror: false, local_storage: false,
//! #     terminal: false };
//! let mut b = ClusterView::builder();
//! b.node(node("a"), [pod("web-1", "a"), pod("web-2", "a")]);
//! b.node(node("b"), []);
//! let view = b.build();
//! assert_eq!(view.node_for_instance("i-a").map(|n| n.name.as_str()), Some("a"));
//! assert_eq!(view.pods_on("a").count(), 2);
//! assert_eq!(view.used(view.node_index("a").unwrap()).cpu_millis, 1000);
//! assert_eq!(view.pods.len(), 2); // the snapshot's fields, read-only
//! ```

use std::fmt;
use std::hash::BuildHasher;
use std::ops::Deref;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use crate::model::{ClusterSnapshot, Node, Pdb, Pod, Resources};

fn hash(s: &str) -> u64 {
    FxBuildHasher.hash_one(s)
}

/// Position of the node named `name` in `nodes`, through its name table.
fn find_node(by_name: &HashTable<u32>, nodes: &[Node], name: &str) -> Option<u32> {
    by_name
        .find(hash(name), |&k| nodes[k as usize].name == name)
        .copied()
}

/// A read-only cluster snapshot with lookups by node name and instance id, and the pods and
/// requested resources of each node. See the [module docs](self).
#[derive(Clone, Default)]
pub struct ClusterView {
    snapshot: ClusterSnapshot,
    by_name: HashTable<u32>,
    by_instance: HashTable<u32>,
    /// Pod indexes grouped by node, when the snapshot's pods are not stored grouped.
    order: Option<Vec<u32>>,
    /// Node `i`'s pods are positions `starts[i]..starts[i + 1]` (of `order`, or of `pods`
    /// when grouped); positions from `starts[nodes]` on hold pods of no known node.
    starts: Vec<u32>,
    /// Requests of each node's live (not terminal) pods.
    used: Vec<Resources>,
}

impl fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterView")
            .field("nodes", &self.snapshot.nodes.len())
            .field("pods", &self.snapshot.pods.len())
            .field("pdbs", &self.snapshot.pdbs.len())
            .field("grouped", &self.order.is_none())
            .finish()
    }
}

impl PartialEq for ClusterView {
    /// Views are equal when their snapshots are.
    fn eq(&self, other: &Self) -> bool {
        self.snapshot == other.snapshot
    }
}

impl Eq for ClusterView {}

impl Deref for ClusterView {
    type Target = ClusterSnapshot;

    fn deref(&self) -> &ClusterSnapshot {
        &self.snapshot
    }
}

impl From<ClusterSnapshot> for ClusterView {
    fn from(snapshot: ClusterSnapshot) -> Self {
        Self::new(snapshot)
    }
}

/// Node lookups: first node wins on a duplicate name or instance id, as a linear scan would.
fn node_tables(nodes: &[Node]) -> (HashTable<u32>, HashTable<u32>) {
    let mut by_name = HashTable::with_capacity(nodes.len());
    let mut by_instance = HashTable::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        if find_node(&by_name, nodes, &n.name).is_none() {
            by_name.insert_unique(hash(&n.name), i as u32, |&k| hash(&nodes[k as usize].name));
        }
        if let Some(id) = n.instance_id.as_deref() {
            let h = hash(id);
            let same = |k: &u32| nodes[*k as usize].instance_id.as_deref() == Some(id);
            if by_instance.find(h, same).is_none() {
                by_instance.insert_unique(h, i as u32, |&k| {
                    hash(nodes[k as usize].instance_id.as_deref().unwrap_or_default())
                });
            }
        }
    }
    (by_name, by_instance)
}

impl ClusterView {
    /// Indexes a snapshot whose pods may be in any order: one pass over the pods to group
    /// them by node.
    pub fn new(snapshot: ClusterSnapshot) -> Self {
        let (by_name, by_instance) = node_tables(&snapshot.nodes);
        let nodes = &snapshot.nodes;
        let n = nodes.len();
        // Counting sort by node; pods of no known node form group `n`.
        let mut used = vec![Resources::default(); n];
        let mut starts = vec![0u32; n + 2];
        let placement: Vec<u32> = snapshot
            .pods
            .iter()
            .map(|pod| {
                let i = pod
                    .node
                    .as_deref()
                    .and_then(|name| find_node(&by_name, nodes, name))
                    .unwrap_or(n as u32);
                if (i as usize) < n && !pod.terminal {
                    used[i as usize] = used[i as usize].add(&pod.requests);
                }
                starts[i as usize + 1] += 1;
                i
            })
            .collect();
        for i in 0..=n {
            starts[i + 1] += starts[i];
        }
        let mut fill = starts.clone();
        let mut order = vec![0u32; snapshot.pods.len()];
        for (k, &i) in placement.iter().enumerate() {
            order[fill[i as usize] as usize] = k as u32;
            fill[i as usize] += 1;
        }
        Self {
            snapshot,
            by_name,
            by_instance,
            order: Some(order),
            starts,
            used,
        }
    }

    /// A builder for adapters that hold pods per node.
    pub fn builder() -> ClusterViewBuilder {
        ClusterViewBuilder::default()
    }

    /// The snapshot.
    pub fn snapshot(&self) -> &ClusterSnapshot {
        &self.snapshot
    }

    /// The snapshot, giving up the lookups.
    pub fn into_snapshot(self) -> ClusterSnapshot {
        self.snapshot
    }

    /// Position in `nodes` of the node with this name.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        find_node(&self.by_name, &self.snapshot.nodes, name).map(|k| k as usize)
    }

    /// Position in `nodes` of the node backed by this instance.
    pub fn instance_index(&self, instance: &str) -> Option<usize> {
        let nodes = &self.snapshot.nodes;
        self.by_instance
            .find(hash(instance), |&k| {
                nodes[k as usize].instance_id.as_deref() == Some(instance)
            })
            .map(|&k| k as usize)
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.node_index(name).map(|i| &self.snapshot.nodes[i])
    }

    /// The node backed by the instance.
    pub fn node_for_instance(&self, instance: &str) -> Option<&Node> {
        self.instance_index(instance)
            .map(|i| &self.snapshot.nodes[i])
    }

    /// Pods bound to the node with this name (also when the node itself is not in the
    /// snapshot).
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        let (group, only) = match self.node_index(node) {
            Some(i) => (i, None),
            None => (self.snapshot.nodes.len(), Some(node)),
        };
        self.group(group)
            .filter(move |p| only.is_none() || p.node.as_deref() == only)
    }

    /// Pods bound to `nodes[i]`.
    pub fn pods_of(&self, i: usize) -> impl Iterator<Item = &Pod> + '_ {
        self.group(i.min(self.snapshot.nodes.len()))
    }

    /// Requests of the live (not terminal) pods bound to `nodes[i]`.
    pub fn used(&self, i: usize) -> Resources {
        self.used.get(i).copied().unwrap_or_default()
    }

    fn group(&self, g: usize) -> Pods<'_> {
        let (start, end) = (self.starts[g] as usize, self.starts[g + 1] as usize);
        match &self.order {
            Some(order) => Pods::Indexed(order[start..end].iter(), &self.snapshot.pods),
            None => Pods::Grouped(self.snapshot.pods[start..end].iter()),
        }
    }
}

/// Iterator over one node's pods.
enum Pods<'a> {
    Grouped(std::slice::Iter<'a, Pod>),
    Indexed(std::slice::Iter<'a, u32>, &'a [Pod]),
}

impl<'a> Iterator for Pods<'a> {
    type Item = &'a Pod;

    fn next(&mut self) -> Option<&'a Pod> {
        match self {
            Pods::Grouped(it) => it.next(),
            Pods::Indexed(it, pods) => it.next().map(|&k| &pods[k as usize]),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Pods::Grouped(it) => it.size_hint(),
            Pods::Indexed(it, _) => it.size_hint(),
        }
    }
}

/// Builds a [`ClusterView`] from nodes with their pods, so nothing has to be looked up:
/// what adapters that keep pods per node use.
#[derive(Debug, Default)]
pub struct ClusterViewBuilder {
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    starts: Vec<u32>,
    used: Vec<Resources>,
    others: Vec<Pod>,
    pdbs: Vec<Pdb>,
}

impl ClusterViewBuilder {
    /// Room for this many nodes and pods.
    pub fn with_capacity(nodes: usize, pods: usize) -> Self {
        Self {
            nodes: Vec::with_capacity(nodes),
            pods: Vec::with_capacity(pods),
            starts: Vec::with_capacity(nodes + 2),
            used: Vec::with_capacity(nodes),
            ..Self::default()
        }
    }

    /// Adds a node and the pods bound to it. A pod whose `node` is not this node's name is
    /// set aside, so the view never files a pod under the wrong node.
    pub fn node(&mut self, node: Node, pods: impl IntoIterator<Item = Pod>) -> &mut Self {
        self.starts.push(self.pods.len() as u32);
        let mut used = Resources::default();
        for pod in pods {
            if pod.node.as_deref() != Some(node.name.as_str()) {
                self.others.push(pod);
                continue;
            }
            if !pod.terminal {
                used = used.add(&pod.requests);
            }
            self.pods.push(pod);
        }
        self.used.push(used);
        self.nodes.push(node);
        self
    }

    /// Adds pods bound to no node in the snapshot (pending ones, or bound to a node not
    /// listed).
    pub fn pods(&mut self, pods: impl IntoIterator<Item = Pod>) -> &mut Self {
        self.others.extend(pods);
        self
    }

    /// Adds PodDisruptionBudgets.
    pub fn pdbs(&mut self, pdbs: impl IntoIterator<Item = Pdb>) -> &mut Self {
        self.pdbs.extend(pdbs);
        self
    }

    /// The view. Should the input not be grouped after all (two nodes with one name, or a
    /// pod handed over with the wrong node), the pods are grouped from scratch as
    /// [`ClusterView::new`] does, so lookups are right whatever the input.
    pub fn build(self) -> ClusterView {
        let Self {
            nodes,
            mut pods,
            mut starts,
            used,
            others,
            pdbs,
        } = self;
        let (by_name, by_instance) = node_tables(&nodes);
        let grouped = by_name.len() == nodes.len()
            && !others.iter().any(|p| {
                p.node
                    .as_deref()
                    .is_some_and(|name| find_node(&by_name, &nodes, name).is_some())
            });
        starts.push(pods.len() as u32);
        pods.extend(others);
        starts.push(pods.len() as u32);
        let snapshot = ClusterSnapshot { nodes, pods, pdbs };
        if !grouped {
            return ClusterView::new(snapshot);
        }
        ClusterView {
            snapshot,
            by_name,
            by_instance,
            order: None,
            starts,
            used,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predicates::fixtures::{node, pod};

    fn flat() -> ClusterSnapshot {
        let mut done = pod("done", "a", 900, 1);
        done.terminal = true;
        let mut pending = pod("pending", "a", 100, 1);
        pending.node = None;
        ClusterSnapshot {
            nodes: vec![node("a", 4000, 16), node("b", 4000, 16)],
            pods: vec![
                pod("a1", "a", 100, 1),
                pod("b1", "b", 200, 1),
                pending,
                pod("ghost1", "gone", 300, 1),
                pod("a2", "a", 400, 1),
                done,
            ],
            pdbs: vec![],
        }
    }

    fn names<'a>(pods: impl Iterator<Item = &'a Pod>) -> Vec<&'a str> {
        let mut v: Vec<&str> = pods.map(|p| p.name.as_str()).collect();
        v.sort();
        v
    }

    fn built() -> ClusterView {
        let s = flat();
        let on = |n: &str| s.pods_on(n).cloned().collect::<Vec<_>>();
        let mut b = ClusterView::builder();
        b.node(s.nodes[0].clone(), on("a"));
        b.node(s.nodes[1].clone(), on("b"));
        b.pods(s.pods.iter().filter(|p| p.node.is_none()).cloned());
        b.pods(on("gone"));
        b.build()
    }

    #[test]
    fn both_constructions_agree_with_the_linear_lookups() {
        let s = flat();
        for view in [ClusterView::new(s.clone()), built()] {
            for name in ["a", "b", "gone", "nowhere"] {
                assert_eq!(names(view.pods_on(name)), names(s.pods_on(name)), "{name}");
            }
            assert_eq!(view.node("b"), s.node("b"));
            assert_eq!(view.node("c"), None);
            assert_eq!(view.node_for_instance("i-a"), s.node_for_instance("i-a"));
            assert_eq!(view.node_for_instance("i-zz"), None);
            let a = view.node_index("a").unwrap();
            // The terminal pod holds nothing.
            assert_eq!(view.used(a).cpu_millis, 500);
            assert_eq!(names(view.pods_of(a)), ["a1", "a2", "done"]);
            assert_eq!(view.pods.len(), 6);
        }
    }

    #[test]
    fn builder_never_files_a_pod_under_the_wrong_node() {
        let mut b = ClusterView::builder();
        b.node(
            node("a", 4000, 16),
            [pod("a1", "a", 100, 1), pod("x", "b", 100, 1)],
        );
        b.node(node("b", 4000, 16), []);
        let view = b.build();
        assert_eq!(names(view.pods_on("a")), ["a1"]);
        assert_eq!(view.used(0).cpu_millis, 100);
        assert_eq!(names(view.pods_on("b")), ["x"]);
        assert_eq!(view.used(1).cpu_millis, 100);
    }

    #[test]
    fn duplicate_node_names_resolve_to_the_first() {
        let mut second = node("a", 1000, 1);
        second.instance_id = Some("i-second".into());
        let s = ClusterSnapshot {
            nodes: vec![node("a", 4000, 16), second.clone()],
            pods: vec![pod("p", "a", 100, 1)],
            pdbs: vec![],
        };
        let mut b = ClusterView::builder();
        b.node(s.nodes[0].clone(), []);
        b.node(second, s.pods.clone());
        for view in [ClusterView::new(s.clone()), b.build()] {
            assert_eq!(view.node("a").unwrap().allocatable.cpu_millis, 4000);
            assert_eq!(
                view.node_for_instance("i-second")
                    .unwrap()
                    .allocatable
                    .cpu_millis,
                1000
            );
            assert_eq!(names(view.pods_on("a")), ["p"]);
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

        fn snapshot() -> impl Strategy<Value = ClusterSnapshot> {
            let nodes = prop::collection::vec((0..4usize, prop::option::of(0..3usize)), 0..5);
            let pods = prop::collection::vec(
                (prop::option::of(0..5usize), 0..1000u64, any::<bool>()),
                0..24,
            );
            (nodes, pods).prop_map(|(nodes, pods)| ClusterSnapshot {
                nodes: nodes
                    .into_iter()
                    .map(|(n, id)| {
                        let mut node = node(NAMES[n], 4000, 16);
                        node.instance_id = id.map(|i| format!("i-{i}"));
                        node
                    })
                    .collect(),
                pods: pods
                    .into_iter()
                    .enumerate()
                    .map(|(k, (on, cpu, terminal))| {
                        let mut p = pod(&format!("p{k}"), "a", cpu, 1);
                        p.node = on.map(|n| NAMES[n].to_string());
                        p.terminal = terminal;
                        p
                    })
                    .collect(),
                pdbs: vec![],
            })
        }

        /// The builder's input as an adapter keeping pods per node would hand it over.
        fn grouped(s: &ClusterSnapshot) -> ClusterView {
            let mut b = ClusterView::builder();
            let mut seen = Vec::new();
            for n in &s.nodes {
                let first = !seen.contains(&n.name);
                seen.push(n.name.clone());
                let pods = s.pods_on(&n.name).filter(|_| first).cloned();
                b.node(n.clone(), pods.collect::<Vec<_>>());
            }
            b.pods(
                s.pods
                    .iter()
                    .filter(|p| p.node.as_ref().is_none_or(|n| s.node(n).is_none()))
                    .cloned(),
            );
            b.build()
        }

        proptest! {
            #[test]
            fn lookups_match_linear_scans(s in snapshot()) {
                for view in [ClusterView::new(s.clone()), grouped(&s)] {
                    prop_assert_eq!(view.pods.len(), s.pods.len());
                    for name in NAMES {
                        prop_assert_eq!(view.node(name), s.node(name));
                        prop_assert_eq!(names(view.pods_on(name)), names(s.pods_on(name)));
                        if let Some(i) = view.node_index(name) {
                            let live = s
                                .pods_on(name)
                                .filter(|p| !p.terminal)
                                .fold(Resources::default(), |a, p| a.add(&p.requests));
                            prop_assert_eq!(view.used(i), live);
                            prop_assert_eq!(names(view.pods_of(i)), names(s.pods_on(name)));
                        }
                    }
                    for id in ["i-0", "i-1", "i-2", "i-9"] {
                        prop_assert_eq!(view.node_for_instance(id), s.node_for_instance(id));
                    }
                }
            }
        }
    }
}
