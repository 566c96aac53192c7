//! The facts Spot Guard decides on: Auto Scaling groups, Kubernetes nodes, pods and
//! PodDisruptionBudgets.
//!
//! Adapters translate SDK and API objects into these types; the core never sees an AWS or a
//! Kubernetes type. Quantities are integers: CPU in millicores, memory in bytes.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::ports::CloudError;

/// An EC2 instance id such as `i-0abc123`.
pub type InstanceId = String;

/// Lifecycle state of an instance in an Auto Scaling group, as Auto Scaling reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum LifecycleState {
    /// `Pending`: launching.
    Pending,
    /// `Pending:Wait`: held by a launch lifecycle hook.
    PendingWait,
    /// `Pending:Proceed`: a launch lifecycle hook completed.
    PendingProceed,
    /// `Quarantined`.
    Quarantined,
    /// `InService`: running and counted.
    InService,
    /// `Terminating`.
    Terminating,
    /// `Terminating:Wait`: held by a termination lifecycle hook.
    TerminatingWait,
    /// `Terminating:Proceed`.
    TerminatingProceed,
    /// `Terminated`.
    Terminated,
    /// `Detaching`.
    Detaching,
    /// `Detached`.
    Detached,
    /// `EnteringStandby`.
    EnteringStandby,
    /// `Standby`.
    Standby,
    /// Any other state (warm pools), kept verbatim.
    Other(String),
}

impl LifecycleState {
    /// Parses the Auto Scaling spelling (`InService`, `Pending:Wait`, ...).
    ///
    /// ```
    /// use spotguard_core::model::LifecycleState;
    /// assert_eq!(LifecycleState::parse("Pending:Wait"), LifecycleState::PendingWait);
    /// assert_eq!(LifecycleState::parse("Warmed:Running"), LifecycleState::Other("Warmed:Running".into()));
    /// ```
    pub fn parse(s: &str) -> Self {
        match s {
            "Pending" => Self::Pending,
            "Pending:Wait" => Self::PendingWait,
            "Pending:Proceed" => Self::PendingProceed,
            "Quarantined" => Self::Quarantined,
            "InService" => Self::InService,
            "Terminating" => Self::Terminating,
            "Terminating:Wait" => Self::TerminatingWait,
            "Terminating:Proceed" => Self::TerminatingProceed,
            "Terminated" => Self::Terminated,
            "Detaching" => Self::Detaching,
            "Detached" => Self::Detached,
            "EnteringStandby" => Self::EnteringStandby,
            "Standby" => Self::Standby,
            other => Self::Other(other.to_string()),
        }
    }

    /// True while the instance is still launching.
    pub fn is_pending(&self) -> bool {
        matches!(
            self,
            Self::Pending | Self::PendingWait | Self::PendingProceed
        )
    }

    /// True once the instance is leaving the group.
    pub fn is_leaving(&self) -> bool {
        matches!(
            self,
            Self::Terminating
                | Self::TerminatingWait
                | Self::TerminatingProceed
                | Self::Terminated
                | Self::Detaching
                | Self::Detached
        )
    }
}

/// Health status Auto Scaling reports for an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthStatus {
    /// `Healthy`.
    Healthy,
    /// `Unhealthy`.
    Unhealthy,
}

/// One instance of an Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Instance id.
    pub id: InstanceId,
    /// Lifecycle state.
    pub lifecycle: LifecycleState,
    /// Health status.
    pub health: HealthStatus,
}

impl Instance {
    /// True when the instance is `InService` and `Healthy`: it counts as capacity.
    pub fn is_serving(&self) -> bool {
        self.lifecycle == LifecycleState::InService && self.health == HealthStatus::Healthy
    }
}

/// An Auto Scaling group as described by the cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Minimum size.
    pub min: u32,
    /// Maximum size.
    pub max: u32,
    /// Desired capacity.
    pub desired: u32,
    /// Instances currently attached.
    pub instances: Vec<Instance>,
    /// Whether Capacity Rebalancing is enabled on the group (it then launches replacements
    /// on its own when a rebalance recommendation arrives).
    pub capacity_rebalance: bool,
}

/// A group's size bounds, and the one check of a desired capacity against them that every
/// [`Cloud`](crate::ports::Cloud) makes (and the engine before it asks for a raise).
///
/// ```
/// use spotguard_core::model::SizeBounds;
/// use spotguard_core::ports::CloudError;
/// let bounds = SizeBounds { min: 1, max: 3 };
/// assert_eq!(bounds.check("web-spot", 3), Ok(()));
/// assert!(matches!(bounds.check("web-spot", 4), Err(CloudError::AboveMax { max: 3, .. })));
/// assert!(matches!(bounds.decrement("web-spot", 1), Err(CloudError::BelowMin { min: 1, .. })));
/// assert_eq!(bounds.decrement("web-spot", 2), Ok(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeBounds {
    /// Minimum size.
    pub min: u32,
    /// Maximum size.
    pub max: u32,
}

