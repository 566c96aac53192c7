//! The engine: phase 1 ([`Engine::handle_rebalance`]) and phase 2 ([`Engine::monitor_tick`]),
//! plus ledger recovery and cleanup, generic over the ports.
//!
//! ## Phase 1, on a notice
//! 1. Find the spot group holding the instance and its node (bad input: error, no action).
//! 2. Taint the node first, so no new pods land while a replacement comes.
//! 3. Raise the spot group by one under the group's [`ScaleLock`], recording the intent in the
//!    ledger *before* the call; wait (polling every `asg_poll`) for a new InService instance,
//!    watching scaling activities for failures, until `scale_up_timeout` — or earlier, when an
//!    interruption time is known, so the drain still fits before it.
//! 4. On spot failure, raise the on-demand group the same way and record the fallback.
//! 5. With a replacement (or an interruption coming), drain; then pay back the spot pre-scale by
//!    terminating the drained instance with decrement. With no replacement and no
//!    interruption, abandon: give back the pre-scale, remove the taint, keep the node.
//!
//! ## Phase 2, every monitor tick
//! For each open fallback entry: health of its spot group → stability → safety of removing
//! the fallback node → taint, cordon, drain → terminate it with decrement → release. Every
//! failure branch waits, skips or retries on the next tick; nothing is half-done. A drained
//! node is terminated only if its scale-down is still the one the ledger holds
//! ([`Entry::scale_downs`]): one abandoned meanwhile, by an overlapping pass or a new leader,
//! has reopened the node to pods.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::{join, select, Either};

use crate::config::{CapacityRebalancePolicy, Config, GroupPair, Timings};
use crate::events::{Check, Discard, Event, Observer};
use crate::ledger::{Entry, EntryKind, EntryState, Intent, Ledger, Payback};
use crate::model::{ActivityStatus, Group, InstanceId};
use crate::notice::{Notice, NoticeKind};
use crate::ports::{
    Clock, Cloud, CloudError, Cluster, ClusterError, DrainReport, LedgerStore, LockError,
    ScaleLock, StoreError,
};
use crate::predicates::{health, safety::SafetyIndex, stability, Reason, Verdict};
use crate::view::ClusterView;

/// How many times a ledger update is retried on concurrent writes.
const LEDGER_ATTEMPTS: u32 = 16;

/// Errors the flows return. Each names the instance, group or node it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A cloud call failed.
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// A cluster call failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The ledger store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The scale lock failed.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The instance is in none of the configured spot groups.
    #[error("instance {instance} is not in any configured spot group ({groups})")]
    UnknownInstance {
        /// Instance.
        instance: String,
        /// Configured spot groups.
        groups: String,
    },
    /// The instance has no node in the cluster.
    #[error("instance {instance} has no node in the cluster")]
    NoNode {
        /// Instance.
        instance: String,
    },
    /// The spot group launches replacements itself and the policy is to refuse.
    #[error(
        "spot group {group} has Capacity Rebalancing enabled, which already replaces instances \
         on a rebalance recommendation; set capacity_rebalance = \"drain-only\" or disable it"
    )]
    CapacityRebalanceEnabled {
        /// Group.
        group: String,
    },
    /// The ledger kept changing under us.
    #[error("ledger update lost {attempts} times against concurrent writers")]
    LedgerContention {
        /// Attempts made.
        attempts: u32,
    },
}

impl Error {
    /// Whether trying the same thing again later may succeed: API failures after the
    /// clients' own retries, conflicts, a lost scale lock, a contended or unreachable ledger.
    /// Bad input (an unknown instance, group or node, a value out of bounds, a policy that
    /// refuses, a malformed ledger) is not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Cloud(CloudError::Api { retryable, .. }) => *retryable,
            Error::Cloud(_) => false,
            Error::Cluster(ClusterError::UnknownNode { .. }) => false,
            Error::Cluster(ClusterError::Conflict { .. } | ClusterError::Api { .. }) => true,
            Error::Store(StoreError::Malformed { .. }) => false,
            Error::Store(StoreError::Conflict { .. } | StoreError::Io { .. }) => true,
            Error::Lock(_) | Error::LedgerContention { .. } => true,
            Error::UnknownInstance { .. }
            | Error::NoNode { .. }
            | Error::CapacityRebalanceEnabled { .. } => false,
        }
    }
}

