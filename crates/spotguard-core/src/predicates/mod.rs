//! Predicates: pure functions of a snapshot, the time and the configuration that return a
//! [`Verdict`] with [`Reason`]s, never a bare bool. The reasons are what an operator reads in
//! logs and events, and what tests assert.
//!
//! The monitor asks them in order for each fallback entry: [`health()`] of the spot group,
//! then its [`stability()`], then the [`safety()`] of removing the on-demand node.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub mod health;
pub mod safety;
pub mod stability;

pub use health::health;
pub use safety::{safety, SafetyInput};
pub use stability::stability;

/// A predicate's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// The condition holds.
    Go,
    /// The condition does not hold (yet), for these reasons.
    Wait(Vec<Reason>),
}

impl Verdict {
    /// Builds a verdict from a list of reasons: empty means [`Verdict::Go`].
    pub fn from_reasons(reasons: Vec<Reason>) -> Self {
        if reasons.is_empty() {
            Self::Go
        } else {
            Self::Wait(reasons)
        }
    }

    /// True for [`Verdict::Go`].
    pub fn is_go(&self) -> bool {
        matches!(self, Self::Go)
    }

    /// The reasons (empty for `Go`).
    pub fn reasons(&self) -> &[Reason] {
        match self {
            Self::Go => &[],
            Self::Wait(r) => r,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Go => f.write_str("go"),
            Self::Wait(reasons) => {
                f.write_str("wait: ")?;
                for (i, r) in reasons.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{r}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a predicate said wait. Each variant names the group, node, pod or PDB it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reason {
    /// The group was not in the cloud's answer.
    GroupMissing {
        /// Group.
        group: String,
    },
    /// Fewer (or more) instances InService and Healthy than desired.
    CapacityMismatch {
        /// Group.
        group: String,
        /// InService and Healthy instances.
        in_service: u32,
        /// Desired capacity.
        desired: u32,
    },
    /// A scaling activity is in progress.
    ActivityInProgress {
        /// Group.
        group: String,
        /// The activity's description.
        description: String,
    },
    /// A scaling activity failed within the error window.
    RecentFailure {
        /// Group.
        group: String,
        /// How long ago it failed.
        ago: Duration,
        /// Its status message.
        message: String,
    },
    /// The group is not healthy now.
    NotHealthy {
        /// Group.
        group: String,
    },
    /// Healthy, but not for long enough.
    HealthyTooShort {
        /// Group.
        group: String,
        /// How long it has been healthy.
        healthy_for: Duration,
        /// How long it must be.
        required: Duration,
    },
    /// A scaling activity changed the group within the stability window.
    RecentScalingActivity {
        /// Group.
        group: String,
        /// How long ago.
        ago: Duration,
    },
    /// An InService spot instance has no node in the cluster yet.
    InstanceWithoutNode {
        /// Instance id.
        instance: String,
    },
    /// A spot node is not Ready.
    NodeNotReady {
        /// Node name.
        node: String,
    },
    /// The on-demand node to remove is not in the cluster.
    CandidateMissing {
        /// Instance id.
        instance: String,
    },
    /// A pod of the candidate node fits on no other node.
    PodDoesNotFit {
        /// `namespace/name`.
        pod: String,
        /// What it asked for that no node had.
        detail: String,
    },
    /// A PDB allows no disruption of pods on the candidate node.
    PdbBlocks {
        /// `namespace/name` of the PDB.
        pdb: String,
        /// How many of its pods run on the candidate.
        pods_on_node: u32,
        /// Its current allowance.
        disruptions_allowed: u32,
    },
    /// A pod would be lost: nothing recreates it and `drain.force` is off.
    UnmanagedPod {
        /// `namespace/name`.
        pod: String,
    },
    /// A pod uses local storage and `drain.delete_emptydir_data` is off.
    LocalStorage {
        /// `namespace/name`.
        pod: String,
    },
    /// After removal the cluster would keep less free capacity than the buffer.
    BufferTooSmall {
        /// `cpu` or `memory`.
        resource: String,
        /// Free percentage left after removal.
        free_percent: u32,
        /// Configured buffer.
        required_percent: u32,
    },
}

fn secs(d: &Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GroupMissing { group } => write!(f, "group {group} not found"),
            Self::CapacityMismatch {
                group,
                in_service,
                desired,
            } => write!(f, "group {group} has {in_service}/{desired} instances InService"),
            Self::ActivityInProgress { group, description } => {
                write!(f, "group {group} has a scaling activity in progress ({description})")
            }
            Self::RecentFailure {
                group,
                ago,
                message,
            } => write!(f, "group {group} had a failed scaling activity {} ago: {message}", secs(ago)),
            Self::NotHealthy { group } => write!(f, "group {group} is not healthy"),
            Self::HealthyTooShort {
                group,
                healthy_for,
                required,
            } => write!(
                f,
                "group {group} healthy for {} of the required {}",
                secs(healthy_for),
                secs(required)
            ),
            Self::RecentScalingActivity { group, ago } => {
                write!(f, "group {group} scaled {} ago", secs(ago))
            }
            Self::InstanceWithoutNode { instance } => {
                write!(f, "instance {instance} has not joined the cluster")
            }
            Self::NodeNotReady { node } => write!(f, "node {node} is not Ready"),
            Self::CandidateMissing { instance } => {
                write!(f, "no node found for on-demand instance {instance}")
            }
            Self::PodDoesNotFit { pod, detail } => {
                write!(f, "pod {pod} fits on no other node ({detail})")
            }
            Self::PdbBlocks {
                pdb,
                pods_on_node,
                disruptions_allowed,
            } => write!(
                f,
                "PDB {pdb} allows {disruptions_allowed} disruptions, {pods_on_node} of its pods are on the node"
            ),
            Self::UnmanagedPod { pod } => {
                write!(f, "pod {pod} has no controller and drain.force is off")
            }
            Self::LocalStorage { pod } => write!(
                f,
                "pod {pod} uses emptyDir storage and drain.delete_emptydir_data is off"
            ),
            Self::BufferTooSmall {
                resource,
                free_percent,
                required_percent,
            } => write!(
                f,
                "{resource} free after removal would be {free_percent}%, buffer is {required_percent}%"
            ),
        }
    }
}

/// `now - then`, zero when `then` is in the future.
pub(crate) fn elapsed(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Builders shared by the predicate tests.
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use crate::model::*;

    pub fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    pub fn group(name: &str, desired: u32, serving: u32) -> Group {
        Group {
            name: name.into(),
            min: 0,
            max: 100,
            desired,
            instances: (0..serving)
                .map(|i| Instance {
                    id: format!("i-{name}-{i}"),
                    lifecycle: LifecycleState::InService,
                    health: HealthStatus::Healthy,
                })
                .collect(),
            capacity_rebalance: false,
        }
    }

    pub fn activity(group: &str, status: ActivityStatus, start: SystemTime) -> Activity {
        Activity {
            id: format!("a-{group}"),
            group: group.into(),
            status,
            start,
            end: None,
            description: "Launching a new EC2 instance".into(),
            status_message: Some("We currently do not have sufficient capacity".into()),
        }
    }

    pub fn node(name: &str, cpu: u64, mem_gib: u64) -> Node {
        Node {
            name: name.into(),
            instance_id: Some(format!("i-{name}")),
            capacity_type: CapacityType::Spot,
            ready: true,
            unschedulable: false,
            taints: vec![],
            labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]),
            annotations: BTreeMap::new(),
            allocatable: Resources::new(cpu, mem_gib << 30, 110),
        }
    }

    pub fn pod(name: &str, node: &str, cpu: u64, mem_mib: u64) -> Pod {
        Pod {
            namespace: "default".into(),
            name: name.into(),
            node: Some(node.into()),
            owner: OwnerKind::ReplicaSet,
            labels: BTreeMap::from([(
                "app".to_string(),
                name.trim_end_matches(char::is_numeric).to_string(),
            )]),
            requests: Resources::new(cpu, mem_mib << 20, 1),
            node_selector: BTreeMap::new(),
            required_affinity: vec![],
            tolerations: vec![],
            mirror: false,
            local_storage: false,
            terminal: false,
        }
    }
}
