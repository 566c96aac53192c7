//! Safety of removing an on-demand node: every evictable pod fits elsewhere (packed together,
//! not one at a time), no PDB allows zero disruptions of its pods there, no pod would be lost
//! against the drain options, and the cluster keeps its capacity buffer afterwards.
//!
//! [`SafetyIndex`] does the per-snapshot work once (free resources per node, PDBs per
//! namespace) on a [`ClusterView`], whose pods are already grouped and summed per node, so
//! judging every candidate of a large ledger costs one pass over the nodes plus a little per
//! candidate.

use rustc_hash::FxHashMap;

use super::{Reason, Verdict};
use crate::config::Config;
use crate::model::{Node, OwnerKind, Pdb, Pod, Resources, TaintEffect};
use crate::view::ClusterView;

/// The per-snapshot part of safety decisions (free resources and schedulability of every
/// node, PDBs per namespace), computed once from a [`ClusterView`] so that judging every
/// candidate of a large ledger costs one pass over the nodes plus a little per candidate.
#[derive(Debug)]
pub struct SafetyIndex<'a> {
    config: &'a Config,
    view: &'a ClusterView,
    nodes: &'a [Node],
    /// Free resources of each node (allocatable minus requests of its live pods).
    free: Vec<Resources>,
    /// Whether a node takes new pods: Ready, not cordoned, not being drained by Spot Guard.
    target: Vec<bool>,
    /// Whether a node has a NoSchedule/NoExecute taint (otherwise the taint check is skipped).
    hard_tainted: Vec<bool>,
    pdbs_by_namespace: FxHashMap<&'a str, Vec<&'a Pdb>>,
    /// Free and allocatable totals over target nodes.
    target_free: Resources,
    target_alloc: Resources,
}

/// Input alias kept for readability at call sites: the cluster, the instance id of the
/// candidate on-demand node and the configuration.
pub type SafetyInput<'a> = (&'a ClusterView, &'a str, &'a Config);

/// Judges whether the node backed by `candidate_instance` can be removed now.
///
/// ```
/// use spotguard_core::config::Config;
/// use spotguard_core::predicates::{safety, Reason, Verdict};
/// use spotguard_core::view::ClusterView;
/// let v = safety((&ClusterView::default(), "i-0abc", &Config::default()));
/// assert_eq!(v, Verdict::Wait(vec![Reason::CandidateMissing { instance: "i-0abc".into() }]));
/// ```
pub fn safety((cluster, candidate_instance, config): SafetyInput<'_>) -> Verdict {
    SafetyIndex::new(cluster, config).check(candidate_instance)
}