impl SizeBounds {
    /// `Ok` when `desired` is within the bounds of `group`; otherwise the error naming the group,
    /// the value asked for and the bound it crosses.
    pub fn check(&self, group: &str, desired: u32) -> Result<(), CloudError> {
        if desired > self.max {
            return Err(CloudError::AboveMax {
                group: group.to_string(),
                desired,
                max: self.max,
            });
        }
        if desired < self.min {
            return Err(CloudError::BelowMin {
                group: group.to_string(),
                desired,
                min: self.min,
            });
        }
        Ok(())
    }

    /// The desired capacity after removing one instance from `desired`
    /// (`ShouldDecrementDesiredCapacity`), checked like [`check`](Self::check).
    pub fn decrement(&self, group: &str, desired: u32) -> Result<u32, CloudError> {
        let lowered = desired.checked_sub(1).ok_or_else(|| CloudError::BelowMin {
            group: group.to_string(),
            desired: 0,
            min: self.min,
        })?;
        self.check(group, lowered).map(|()| lowered)
    }
}

impl Group {
    /// The group's size bounds.
    pub fn bounds(&self) -> SizeBounds {
        SizeBounds {
            min: self.min,
            max: self.max,
        }
    }

    /// Number of instances that are `InService` and `Healthy`.
    pub fn serving_count(&self) -> u32 {
        self.instances.iter().filter(|i| i.is_serving()).count() as u32
    }

    /// Whether the instance is attached to this group (in any state but leaving).
    pub fn holds(&self, instance: &str) -> bool {
        self.instances
            .iter()
            .any(|i| i.id == instance && !i.lifecycle.is_leaving())
    }

    /// Ids of all attached instances.
    pub fn instance_ids(&self) -> Vec<InstanceId> {
        self.instances.iter().map(|i| i.id.clone()).collect()
    }
}

/// Status code of a scaling activity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ActivityStatus {
    /// Any of the waiting / in-progress codes (`PendingSpotBidPlacement`, `InProgress`,
    /// `PreInService`, `MidLifecycleAction`, ...).
    InProgress,
    /// `Successful`.
    Successful,
    /// `Failed`.
    Failed,
    /// `Cancelled`.
    Cancelled,
}

impl ActivityStatus {
    /// Parses an Auto Scaling `StatusCode`.
    ///
    /// ```
    /// use spotguard_core::model::ActivityStatus;
    /// assert_eq!(ActivityStatus::parse("WaitingForSpotInstanceId"), ActivityStatus::InProgress);
    /// assert_eq!(ActivityStatus::parse("Failed"), ActivityStatus::Failed);
    /// ```
    pub fn parse(code: &str) -> Self {
        match code {
            "Successful" => Self::Successful,
            "Failed" => Self::Failed,
            "Cancelled" => Self::Cancelled,
            _ => Self::InProgress,
        }
    }
}

/// A scaling activity of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// Activity id.
    pub id: String,
    /// Group the activity belongs to.
    pub group: String,
    /// Status.
    pub status: ActivityStatus,
    /// When it started.
    pub start: SystemTime,
    /// When it ended, if it has.
    pub end: Option<SystemTime>,
    /// Human description (`Launching a new EC2 instance: i-...`).
    pub description: String,
    /// Status message, e.g. the `InsufficientInstanceCapacity` text of a failed launch.
    pub status_message: Option<String>,
}

impl Activity {
    /// The time the activity last changed: its end if it ended, else its start.
    pub fn last_change(&self) -> SystemTime {
        self.end.unwrap_or(self.start)
    }
}

/// Whether a node runs on spot or on-demand capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CapacityType {
    /// Spot capacity.
    Spot,
    /// On-demand capacity.
    OnDemand,
    /// No known capacity-type label.
    Unknown,
}

/// Effect of a taint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaintEffect {
    /// `NoSchedule`.
    NoSchedule,
    /// `PreferNoSchedule`.
    PreferNoSchedule,
    /// `NoExecute`.
    NoExecute,
}