/// What stood in for the at-risk instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replacement {
    /// A new spot instance.
    Spot {
        /// Instance.
        instance: InstanceId,
    },
    /// An on-demand fallback instance, recorded in the ledger.
    OnDemand {
        /// Instance.
        instance: InstanceId,
        /// Ledger entry.
        entry: String,
    },
    /// A group was raised but no instance was InService before the drain had to start
    /// (interruption coming); the group keeps launching.
    Launching {
        /// Group still launching.
        group: String,
    },
    /// Scaling was not attempted (drain-only policy).
    NotAttempted,
    /// An interruption was drained without asking for capacity: its group is unknown, its
    /// policy refuses, or Auto Scaling could not be reached.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Neither spot nor on-demand delivered.
    None {
        /// Why.
        reason: String,
    },
}

/// How a log line or a status names what stood in: `spot instance i-1`, `on-demand instance
/// i-2 (fb-1)`, `an instance still launching in web-spot`, `nothing (drain-only)`, ...
impl std::fmt::Display for Replacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replacement::Spot { instance } => write!(f, "spot instance {instance}"),
            Replacement::OnDemand { instance, entry } => {
                write!(f, "on-demand instance {instance} ({entry})")
            }
            Replacement::Launching { group } => {
                write!(f, "an instance still launching in {group}")
            }
            Replacement::NotAttempted => f.write_str("nothing (drain-only)"),
            Replacement::Skipped { reason } => write!(f, "nothing asked for: {reason}"),
            Replacement::None { reason } => write!(f, "nothing: {reason}"),
        }
    }
}

/// The result of phase 1 for one notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceOutcome {
    /// The instance was already being handled; nothing more was done.
    Coalesced,
    /// The notice was handled.
    Handled {
        /// At-risk node.
        node: String,
        /// What replaced it.
        replacement: Replacement,
        /// The drain, when one ran.
        drain: Option<DrainReport>,
        /// Whether the spot pre-scale was paid back.
        paid_back: bool,
    },
}

/// What a monitor tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Entries released this tick.
    pub released: Vec<String>,
    /// Entries waiting, with the verdict that holds them.
    pub waiting: Vec<(String, Verdict)>,
    /// Entries whose drain is still under way.
    pub draining: Vec<String>,
    /// Errors met (the tick carried on).
    pub errors: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    in_flight: HashSet<InstanceId>,
    /// Interruption times learned from notices merged into a running action: its waits end
    /// in time for the drain, as if the first notice had carried them.
    deadlines: HashMap<InstanceId, SystemTime>,
    healthy_since: HashMap<String, SystemTime>,
    /// Ledger entries a monitor pass is working on: a concurrent pass leaves them alone.
    monitoring: HashSet<String>,
}

/// What a monitor tick judges safety on: one snapshot, and the safety verdict of every
/// candidate computed from one index of it.
struct TickView {
    cluster: Arc<ClusterView>,
    safety: HashMap<InstanceId, Verdict>,
}

/// A mark in the engine's state (an instance in flight, an entry a monitor pass works on),
/// held for as long as it lives and cleared when dropped, however the work it guards ends.
struct Mark<'a, C, K, T, S, L> {
    engine: &'a Engine<C, K, T, S, L>,
    key: String,
    clear: fn(&mut State, &str),
}

impl<C, K, T, S, L> Drop for Mark<'_, C, K, T, S, L> {
    fn drop(&mut self) {
        let mut state = self.engine.state.lock().unwrap_or_else(|e| e.into_inner());
        (self.clear)(&mut state, &self.key);
    }
}

/// A scale lock taken and not yet released: dropped (with the future holding it) before
/// [`ScaleLock::release`] completed, it gives the lock up with
/// [`ScaleLock::release_abandoned`], so the next holder need not wait for shutdown or expiry.
struct LockHeld<'a, L: ScaleLock> {
    lock: &'a L,
    group: &'a str,
}

impl<L: ScaleLock> Drop for LockHeld<'_, L> {
    fn drop(&mut self) {
        self.lock.release_abandoned(self.group);
    }
}

/// How the last step of a scale-down ended.
enum Removal {
    /// Paid back, as described.
    Done(String),
    /// Spot is no longer healthy: the fallback stays.
    Relapsed(Verdict),
    /// Another monitor pass settled, abandoned or restarted this scale-down meanwhile.
    Superseded,
}