impl<'a> SafetyIndex<'a> {
    /// Indexes the view: one pass over nodes and PDBs (the pods are already grouped and
    /// summed per node in the view).
    pub fn new(view: &'a ClusterView, config: &'a Config) -> Self {
        let nodes = view.nodes.as_slice();
        let free: Vec<Resources> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| n.allocatable.saturating_sub(&view.used(i)))
            .collect();
        let target: Vec<bool> = nodes
            .iter()
            .map(|n| n.is_schedulable() && !n.taints.iter().any(|t| t.key == config.taint.key))
            .collect();
        let hard_tainted = nodes
            .iter()
            .map(|n| {
                n.taints
                    .iter()
                    .any(|t| t.effect != TaintEffect::PreferNoSchedule)
            })
            .collect();
        let mut pdbs_by_namespace: FxHashMap<&str, Vec<&Pdb>> = FxHashMap::default();
        for pdb in &view.pdbs {
            pdbs_by_namespace
                .entry(pdb.namespace.as_str())
                .or_default()
                .push(pdb);
        }
        let (mut target_free, mut target_alloc) = (Resources::default(), Resources::default());
        for i in (0..nodes.len()).filter(|&i| target[i]) {
            target_free = target_free.add(&free[i]);
            target_alloc = target_alloc.add(&nodes[i].allocatable);
        }
        Self {
            config,
            view,
            nodes,
            free,
            target,
            hard_tainted,
            pdbs_by_namespace,
            target_free,
            target_alloc,
        }
    }

    fn admits(&self, node: usize, pod: &Pod) -> bool {
        let n = &self.nodes[node];
        (!self.hard_tainted[node] || pod.tolerates_taints(&n.taints))
            && pod.admits_labels(&n.labels)
    }

    /// Judges the candidate node backed by this instance.
    pub fn check(&self, candidate_instance: &str) -> Verdict {
        let Some(c) = self.view.instance_index(candidate_instance) else {
            return Verdict::Wait(vec![Reason::CandidateMissing {
                instance: candidate_instance.to_string(),
            }]);
        };
        let drain = &self.config.drain;
        let mut reasons = Vec::new();
        let evictable: Vec<&Pod> = self.view.pods_of(c).filter(|p| p.is_evictable()).collect();

        // Pods the drain options would refuse, or that nothing recreates.
        let mut movers: Vec<&Pod> = Vec::with_capacity(evictable.len());
        for pod in &evictable {
            if pod.owner == OwnerKind::None && !drain.force {
                reasons.push(Reason::UnmanagedPod { pod: pod.key() });
            } else if pod.local_storage && !drain.delete_emptydir_data {
                reasons.push(Reason::LocalStorage { pod: pod.key() });
            }
            if pod.owner != OwnerKind::None {
                movers.push(pod);
            }
        }

        // PDBs: any budget with zero allowance covering a pod here blocks the drain.
        let mut on_node: Vec<(&Pdb, u32)> = Vec::new();
        for pod in &evictable {
            for pdb in self
                .pdbs_by_namespace
                .get(pod.namespace.as_str())
                .into_iter()
                .flatten()
                .filter(|pdb| pdb.covers(pod))
            {
                match on_node.iter_mut().find(|(p, _)| std::ptr::eq(*p, *pdb)) {
                    Some((_, n)) => *n += 1,
                    None => on_node.push((pdb, 1)),
                }
            }
        }
        for (pdb, n) in on_node {
            if pdb.disruptions_allowed == 0 {
                reasons.push(Reason::PdbBlocks {
                    pdb: pdb.key(),
                    pods_on_node: n,
                    disruptions_allowed: pdb.disruptions_allowed,
                });
            }
        }

        // Pack the pods that will be recreated, biggest first, onto the other target nodes.
        movers.sort_by(|a, b| {
            (b.requests.cpu_millis, b.requests.memory_bytes)
                .cmp(&(a.requests.cpu_millis, a.requests.memory_bytes))
        });
        // What this decision places on each node, kept aside so the shared free list is
        // neither copied nor changed.
        let mut taken: FxHashMap<usize, Resources> = FxHashMap::default();
        let free = |taken: &FxHashMap<usize, Resources>, i: usize| match taken.get(&i) {
            Some(t) => self.free[i].saturating_sub(t),
            None => self.free[i],
        };
        let mut placed = Resources::default();
        for pod in movers {
            let req = &pod.requests;
            let spot = (0..self.nodes.len()).find(|&i| {
                i != c && self.target[i] && free(&taken, i).covers(req) && self.admits(i, pod)
            });
            match spot {
                Some(i) => {
                    let t = taken.entry(i).or_default();
                    *t = t.add(req);
                    placed = placed.add(req);
                }
                None => reasons.push(Reason::PodDoesNotFit {
                    pod: pod.key(),
                    detail: self.explain_misfit(c, pod),
                }),
            }
        }

        // Buffer: free share of the remaining target nodes after the move.
        let (mut total_free, mut total_alloc) = (self.target_free, self.target_alloc);
        if self.target[c] {
            total_free = total_free.saturating_sub(&self.free[c]);
            total_alloc = total_alloc.saturating_sub(&self.nodes[c].allocatable);
        }
        total_free = total_free.saturating_sub(&placed);
        let buffer = &self.config.capacity_buffer;
        for (resource, free, alloc, required) in [
            (
                "cpu",
                total_free.cpu_millis,
                total_alloc.cpu_millis,
                buffer.cpu_percent,
            ),
            (
                "memory",
                total_free.memory_bytes,
                total_alloc.memory_bytes,
                buffer.memory_percent,
            ),
        ] {
            let free_percent = if alloc == 0 {
                0
            } else {
                (free as u128 * 100 / alloc as u128) as u32
            };
            if required > 0 && free_percent < required {
                reasons.push(Reason::BufferTooSmall {
                    resource: resource.into(),
                    free_percent,
                    required_percent: required,
                });
            }
        }
        Verdict::from_reasons(reasons)
    }

    /// Says why a pod found no node: how many nodes its constraints admit, and its requests.
    fn explain_misfit(&self, candidate: usize, pod: &Pod) -> String {
        let admitting = (0..self.nodes.len())
            .filter(|&i| i != candidate && self.target[i] && self.admits(i, pod))
            .count();
        format!(
            "requests cpu {}m, memory {}Mi; {admitting} schedulable nodes admit its selectors and tolerations, none has room left",
            pod.requests.cpu_millis,
            pod.requests.memory_bytes >> 20
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::predicates::fixtures::*;
    use std::collections::BTreeMap;

    fn od(name: &str) -> Node {
        let mut n = node(name, 4000, 16);
        n.capacity_type = CapacityType::OnDemand;
        n
    }

    fn config() -> Config {
        let mut c = Config::default();
        c.capacity_buffer.cpu_percent = 0;
        c.capacity_buffer.memory_percent = 0;
        c
    }

    fn check(c: &ClusterSnapshot, config: &Config) -> Verdict {
        safety((&ClusterView::new(c.clone()), "i-od", config))
    }

    #[test]
    fn pods_fit_elsewhere() {
        let c = ClusterSnapshot {
            nodes: vec![od("od"), node("a", 4000, 16)],
            pods: vec![pod("web1", "od", 1000, 1024), pod("web2", "od", 1000, 1024)],
            pdbs: vec![],
        };
        assert_eq!(check(&c, &config()), Verdict::Go);
    }

    #[test]
    fn packed_together_not_one_at_a_time() {
        // Each pod fits alone on "a", but not both.
        let c = ClusterSnapshot {
            nodes: vec![od("od"), node("a", 3000, 16)],
            pods: vec![pod("web1", "od", 2000, 1024), pod("web2", "od", 2000, 1024)],
            pdbs: vec![],
        };
        let v = check(&c, &config());
        assert!(
            matches!(v.reasons(), [Reason::PodDoesNotFit { pod, .. }] if pod == "default/web2"),
            "{v}"
        );
    }

    #[test]
    fn existing_usage_counts() {
        let c = ClusterSnapshot {
            nodes: vec![od("od"), node("a", 4000, 16)],
            pods: vec![pod("web1", "od", 2000, 1024), pod("busy", "a", 3000, 1024)],
            pdbs: vec![],
        };
        assert!(!check(&c, &config()).is_go());
    }

    #[test]
    fn memory_and_pod_count_limits() {
        let mut small = node("a", 8000, 1);
        small.allocatable.pods = 1;
        let c = ClusterSnapshot {
            nodes: vec![od("od"), small],
            pods: vec![pod("big", "od", 100, 2048)],
            pdbs: vec![],
        };
        assert!(matches!(
            check(&c, &config()).reasons(),
            [Reason::PodDoesNotFit { .. }]
        ));
        let mut tiny = node("a", 8000, 16);
        tiny.allocatable.pods = 1;
        let c = ClusterSnapshot {
            nodes: vec![od("od"), tiny],
            pods: vec![pod("x1", "od", 10, 10), pod("x2", "od", 10, 10)],
            pdbs: vec![],
        };
        assert_eq!(check(&c, &config()).reasons().len(), 1);
    }

    #[test]
    fn not_ready_cordoned_and_draining_nodes_are_not_targets() {
        let config = config();
        for mutate in [
            (|n: &mut Node| n.ready = false) as fn(&mut Node),
            |n: &mut Node| n.unschedulable = true,
            |n: &mut Node| {
                n.taints.push(Taint {
                    key: "spotguard.dev/draining".into(),
                    value: "true".into(),
                    effect: TaintEffect::NoSchedule,
                })
            },
        ] {
            let mut a = node("a", 4000, 16);
            mutate(&mut a);
            let c = ClusterSnapshot {
                nodes: vec![od("od"), a],
                pods: vec![pod("web1", "od", 100, 100)],
                pdbs: vec![],
            };
            assert!(matches!(
                check(&c, &config).reasons(),
                [Reason::PodDoesNotFit { .. }]
            ));
        }
    }

    #[test]
    fn node_selector_and_affinity_operators() {
        let mut a = node("a", 4000, 16);
        a.labels.insert("zone".into(), "a".into());
        a.labels.insert("gpu".into(), "true".into());
        let c0 = |p: Pod| ClusterSnapshot {
            nodes: vec![od("od"), a.clone()],
            pods: vec![p],
            pdbs: vec![],
        };
        let config = config();
        let req = |key: &str, operator, values: &[&str]| NodeSelectorTerm {
            match_expressions: vec![SelectorRequirement {
                key: key.into(),
                operator,
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
        };
        let cases = [
            (req("zone", SelectorOperator::In, &["a", "b"]), true),
            (req("zone", SelectorOperator::In, &["b"]), false),
            (req("zone", SelectorOperator::NotIn, &["b"]), true),
            (req("zone", SelectorOperator::NotIn, &["a"]), false),
            (req("gpu", SelectorOperator::Exists, &[]), true),
            (req("tpu", SelectorOperator::Exists, &[]), false),
        ];
        for (term, fits) in cases {
            let mut p = pod("web1", "od", 100, 100);
            p.required_affinity = vec![term.clone()];
            assert_eq!(check(&c0(p), &config).is_go(), fits, "{term:?}");
        }
        let mut p = pod("web1", "od", 100, 100);
        p.node_selector = BTreeMap::from([("zone".to_string(), "b".to_string())]);
        assert!(!check(&c0(p.clone()), &config).is_go());
        p.node_selector = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        assert!(check(&c0(p), &config).is_go());
    }

    #[test]
    fn taints_need_tolerations() {
        let mut a = node("a", 4000, 16);
        a.taints.push(Taint {
            key: "dedicated".into(),
            value: "batch".into(),
            effect: TaintEffect::NoSchedule,
        });
        let mut p = pod("web1", "od", 100, 100);
        let c = |p: Pod| ClusterSnapshot {
            nodes: vec![od("od"), a.clone()],
            pods: vec![p],
            pdbs: vec![],
        };
        assert!(!check(&c(p.clone()), &config()).is_go());
        p.tolerations.push(Toleration {
            key: Some("dedicated".into()),
            operator: TolerationOperator::Equal,
            value: "batch".into(),
            effect: Some(TaintEffect::NoSchedule),
        });
        assert!(check(&c(p), &config()).is_go());
    }

    #[test]
    fn pdb_with_no_allowance_blocks() {
        let pdb = Pdb {
            namespace: "default".into(),
            name: "web".into(),
            selector: LabelSelector {
                match_labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
                match_expressions: vec![],
            },
            disruptions_allowed: 0,
        };
        let mut c = ClusterSnapshot {
            nodes: vec![od("od"), node("a", 4000, 16)],
            pods: vec![pod("web1", "od", 100, 100), pod("web2", "od", 100, 100)],
            pdbs: vec![pdb],
        };
        assert_eq!(
            check(&c, &config()).reasons(),
            [Reason::PdbBlocks {
                pdb: "default/web".into(),
                pods_on_node: 2,
                disruptions_allowed: 0
            }]
        );
        c.pdbs[0].disruptions_allowed = 1;
        assert!(check(&c, &config()).is_go());
        c.pdbs[0].namespace = "other".into();
        c.pdbs[0].disruptions_allowed = 0;
        assert!(
            check(&c, &config()).is_go(),
            "PDBs of other namespaces do not apply"
        );
    }

    #[test]
    fn unmanaged_and_local_storage_follow_drain_options() {
        let mut bare = pod("bare", "od", 100, 100);
        bare.owner = OwnerKind::None;
        let mut cache = pod("cache", "od", 100, 100);
        cache.local_storage = true;
        let c = ClusterSnapshot {
            nodes: vec![od("od"), node("a", 4000, 16)],
            pods: vec![bare, cache],
            pdbs: vec![],
        };
        let mut config = config();
        config.drain.delete_emptydir_data = false;
        assert_eq!(
            check(&c, &config).reasons(),
            [
                Reason::UnmanagedPod {
                    pod: "default/bare".into()
                },
                Reason::LocalStorage {
                    pod: "default/cache".into()
                }
            ]
        );
        config.drain.force = true;
        config.drain.delete_emptydir_data = true;
        assert!(check(&c, &config).is_go());
    }

    #[test]
    fn daemonset_mirror_and_finished_pods_do_not_move() {
        let mut ds = pod("ds", "od", 3000, 100);
        ds.owner = OwnerKind::DaemonSet;
        let mut mirror = pod("static", "od", 3000, 100);
        mirror.mirror = true;
        let mut done = pod("job", "od", 3000, 100);
        done.terminal = true;
        let c = ClusterSnapshot {
            nodes: vec![od("od"), node("a", 1000, 16)],
            pods: vec![ds, mirror, done],
            pdbs: vec![],
        };
        assert!(check(&c, &config()).is_go());
    }

    #[test]
    fn buffer_is_kept() {
        let c = ClusterSnapshot {
            nodes: vec![od("od"), node("a", 4000, 16)],
            pods: vec![pod("web1", "od", 3800, 1024)],
            pdbs: vec![],
        };
        let v = check(&c, &Config::default());
        assert_eq!(
            v.reasons(),
            [Reason::BufferTooSmall {
                resource: "cpu".into(),
                free_percent: 5,
                required_percent: 10
            }]
        );
        assert_eq!(
            v.to_string(),
            "wait: cpu free after removal would be 5%, buffer is 10%"
        );
    }

    #[test]
    fn missing_candidate() {
        let c = ClusterSnapshot::default();
        assert_eq!(
            check(&c, &config()).reasons(),
            [Reason::CandidateMissing {
                instance: "i-od".into()
            }]
        );
    }

    #[test]
    fn index_judges_many_candidates() {
        let c = ClusterSnapshot {
            nodes: vec![od("od"), od("od2"), node("a", 4000, 16)],
            pods: vec![pod("web1", "od", 3000, 1024), pod("web2", "od2", 500, 1024)],
            pdbs: vec![],
        };
        let config = config();
        let view = ClusterView::new(c.clone());
        let index = SafetyIndex::new(&view, &config);
        assert!(index.check("i-od").is_go());
        assert!(index.check("i-od2").is_go());
    }
}