impl TaintEffect {
    /// The Kubernetes spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoSchedule => "NoSchedule",
            Self::PreferNoSchedule => "PreferNoSchedule",
            Self::NoExecute => "NoExecute",
        }
    }

    /// Parses the Kubernetes spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "NoSchedule" => Some(Self::NoSchedule),
            "PreferNoSchedule" => Some(Self::PreferNoSchedule),
            "NoExecute" => Some(Self::NoExecute),
            _ => None,
        }
    }
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (empty when none).
    #[serde(default)]
    pub value: String,
    /// Effect.
    pub effect: TaintEffect,
}

/// Resource amounts in integers: CPU in millicores, memory in bytes, pods as a count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Pod slots.
    pub pods: u64,
}

impl Resources {
    /// Builds a resource amount.
    pub const fn new(cpu_millis: u64, memory_bytes: u64, pods: u64) -> Self {
        Self {
            cpu_millis,
            memory_bytes,
            pods,
        }
    }

    /// Whether `self` holds at least `other` in every dimension.
    pub fn covers(&self, other: &Resources) -> bool {
        self.cpu_millis >= other.cpu_millis
            && self.memory_bytes >= other.memory_bytes
            && self.pods >= other.pods
    }

    /// `self - other`, floored at zero in every dimension.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            pods: self.pods.saturating_sub(other.pods),
        }
    }

    /// `self + other`.
    pub fn add(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis + other.cpu_millis,
            memory_bytes: self.memory_bytes + other.memory_bytes,
            pods: self.pods + other.pods,
        }
    }
}

/// A Kubernetes node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// EC2 instance id, from `spec.providerID` (`aws:///<zone>/<instance-id>`).
    pub instance_id: Option<InstanceId>,
    /// Capacity type from the provisioner's label.
    pub capacity_type: CapacityType,
    /// `Ready` condition is `True`.
    pub ready: bool,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// Taints.
    pub taints: Vec<Taint>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations Spot Guard reads or writes.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Allocatable resources.
    pub allocatable: Resources,
}

impl Node {
    /// Whether new pods may be scheduled here: Ready and not cordoned.
    pub fn is_schedulable(&self) -> bool {
        self.ready && !self.unschedulable
    }
}

/// Extracts the instance id from a provider id such as `aws:///eu-west-1a/i-0abc`.
///
/// ```
/// use spotguard_core::model::instance_id_from_provider_id;
/// assert_eq!(instance_id_from_provider_id("aws:///eu-west-1a/i-0abc"), Some("i-0abc".to_string()));
/// assert_eq!(instance_id_from_provider_id("gce://p/z/n"), None);
/// ```
pub fn instance_id_from_provider_id(provider_id: &str) -> Option<InstanceId> {
    let rest = provider_id.strip_prefix("aws://")?;
    let id = rest.rsplit('/').next()?;
    id.starts_with("i-").then(|| id.to_string())
}

/// What owns a pod, which decides how drain treats it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OwnerKind {
    /// A ReplicaSet (Deployment).
    ReplicaSet,
    /// A StatefulSet.
    StatefulSet,
    /// A DaemonSet: skipped by drain, runs on every node.
    DaemonSet,
    /// A Job.
    Job,
    /// The node itself (a static / mirror pod).
    Node,
    /// Another controller kind.
    Other(String),
    /// No controller: an unmanaged pod that nothing recreates.
    None,
}

/// Operator of a node-affinity requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SelectorOperator {
    /// Label value is one of the values.
    In,
    /// Label is absent or its value is none of the values.
    NotIn,
    /// Label is present.
    Exists,
    /// Label is absent.
    DoesNotExist,
    /// Label value, as an integer, is greater than the single value.
    Gt,
    /// Label value, as an integer, is less than the single value.
    Lt,
}

/// One requirement of a node selector term or label selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SelectorRequirement {
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: SelectorOperator,
    /// Values.
    #[serde(default)]
    pub values: Vec<String>,
}

impl SelectorRequirement {
    /// Whether the labels satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
            SelectorOperator::Gt | SelectorOperator::Lt => {
                let (Some(v), Some(bound)) = (value, self.values.first()) else {
                    return false;
                };
                match (v.parse::<i64>(), bound.parse::<i64>()) {
                    (Ok(v), Ok(b)) if self.operator == SelectorOperator::Gt => v > b,
                    (Ok(v), Ok(b)) => v < b,
                    _ => false,
                }
            }
        }
    }
}

/// A term of required node affinity: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeSelectorTerm {
    /// Requirements on node labels (ANDed).
    pub match_expressions: Vec<SelectorRequirement>,
}

/// Operator of a toleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TolerationOperator {
    /// Key and value must match.
    Equal,
    /// Key must match (any value); with an empty key, tolerates everything.
    Exists,
}