/// The spot group of an at-risk instance, its pair, and whether only draining is allowed.
struct Target {
    pair: GroupPair,
    spot: Group,
    drain_only: bool,
}

/// A raised group: the ledger entry and the group as it was before.
struct Raised {
    entry: String,
    instances_before: Vec<InstanceId>,
}

/// Why waiting for an instance ended without one.
enum WaitEnd {
    Failed(String),
    TimedOut(Duration),
    NoTime,
}

impl WaitEnd {
    fn describe(&self) -> String {
        match self {
            Self::Failed(m) => format!("launch failed: {m}"),
            Self::TimedOut(d) => format!(
                "no instance InService after {}",
                humantime::format_duration(Duration::from_secs(d.as_secs()))
            ),
            Self::NoTime => "no time left before the interruption".into(),
        }
    }
}

/// The group of that name among described groups (Auto Scaling answers an unknown name with
/// no group, not an error).
fn named<'g>(groups: &'g [Group], name: &str) -> Result<&'g Group, Error> {
    groups.iter().find(|g| g.name == name).ok_or_else(|| {
        CloudError::UnknownGroup {
            group: name.to_string(),
        }
        .into()
    })
}

/// The earlier of two optional times.
fn earlier(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Spot Guard's engine over its ports.
///
/// ```
/// # use spotguard_core::engine::Engine;
/// # fn wire<C, K, T, S, L>(config: spotguard_core::config::Config, cloud: C, cluster: K, clock: T, store: S, lock: L)
/// # where C: spotguard_core::ports::Cloud, K: spotguard_core::ports::Cluster, T: spotguard_core::ports::Clock,
/// #       S: spotguard_core::ports::LedgerStore, L: spotguard_core::ports::ScaleLock {
/// let engine = Engine::new(config, cloud, cluster, clock, store, lock);
/// // drive it: engine.handle_rebalance(&notice).await, engine.monitor_tick().await, ...
/// # }
/// ```
pub struct Engine<C, K, T, S, L> {
    config: Config,
    cloud: C,
    cluster: K,
    clock: T,
    store: S,
    lock: L,
    observer: Box<dyn Observer>,
    state: Mutex<State>,
}

impl<C: Cloud, K: Cluster, T: Clock, S: LedgerStore, L: ScaleLock> Engine<C, K, T, S, L> {
    /// Builds an engine. The configuration should have been validated.
    pub fn new(config: Config, cloud: C, cluster: K, clock: T, store: S, lock: L) -> Self {
        Self {
            config,
            cloud,
            cluster,
            clock,
            store,
            lock,
            observer: Box::new(Discard),
            state: Mutex::new(State::default()),
        }
    }

    /// Sends events to this observer.
    pub fn with_observer(mut self, observer: impl Observer + 'static) -> Self {
        self.observer = Box::new(observer);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The cloud port.
    pub fn cloud(&self) -> &C {
        &self.cloud
    }

    /// The cluster port.
    pub fn cluster(&self) -> &K {
        &self.cluster
    }

    /// The clock.
    pub fn clock(&self) -> &T {
        &self.clock
    }

    /// The ledger store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn emit(&self, event: Event) {
        self.observer.observe(self.clock.now(), &event);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads, changes and saves the ledger, retrying on concurrent writes (the change is
    /// re-applied to the fresh ledger).
    async fn update_ledger<R>(&self, mut change: impl FnMut(&mut Ledger) -> R) -> Result<R, Error> {
        for _ in 0..LEDGER_ATTEMPTS {
            let loaded = self.store.load().await?;
            let mut ledger = loaded.value;
            let result = change(&mut ledger);
            match self.store.save(&ledger, loaded.version).await {
                Ok(_) => return Ok(result),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::LedgerContention {
            attempts: LEDGER_ATTEMPTS,
        })
    }

    /// Moves an entry to `state`; returns how long it had been open (zero for an entry no
    /// longer in the ledger).
    async fn transition(&self, id: &str, state: EntryState, note: &str) -> Result<Duration, Error> {
        let now = self.clock.now();
        let held = self
            .update_ledger(|l| l.transition(id, state, note, now))
            .await?;
        Ok(held.unwrap_or_default())
    }
}

mod capacity;
mod monitor;
pub use monitor::MonitorHooks;
mod rebalance;
mod recovery;

#[cfg(test)]
pub(crate) mod fakes;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
