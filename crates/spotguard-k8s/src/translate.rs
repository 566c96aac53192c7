//! Translation of Kubernetes nodes, pods and PodDisruptionBudgets into the core model. The
//! watch-backed cache the snapshots are read from is [`crate::cache::SnapshotCache`].
//!
//! The translation is exact: quantities are parsed into integers ([`crate::quantity`]), a
//! pod's requests are counted as the scheduler counts them, and anything Spot Guard cannot
//! translate is an [`Error`] naming the object and the field.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, Node as KNode, NodeSelectorRequirement, NodeSpec, NodeStatus, Pod as KPod, PodSpec,
    Taint as KTaint, Toleration as KToleration,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector as KLabelSelector, LabelSelectorRequirement,
};
use spotguard_core::model::{
    instance_id_from_provider_id, CapacityType, ClusterSnapshot, LabelSelector, Node,
    NodeSelectorTerm, OwnerKind, Pdb, Pod, Resources, SelectorOperator, SelectorRequirement, Taint,
    TaintEffect, Toleration, TolerationOperator,
};

use crate::error::{object_name, Error};
use crate::quantity;

/// The annotation the kubelet puts on mirror pods of static pods.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// One label that tells a node's capacity type, with the values meaning spot and on-demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityLabel {
    /// Label key.
    pub key: String,
    /// Values meaning spot capacity.
    pub spot: Vec<String>,
    /// Values meaning on-demand capacity.
    pub on_demand: Vec<String>,
}

