//! The ports the engine is driven through: [`Cloud`], [`Cluster`], [`Clock`], [`LedgerStore`]
//! and [`ScaleLock`]. Adapters (AWS, Kubernetes, the simulator, test mocks) implement them.
//!
//! The traits are runtime-agnostic: no tokio type appears, time is an input.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::DrainOptions;
use crate::ledger::Ledger;
use crate::model::{Activity, Group, Taint};
use crate::view::ClusterView;

/// The error underneath a port error — an SDK or API client error — kept for
/// [`std::error::Error::source`], so an embedder can inspect it (downcast) or log its chain.
/// Shared, so port errors stay `Clone`; two are equal when their messages are.
///
/// ```
/// use spotguard_core::ports::{CloudError, ErrorSource};
/// let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out");
/// let e = CloudError::Api {
///     operation: "SetDesiredCapacity".into(),
///     target: "group web-spot".into(),
///     message: "read timed out".into(),
///     retryable: true,
///     source: Some(ErrorSource::new(io)),
/// };
/// let source = std::error::Error::source(&e).unwrap();
/// assert!(source.downcast_ref::<ErrorSource>().unwrap().get().downcast_ref::<std::io::Error>().is_some());
/// ```
#[derive(Clone)]
pub struct ErrorSource(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl ErrorSource {
    /// Keeps `error` as the source.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// The error itself.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Debug for ErrorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for ErrorSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for ErrorSource {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for ErrorSource {}

/// Errors of the [`Cloud`] port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloudError {
    /// The group does not exist.
    #[error("auto scaling group {group:?} does not exist")]
    UnknownGroup {
        /// Group name.
        group: String,
    },
    /// A desired capacity above the group's maximum was asked for.
    #[error("auto scaling group {group:?}: desired capacity {desired} is above its maximum {max}")]
    AboveMax {
        /// Group name.
        group: String,
        /// Requested desired capacity.
        desired: u32,
        /// The group's maximum.
        max: u32,
    },
    /// A desired capacity below the group's minimum was asked for.
    #[error("auto scaling group {group:?}: desired capacity {desired} is below its minimum {min}")]
    BelowMin {
        /// Group name.
        group: String,
        /// Requested desired capacity.
        desired: u32,
        /// The group's minimum.
        min: u32,
    },
    /// The instance is not part of any Auto Scaling group (gone or never there).
    #[error("instance {instance} is not in an auto scaling group")]
    UnknownInstance {
        /// Instance id.
        instance: String,
    },
    /// Any other API failure, after the client's own retries.
    #[error("auto scaling {operation} failed for {target}: {message}")]
    Api {
        /// Operation (`SetDesiredCapacity`, ...).
        operation: String,
        /// The group or instance it was about.
        target: String,
        /// What the service said.
        message: String,
        /// Whether trying again later may succeed (throttling, 5xx, timeouts).
        retryable: bool,
        /// The SDK error, when there is one.
        source: Option<ErrorSource>,
    },
}

/// The cloud side: Auto Scaling groups.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Cloud: Send + Sync {
    /// Describes the named groups in one batched call. A name with no group yields
    /// [`CloudError::UnknownGroup`].
    async fn describe_groups(&self, names: &[String]) -> Result<Vec<Group>, CloudError>;

    /// Sets a group's desired capacity. Implementations refuse values above max or below min.
    async fn set_desired_capacity(&self, group: &str, desired: u32) -> Result<(), CloudError>;

    /// Terminates an instance of a group, decrementing desired capacity when `decrement` is
    /// true (`ShouldDecrementDesiredCapacity`).
    async fn terminate_instance(&self, instance: &str, decrement: bool) -> Result<(), CloudError>;

    /// Scaling activities of the named groups that started or ended at or after `since`.
    async fn scaling_activities(
        &self,
        groups: &[String],
        since: SystemTime,
    ) -> Result<Vec<Activity>, CloudError>;
}

/// Errors of the [`Cluster`] port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The node does not exist.
    #[error("node {node:?} does not exist")]
    UnknownNode {
        /// Node name.
        node: String,
    },
    /// A write lost against concurrent writers too many times.
    #[error("node {node:?}: conflicting concurrent updates, gave up after {attempts} attempts")]
    Conflict {
        /// Node name.
        node: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Any other API failure.
    #[error("kubernetes {operation} failed for {target}: {message}")]
    Api {
        /// Operation (`patch node`, `list pods`, ...).
        operation: String,
        /// The object it was about.
        target: String,
        /// What the API server said.
        message: String,
        /// The client error, when there is one.
        source: Option<ErrorSource>,
    },
}

/// Why a pod was left in place by a drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SkipReason {
    /// Owned by a DaemonSet.
    DaemonSet,
    /// A mirror pod of a static pod.
    Mirror,
    /// Already finished.
    Terminal,
}