/// A pod toleration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Toleration {
    /// Key; `None` with `Exists` tolerates every taint.
    pub key: Option<String>,
    /// Operator.
    pub operator: TolerationOperator,
    /// Value for `Equal`.
    #[serde(default)]
    pub value: String,
    /// Effect; `None` matches every effect.
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Whether this toleration tolerates the taint (Kubernetes' `ToleratesTaint`).
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        match (&self.key, self.operator) {
            (None, TolerationOperator::Exists) => true,
            (None, TolerationOperator::Equal) => false,
            (Some(k), _) if *k != taint.key => false,
            (Some(_), TolerationOperator::Exists) => true,
            (Some(_), TolerationOperator::Equal) => self.value == taint.value,
        }
    }
}

/// A pod, reduced to what scheduling and drain need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Node it is bound to, if any.
    pub node: Option<String>,
    /// Controller kind.
    pub owner: OwnerKind,
    /// Labels (for PDB selectors).
    pub labels: BTreeMap<String, String>,
    /// Effective requests as the scheduler counts them (max of init containers and the sum of
    /// containers, plus overhead); `pods` is 1.
    pub requests: Resources,
    /// `spec.nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity terms (ORed); empty means no constraint.
    pub required_affinity: Vec<NodeSelectorTerm>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// A mirror pod of a static pod (not evictable).
    pub mirror: bool,
    /// Uses `emptyDir` local storage, lost on eviction.
    pub local_storage: bool,
    /// Pod has finished (`Succeeded` or `Failed`): it holds no resources.
    #[serde(default)]
    pub terminal: bool,
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether a drain moves this pod: not a DaemonSet pod, not a mirror pod, not finished.
    pub fn is_evictable(&self) -> bool {
        !self.mirror
            && !self.terminal
            && !matches!(self.owner, OwnerKind::DaemonSet | OwnerKind::Node)
    }

    /// Whether the pod's node selector and required node affinity admit the node's labels.
    pub fn admits_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && (self.required_affinity.is_empty()
                || self
                    .required_affinity
                    .iter()
                    .any(|term| term.match_expressions.iter().all(|r| r.matches(labels))))
    }

    /// Whether the pod tolerates every `NoSchedule`/`NoExecute` taint of the node.
    pub fn tolerates_taints(&self, taints: &[Taint]) -> bool {
        taints
            .iter()
            .filter(|t| t.effect != TaintEffect::PreferNoSchedule)
            .all(|t| self.tolerations.iter().any(|tol| tol.tolerates(t)))
    }
}

/// A label selector (`matchLabels` and `matchExpressions`, ANDed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LabelSelector {
    /// Exact label matches.
    pub match_labels: BTreeMap<String, String>,
    /// Expressions.
    pub match_expressions: Vec<SelectorRequirement>,
}

impl LabelSelector {
    /// Whether the labels match. An empty selector matches everything, as in `policy/v1`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// A PodDisruptionBudget with its current allowance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pdb {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Pod selector.
    pub selector: LabelSelector,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: u32,
}

impl Pdb {
    /// Whether the PDB covers the pod.
    pub fn covers(&self, pod: &Pod) -> bool {
        pod.namespace == self.namespace && self.selector.matches(&pod.labels)
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A consistent view of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// PodDisruptionBudgets.
    pub pdbs: Vec<Pdb>,
}

impl ClusterSnapshot {
    /// The node backed by the instance.
    pub fn node_for_instance(&self, instance: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.instance_id.as_deref() == Some(instance))
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Pods bound to the node.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .iter()
            .filter(move |p| p.node.as_deref() == Some(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_check_names_the_group_the_value_and_the_bound() {
        let b = SizeBounds { min: 1, max: 3 };
        assert_eq!(b.check("g", 1), Ok(()));
        assert_eq!(b.check("g", 3), Ok(()));
        assert_eq!(
            b.check("g", 4),
            Err(CloudError::AboveMax {
                group: "g".into(),
                desired: 4,
                max: 3
            })
        );
        assert_eq!(
            b.check("g", 0),
            Err(CloudError::BelowMin {
                group: "g".into(),
                desired: 0,
                min: 1
            })
        );
        assert_eq!(b.decrement("g", 3), Ok(2));
        assert_eq!(
            b.decrement("g", 1),
            Err(CloudError::BelowMin {
                group: "g".into(),
                desired: 0,
                min: 1
            })
        );
        let empty = SizeBounds { min: 0, max: 0 };
        assert!(matches!(
            empty.decrement("g", 0),
            Err(CloudError::BelowMin {
                desired: 0,
                min: 0,
                ..
            })
        ));
    }
}