impl CapacityLabel {
    /// A label with its spot and on-demand values.
    pub fn new(key: &str, spot: &[&str], on_demand: &[&str]) -> Self {
        Self {
            key: key.into(),
            spot: spot.iter().map(|s| s.to_string()).collect(),
            on_demand: on_demand.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The capacity-type labels, tried in order; the first one present on a node decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityLabels(pub Vec<CapacityLabel>);

impl Default for CapacityLabels {
    /// EKS managed node groups, Karpenter and the older `node.kubernetes.io/lifecycle`.
    fn default() -> Self {
        Self(vec![
            CapacityLabel::new("eks.amazonaws.com/capacityType", &["SPOT"], &["ON_DEMAND"]),
            CapacityLabel::new("karpenter.sh/capacity-type", &["spot"], &["on-demand"]),
            CapacityLabel::new(
                "node.kubernetes.io/lifecycle",
                &["spot"],
                &["normal", "on-demand"],
            ),
        ])
    }
}

impl CapacityLabels {
    /// The capacity type the labels say.
    pub fn capacity_type(&self, labels: &BTreeMap<String, String>) -> CapacityType {
        for label in &self.0 {
            if let Some(value) = labels.get(&label.key) {
                if label.spot.contains(value) {
                    return CapacityType::Spot;
                }
                if label.on_demand.contains(value) {
                    return CapacityType::OnDemand;
                }
            }
        }
        CapacityType::Unknown
    }
}

fn taint_from_k8s(taint: &KTaint, object: &str) -> Result<Taint, Error> {
    let effect = TaintEffect::parse(&taint.effect).ok_or_else(|| Error::Invalid {
        object: object.to_string(),
        field: format!("spec.taints[{}].effect", taint.key),
        message: format!("unknown taint effect {:?}", taint.effect),
    })?;
    Ok(Taint {
        key: taint.key.clone(),
        value: taint.value.clone().unwrap_or_default(),
        effect,
    })
}

/// Translates a node.
pub fn node_from_k8s(node: &KNode, labels: &CapacityLabels) -> Result<Node, Error> {
    translate_node(node, labels, true)
}

/// Translates a node without its labels and annotations (`labels` and `annotations` empty;
/// the capacity type is still read from the labels): what an agent keeps of every node.
pub fn node_from_k8s_without_metadata(
    node: &KNode,
    labels: &CapacityLabels,
) -> Result<Node, Error> {
    translate_node(node, labels, false)
}

fn translate_node(node: &KNode, labels: &CapacityLabels, metadata: bool) -> Result<Node, Error> {
    // Borrowed, not cloned: a node's status carries its image list, often hundreds of entries.
    let (no_spec, no_status, no_labels) = Default::default();
    let spec: &NodeSpec = node.spec.as_ref().unwrap_or(&no_spec);
    let status: &NodeStatus = node.status.as_ref().unwrap_or(&no_status);
    let node_labels: &BTreeMap<String, String> =
        node.metadata.labels.as_ref().unwrap_or(&no_labels);
    let name = node.metadata.name.clone().unwrap_or_default();
    let object = object_name("node", None, &name);
    let taints = spec
        .taints
        .iter()
        .flatten()
        .map(|t| taint_from_k8s(t, &object))
        .collect::<Result<Vec<_>, _>>()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let amount = |key: &str, cpu: bool| -> Result<u64, Error> {
        match status.allocatable.as_ref().and_then(|a| a.get(key)) {
            None => Ok(0),
            Some(KQuantity(q)) => {
                let field = format!("status.allocatable.{key}");
                if cpu {
                    quantity::cpu_millis(q, &object, &field)
                } else {
                    quantity::units(q, &object, &field)
                }
            }
        }
    };
    Ok(Node {
        instance_id: spec
            .provider_id
            .as_deref()
            .and_then(instance_id_from_provider_id),
        capacity_type: labels.capacity_type(node_labels),
        ready,
        unschedulable: spec.unschedulable.unwrap_or(false),
        taints,
        allocatable: Resources::new(
            amount("cpu", true)?,
            amount("memory", false)?,
            amount("pods", false)?,
        ),
        labels: if metadata {
            node_labels.clone()
        } else {
            BTreeMap::new()
        },
        annotations: match &node.metadata.annotations {
            Some(a) if metadata => a.clone(),
            _ => BTreeMap::new(),
        },
        name,
    })
}

fn owner_kind(pod: &KPod) -> OwnerKind {
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    match controller.map(|r| r.kind.as_str()) {
        None => OwnerKind::None,
        Some("ReplicaSet") => OwnerKind::ReplicaSet,
        Some("StatefulSet") => OwnerKind::StatefulSet,
        Some("DaemonSet") => OwnerKind::DaemonSet,
        Some("Job") => OwnerKind::Job,
        Some("Node") => OwnerKind::Node,
        Some(other) => OwnerKind::Other(other.to_string()),
    }
}

/// CPU millicores and memory bytes of a resource list.
fn amounts(
    list: Option<&BTreeMap<String, KQuantity>>,
    object: &str,
    field: &str,
) -> Result<(u64, u64), Error> {
    let Some(list) = list else {
        return Ok((0, 0));
    };
    let cpu = match list.get("cpu") {
        Some(q) => quantity::cpu_millis(&q.0, object, &format!("{field}.cpu"))?,
        None => 0,
    };
    let memory = match list.get("memory") {
        Some(q) => quantity::units(&q.0, object, &format!("{field}.memory"))?,
        None => 0,
    };
    Ok((cpu, memory))
}

fn container_requests(c: &Container, object: &str, list: &str) -> Result<(u64, u64), Error> {
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    amounts(
        requests,
        object,
        &format!("spec.{list}[{}].resources.requests", c.name),
    )
}

fn add(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0 + b.0, a.1 + b.1)
}

fn max(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0.max(b.0), a.1.max(b.1))
}

/// A pod's requests as the scheduler counts them: the sum of the containers, or the largest
/// init container if that is more (restartable "sidecar" init containers are added to
/// everything after them), plus the pod overhead. Pod-level `spec.resources.requests`, when
/// set, replace the container sum for the resources they name.
pub fn effective_requests(pod: &KPod) -> Result<Resources, Error> {
    let object = object_name(
        "pod",
        pod.metadata.namespace.as_deref(),
        pod.metadata.name.as_deref().unwrap_or_default(),
    );
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Resources::new(0, 0, 1));
    };
    let mut sum = (0, 0);
    for c in &spec.containers {
        sum = add(sum, container_requests(c, &object, "containers")?);
    }
    let mut sidecars = (0, 0);
    let mut init_peak = (0, 0);
    for c in spec.init_containers.iter().flatten() {
        let own = container_requests(c, &object, "initContainers")?;
        if c.restart_policy.as_deref() == Some("Always") {
            sum = add(sum, own);
            sidecars = add(sidecars, own);
            init_peak = max(init_peak, sidecars);
        } else {
            init_peak = max(init_peak, add(own, sidecars));
        }
    }
    let mut total = max(sum, init_peak);
    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        let (cpu, memory) = amounts(Some(pod_level), &object, "spec.resources.requests")?;
        if pod_level.contains_key("cpu") {
            total.0 = cpu;
        }
        if pod_level.contains_key("memory") {
            total.1 = memory;
        }
    }
    total = add(
        total,
        amounts(spec.overhead.as_ref(), &object, "spec.overhead")?,
    );
    Ok(Resources::new(total.0, total.1, 1))
}

fn operator(op: &str, object: &str, field: &str) -> Result<SelectorOperator, Error> {
    Ok(match op {
        "In" => SelectorOperator::In,
        "NotIn" => SelectorOperator::NotIn,
        "Exists" => SelectorOperator::Exists,
        "DoesNotExist" => SelectorOperator::DoesNotExist,
        "Gt" => SelectorOperator::Gt,
        "Lt" => SelectorOperator::Lt,
        other => {
            return Err(Error::Invalid {
                object: object.to_string(),
                field: field.to_string(),
                message: format!("unknown operator {other:?}"),
            })
        }
    })
}