/// What happened to one pod in a drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PodOutcome {
    /// Evicted and gone.
    Evicted,
    /// Left in place on purpose.
    Skipped(SkipReason),
    /// Still there when the drain gave up: a PDB refused the eviction (named when known).
    Blocked {
        /// `namespace/name` of the PDB, when the API said which.
        pdb: Option<String>,
    },
    /// Refused by the drain options (unmanaged pod without `force`, local storage without
    /// `delete_emptydir_data`) or an API error.
    Failed {
        /// Why.
        message: String,
    },
}

/// One pod's line in a drain report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReport {
    /// `namespace/name`.
    pub pod: String,
    /// Outcome.
    pub outcome: PodOutcome,
}

/// Result of a drain, pod by pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// Node drained.
    pub node: String,
    /// Per-pod outcomes.
    pub pods: Vec<PodReport>,
}

impl DrainReport {
    /// True when no pod that had to leave is still there.
    pub fn is_complete(&self) -> bool {
        self.pods
            .iter()
            .all(|p| matches!(p.outcome, PodOutcome::Evicted | PodOutcome::Skipped(_)))
    }

    /// Number of evicted pods.
    pub fn evicted(&self) -> usize {
        self.pods
            .iter()
            .filter(|p| p.outcome == PodOutcome::Evicted)
            .count()
    }

    /// The pods that are still in place and why, for logs.
    pub fn remaining(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter_map(|p| match &p.outcome {
                PodOutcome::Blocked { pdb: Some(pdb) } => {
                    Some(format!("{} (blocked by PDB {pdb})", p.pod))
                }
                PodOutcome::Blocked { pdb: None } => Some(format!("{} (blocked)", p.pod)),
                PodOutcome::Failed { message } => Some(format!("{} ({message})", p.pod)),
                _ => None,
            })
            .collect()
    }
}

/// The Kubernetes side.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Cluster: Send + Sync {
    /// A consistent view of nodes, pods and PDBs with its lookups, shared: an adapter that
    /// keeps a watch cache hands out the same view until the cluster changes, and callers
    /// never copy it.
    async fn snapshot(&self) -> Result<Arc<ClusterView>, ClusterError>;

    /// Adds the taint to the node (idempotent; other taints untouched).
    async fn taint(&self, node: &str, taint: &Taint) -> Result<(), ClusterError>;

    /// Removes taints with this key from the node (idempotent).
    async fn untaint(&self, node: &str, key: &str) -> Result<(), ClusterError>;

    /// Marks the node unschedulable (`cordon`) or schedulable again (`uncordon`).
    async fn set_unschedulable(&self, node: &str, unschedulable: bool) -> Result<(), ClusterError>;

    /// Sets (`Some`) or removes (`None`) a node annotation.
    async fn annotate(
        &self,
        node: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<(), ClusterError>;

    /// Evicts the node's pods through the Eviction API, respecting PDBs, and waits until they
    /// are gone or the drain times out.
    async fn drain(&self, node: &str, options: &DrainOptions) -> Result<DrainReport, ClusterError>;
}

/// Time, as an input: the engine never reads the OS clock.
#[async_trait]
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// Waits for the duration.
    async fn sleep(&self, duration: Duration);
}

/// Errors of the [`LedgerStore`] port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Someone else saved since this version was loaded.
    #[error("ledger was changed concurrently (expected version {expected:?})")]
    Conflict {
        /// The version the save was based on.
        expected: Option<String>,
    },
    /// The stored ledger could not be read.
    #[error("stored ledger at {location} is malformed: {message}")]
    Malformed {
        /// Where it is stored.
        location: String,
        /// Parse error.
        message: String,
    },
    /// Any other storage failure.
    #[error("ledger store {location}: {message}")]
    Io {
        /// Where it is stored.
        location: String,
        /// What failed.
        message: String,
        /// The client error, when there is one.
        source: Option<ErrorSource>,
    },
}

/// A ledger with the version it was loaded at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Opaque version (a resourceVersion); `None` when nothing is stored yet.
    pub version: Option<String>,
}

/// Durable storage for the fallback ledger, with optimistic concurrency.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// Loads the ledger and its version (an empty ledger and `None` when nothing is stored).
    async fn load(&self) -> Result<Versioned<Ledger>, StoreError>;

    /// Saves the ledger if the stored version is still `expected`; returns the new version, or
    /// [`StoreError::Conflict`].
    async fn save(&self, ledger: &Ledger, expected: Option<String>) -> Result<String, StoreError>;
}

/// Errors of the [`ScaleLock`] port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scale lock for group {group:?}: {message}")]
pub struct LockError {
    /// Group name.
    pub group: String,
    /// What failed.
    pub message: String,
}