fn node_requirement(
    r: &NodeSelectorRequirement,
    object: &str,
    field: &str,
) -> Result<SelectorRequirement, Error> {
    Ok(SelectorRequirement {
        key: r.key.clone(),
        operator: operator(&r.operator, object, field)?,
        values: r.values.clone().unwrap_or_default(),
    })
}

fn toleration(t: &KToleration, object: &str) -> Result<Toleration, Error> {
    let operator = match t.operator.as_deref() {
        None | Some("Equal") => TolerationOperator::Equal,
        Some("Exists") => TolerationOperator::Exists,
        Some(other) => {
            return Err(Error::Invalid {
                object: object.to_string(),
                field: "spec.tolerations".into(),
                message: format!("unknown toleration operator {other:?}"),
            })
        }
    };
    let effect = match t.effect.as_deref() {
        None | Some("") => None,
        Some(e) => Some(TaintEffect::parse(e).ok_or_else(|| Error::Invalid {
            object: object.to_string(),
            field: "spec.tolerations".into(),
            message: format!("unknown toleration effect {e:?}"),
        })?),
    };
    Ok(Toleration {
        key: t.key.clone().filter(|k| !k.is_empty()),
        operator,
        value: t.value.clone().unwrap_or_default(),
        effect,
    })
}

/// Translates a pod.
pub fn pod_from_k8s(pod: &KPod) -> Result<Pod, Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let object = object_name("pod", Some(&namespace), &name);
    let no_spec = PodSpec::default();
    let spec: &PodSpec = pod.spec.as_ref().unwrap_or(&no_spec);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let mut required_affinity = Vec::new();
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    for (i, term) in required
        .iter()
        .flat_map(|r| r.node_selector_terms.iter())
        .enumerate()
    {
        let field = format!("spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}]");
        let match_expressions = term
            .match_expressions
            .iter()
            .flatten()
            .map(|r| node_requirement(r, &object, &field))
            .collect::<Result<Vec<_>, _>>()?;
        required_affinity.push(NodeSelectorTerm { match_expressions });
    }
    Ok(Pod {
        node: spec.node_name.clone().filter(|n| !n.is_empty()),
        owner: owner_kind(pod),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        requests: effective_requests(pod)?,
        node_selector: spec.node_selector.clone().unwrap_or_default(),
        required_affinity,
        tolerations: spec
            .tolerations
            .iter()
            .flatten()
            .map(|t| toleration(t, &object))
            .collect::<Result<Vec<_>, _>>()?,
        mirror: pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION)),
        local_storage: spec.volumes.iter().flatten().any(|v| v.empty_dir.is_some()),
        terminal: matches!(phase, Some("Succeeded" | "Failed")),
        namespace,
        name,
    })
}

fn label_selector(selector: &KLabelSelector, object: &str) -> Result<LabelSelector, Error> {
    let requirement = |r: &LabelSelectorRequirement| -> Result<SelectorRequirement, Error> {
        let op = operator(&r.operator, object, "spec.selector.matchExpressions")?;
        if matches!(op, SelectorOperator::Gt | SelectorOperator::Lt) {
            return Err(Error::Invalid {
                object: object.to_string(),
                field: "spec.selector.matchExpressions".into(),
                message: format!("operator {:?} is not valid in a label selector", r.operator),
            });
        }
        Ok(SelectorRequirement {
            key: r.key.clone(),
            operator: op,
            values: r.values.clone().unwrap_or_default(),
        })
    };
    Ok(LabelSelector {
        match_labels: selector.match_labels.clone().unwrap_or_default(),
        match_expressions: selector
            .match_expressions
            .iter()
            .flatten()
            .map(requirement)
            .collect::<Result<Vec<_>, _>>()?,
    })
}

/// Translates a PodDisruptionBudget. A PDB without a selector selects no pod in `policy/v1`;
/// it is left out (`Ok(None)`), since it can never block an eviction.
pub fn pdb_from_k8s(pdb: &PodDisruptionBudget) -> Result<Option<Pdb>, Error> {
    let namespace = pdb.metadata.namespace.clone().unwrap_or_default();
    let name = pdb.metadata.name.clone().unwrap_or_default();
    let object = object_name("poddisruptionbudget", Some(&namespace), &name);
    let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return Ok(None);
    };
    let allowed = pdb
        .status
        .as_ref()
        .and_then(|s| s.disruptions_allowed)
        .unwrap_or(0);
    Ok(Some(Pdb {
        selector: label_selector(selector, &object)?,
        disruptions_allowed: u32::try_from(allowed).unwrap_or(0),
        namespace,
        name,
    }))
}

/// The bytes of `namespace/name`, without building the string.
fn key_bytes<'a>(namespace: &'a str, name: &'a str) -> impl Iterator<Item = u8> + 'a {
    namespace
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(name.bytes())
}

/// `namespace/name` ordering.
fn by_key(a: (&str, &str), b: (&str, &str)) -> Ordering {
    if a.0 == b.0 {
        return a.1.cmp(b.1);
    }
    key_bytes(a.0, a.1).cmp(key_bytes(b.0, b.1))
}

/// The order of a snapshot: nodes by name, PDBs by `namespace/name`, and pods by node name
/// (pods without a node last), then `namespace/name`, so a node's pods are one run.
pub fn sort_snapshot(snapshot: &mut ClusterSnapshot) {
    snapshot.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    snapshot
        .pdbs
        .sort_by(|a, b| by_key((&a.namespace, &a.name), (&b.namespace, &b.name)));
    snapshot.pods.sort_by(|a, b| {
        a.node
            .is_none()
            .cmp(&b.node.is_none())
            .then_with(|| a.node.cmp(&b.node))
            .then_with(|| by_key((&a.namespace, &a.name), (&b.namespace, &b.name)))
    });
}

/// Translates whole lists into a [`ClusterSnapshot`], ordered by [`sort_snapshot`].
pub fn snapshot_from_k8s(
    nodes: &[Arc<KNode>],
    pods: &[Arc<KPod>],
    pdbs: &[Arc<PodDisruptionBudget>],
    labels: &CapacityLabels,
) -> Result<ClusterSnapshot, Error> {
    let mut snapshot = ClusterSnapshot {
        nodes: nodes
            .iter()
            .map(|n| node_from_k8s(n, labels))
            .collect::<Result<_, _>>()?,
        pods: pods
            .iter()
            .map(|p| pod_from_k8s(p))
            .collect::<Result<_, _>>()?,
        pdbs: pdbs
            .iter()
            .filter_map(|p| pdb_from_k8s(p).transpose())
            .collect::<Result<_, _>>()?,
    };
    sort_snapshot(&mut snapshot);
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> KPod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn requests_follow_the_scheduler() {
        let p = pod(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "0.25", "memory": "1e6"}}}
                ],
                "initContainers": [
                    {"name": "big-init", "resources": {"requests": {"cpu": "1", "memory": "10Mi"}}}
                ],
                "overhead": {"cpu": "10m", "memory": "1Ki"}
            }
        }));
        let r = effective_requests(&p).unwrap();
        // cpu: max(350, 1000) + 10; memory: max(64Mi + 1e6, 10Mi) + 1Ki
        assert_eq!(r, Resources::new(1010, 67_108_864 + 1_000_000 + 1024, 1));
    }

    #[test]
    fn sidecar_init_containers_add_up() {
        let p = pod(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "containers": [{"name": "app", "resources": {"requests": {"cpu": "200m"}}}],
                "initContainers": [
                    {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
                    {"name": "migrate", "resources": {"requests": {"cpu": "250m"}}}
                ]
            }
        }));
        // containers + sidecar = 300; init peak = 250 + 100 = 350
        assert_eq!(effective_requests(&p).unwrap().cpu_millis, 350);
    }

    #[test]
    fn malformed_request_names_pod_and_field() {
        let p = pod(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "resources": {"requests": {"memory": "12XB"}}}]}
        }));
        let err = pod_from_k8s(&p).unwrap_err().to_string();
        assert!(err.contains("pod shop/web"), "{err}");
        assert!(
            err.contains("spec.containers[app].resources.requests.memory"),
            "{err}"
        );
    }

    #[test]
    fn capacity_labels_in_order() {
        let labels = CapacityLabels::default();
        let l = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        for (key, value, expected) in [
            ("eks.amazonaws.com/capacityType", "SPOT", CapacityType::Spot),
            (
                "eks.amazonaws.com/capacityType",
                "ON_DEMAND",
                CapacityType::OnDemand,
            ),
            (
                "karpenter.sh/capacity-type",
                "on-demand",
                CapacityType::OnDemand,
            ),
            ("karpenter.sh/capacity-type", "spot", CapacityType::Spot),
            (
                "node.kubernetes.io/lifecycle",
                "normal",
                CapacityType::OnDemand,
            ),
            ("node.kubernetes.io/lifecycle", "spot", CapacityType::Spot),
            ("other", "spot", CapacityType::Unknown),
        ] {
            assert_eq!(
                labels.capacity_type(&l(key, value)),
                expected,
                "{key}={value}"
            );
        }
        let custom = CapacityLabels(vec![CapacityLabel::new("pool", &["cheap"], &["steady"])]);
        assert_eq!(
            custom.capacity_type(&l("pool", "cheap")),
            CapacityType::Spot
        );
    }
}