/// Serializes read-modify-write changes of a group's desired capacity (invariant 1), within a
/// process ([`crate::lock::LocalScaleLock`]) or across processes (a Kubernetes Lease).
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait ScaleLock: Send + Sync {
    /// Waits until this holder owns the group's lock.
    async fn acquire(&self, group: &str) -> Result<(), LockError>;

    /// Releases the group's lock.
    async fn release(&self, group: &str) -> Result<(), LockError>;

    /// Gives the group's lock up without waiting, for a holder dropped before it could
    /// [`release`](ScaleLock::release) it (an embedder's timeout, a task aborted at
    /// shutdown): the engine calls it from a guard's `Drop`. It must not block; a lock whose
    /// release needs I/O (a Lease) starts that release in the background, or lets the lock
    /// expire. Also called after a `release` that was itself dropped part-way, so it must
    /// accept a lock this holder no longer (or only partly) holds.
    fn release_abandoned(&self, group: &str);

    /// Confirms, just before a write to the group's desired capacity, that this holder still
    /// owns the lock and will keep it while the write is under way: a lock that can expire
    /// (a Lease) renews it here if its last renewal is not recent, and fails when it was lost,
    /// so the write is not made outside the lock. A lock that cannot expire returns `Ok`.
    async fn confirm(&self, group: &str) -> Result<(), LockError> {
        let _ = group;
        Ok(())
    }
}

/// Ports are shared: a reference or an `Arc` to a port is a port, so one cloud client can
/// serve several engines (or tests can keep a handle on their fakes).
macro_rules! shared_ports {
    ($($wrapper:ty),*) => {$(
        #[async_trait]
        impl<T: Cloud + ?Sized> Cloud for $wrapper {
            async fn describe_groups(&self, names: &[String]) -> Result<Vec<Group>, CloudError> {
                (**self).describe_groups(names).await
            }
            async fn set_desired_capacity(&self, group: &str, desired: u32) -> Result<(), CloudError> {
                (**self).set_desired_capacity(group, desired).await
            }
            async fn terminate_instance(&self, instance: &str, decrement: bool) -> Result<(), CloudError> {
                (**self).terminate_instance(instance, decrement).await
            }
            async fn scaling_activities(&self, groups: &[String], since: SystemTime) -> Result<Vec<Activity>, CloudError> {
                (**self).scaling_activities(groups, since).await
            }
        }

        #[async_trait]
        impl<T: Cluster + ?Sized> Cluster for $wrapper {
            async fn snapshot(&self) -> Result<Arc<ClusterView>, ClusterError> {
                (**self).snapshot().await
            }
            async fn taint(&self, node: &str, taint: &Taint) -> Result<(), ClusterError> {
                (**self).taint(node, taint).await
            }
            async fn untaint(&self, node: &str, key: &str) -> Result<(), ClusterError> {
                (**self).untaint(node, key).await
            }
            async fn set_unschedulable(&self, node: &str, unschedulable: bool) -> Result<(), ClusterError> {
                (**self).set_unschedulable(node, unschedulable).await
            }
            async fn annotate(&self, node: &str, key: &str, value: Option<String>) -> Result<(), ClusterError> {
                (**self).annotate(node, key, value).await
            }
            async fn drain(&self, node: &str, options: &DrainOptions) -> Result<DrainReport, ClusterError> {
                (**self).drain(node, options).await
            }
        }

        #[async_trait]
        impl<T: Clock + ?Sized> Clock for $wrapper {
            fn now(&self) -> SystemTime {
                (**self).now()
            }
            async fn sleep(&self, duration: Duration) {
                (**self).sleep(duration).await
            }
        }

        #[async_trait]
        impl<T: LedgerStore + ?Sized> LedgerStore for $wrapper {
            async fn load(&self) -> Result<Versioned<Ledger>, StoreError> {
                (**self).load().await
            }
            async fn save(&self, ledger: &Ledger, expected: Option<String>) -> Result<String, StoreError> {
                (**self).save(ledger, expected).await
            }
        }

        #[async_trait]
        impl<T: ScaleLock + ?Sized> ScaleLock for $wrapper {
            async fn acquire(&self, group: &str) -> Result<(), LockError> {
                (**self).acquire(group).await
            }
            async fn release(&self, group: &str) -> Result<(), LockError> {
                (**self).release(group).await
            }
            fn release_abandoned(&self, group: &str) {
                (**self).release_abandoned(group)
            }
            async fn confirm(&self, group: &str) -> Result<(), LockError> {
                (**self).confirm(group).await
            }
        }
    )*};
}

shared_ports!(&T, std::sync::Arc<T>);
