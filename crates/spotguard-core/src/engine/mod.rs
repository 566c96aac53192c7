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

use crate::config::{CapacityRebalancePolicy, Config, GroupPair};
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

impl<C, K, T, S, L> Engine<C, K, T, S, L>
where
    C: Cloud,
    K: Cluster,
    T: Clock,
    S: LedgerStore,
    L: ScaleLock,
{
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

    // ----- ledger -------------------------------------------------------------------------

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

    // ----- cloud calls --------------------------------------------------------------------

    async fn describe(&self, group: &str) -> Result<Group, Error> {
        let groups = self.cloud.describe_groups(&[group.to_string()]).await?;
        named(&groups, group).cloned()
    }

    /// Runs `work` holding the group's scale lock; the lock is released whatever happens,
    /// this future dropped part-way included ([`LockHeld`]).
    async fn locked<R>(
        &self,
        group: &str,
        work: impl std::future::Future<Output = Result<R, Error>>,
    ) -> Result<R, Error> {
        self.lock.acquire(group).await?;
        let held = LockHeld {
            lock: &self.lock,
            group,
        };
        let result = work.await;
        let released = self.lock.release(group).await;
        std::mem::forget(held);
        let value = result?;
        released?;
        Ok(value)
    }

    /// Raises `group` by one under its lock, with the intent recorded before the call.
    async fn raise(
        &self,
        kind: EntryKind,
        group: &str,
        pair: &GroupPair,
        at_risk: &str,
    ) -> Result<Raised, Error> {
        self.locked(group, self.raise_locked(kind, group, pair, at_risk))
            .await
    }

    async fn raise_locked(
        &self,
        kind: EntryKind,
        group: &str,
        pair: &GroupPair,
        at_risk: &str,
    ) -> Result<Raised, Error> {
        let g = self.describe(group).await?;
        if g.desired >= g.max {
            return Err(CloudError::AboveMax {
                group: group.to_string(),
                desired: g.desired + 1,
                max: g.max,
            }
            .into());
        }
        let now = self.clock.now();
        let instances_before = g.instance_ids();
        let intent = Intent {
            kind,
            group: group.to_string(),
            spot_group: pair.spot.clone(),
            at_risk_instance: at_risk.to_string(),
            desired_before: g.desired,
            instances_before: instances_before.clone(),
        };
        let entry = self
            .update_ledger(|l| l.record_intent(intent.clone(), now))
            .await?;
        if let Err(e) = self.lock.confirm(group).await {
            self.transition(
                &entry,
                EntryState::Released,
                &format!("scale-up not made: {e}"),
            )
            .await?;
            return Err(e.into());
        }
        let call = self.cloud.set_desired_capacity(group, g.desired + 1).await;
        // Settle the intent now, while we still hold the lock: an ambiguous failure (timeout,
        // 5xx after retries) is resolved by looking at the group again. When even that look
        // fails, the intent stays pending: the next attempt, or the monitor, settles it from
        // the group, so it is neither raised twice nor leaked.
        let raised = match &call {
            Ok(()) => true,
            Err(CloudError::Api {
                retryable: true, ..
            }) => self.describe(group).await?.desired > g.desired,
            Err(_) => false,
        };
        if raised {
            self.transition(&entry, EntryState::Active, "scale-up made")
                .await?;
            self.emit(Event::ScaledUp {
                group: group.to_string(),
                from: g.desired,
                to: g.desired + 1,
            });
            Ok(Raised {
                entry,
                instances_before,
            })
        } else {
            let e = call.err().map(Error::from).unwrap_or_else(|| {
                CloudError::Api {
                    operation: "SetDesiredCapacity".into(),
                    target: group.to_string(),
                    message: "desired capacity unchanged after the call".into(),
                    retryable: true,
                }
                .into()
            });
            self.transition(
                &entry,
                EntryState::Released,
                &format!("scale-up not made: {e}"),
            )
            .await?;
            Err(e)
        }
    }

    /// Lowers `group` by one under its lock, never below its minimum and only while an
    /// unfilled slot exists (desired above the instances it has), so no running instance is
    /// picked by the group's termination policy.
    async fn lower_unfilled(&self, group: &str, entry: &str) -> Result<bool, Error> {
        self.locked(group, async {
            // Another flow may have settled the entry meanwhile: never lower for it twice.
            if self.open_entry(entry).await?.is_none() {
                return Ok(false);
            }
            self.lower_unfilled_locked(group, entry).await
        })
        .await
    }

    /// [`Self::lower_unfilled`], for a caller that holds the group's lock.
    async fn lower_unfilled_locked(&self, group: &str, entry: &str) -> Result<bool, Error> {
        let g = self.describe(group).await?;
        let live = g
            .instances
            .iter()
            .filter(|i| !i.lifecycle.is_leaving())
            .count() as u32;
        if g.desired > g.min && g.desired > live {
            self.record_payback(entry, Payback::Lower { from: g.desired })
                .await?;
            self.lock.confirm(group).await?;
            self.cloud
                .set_desired_capacity(group, g.desired - 1)
                .await?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Terminates an instance of `group`, decrementing its desired capacity unless the group
    /// is at its minimum, for a caller that holds the group's lock: a decrement is a change
    /// of desired capacity like any other, so no raise may read the group between it and its
    /// effect. Returns whether it decremented.
    async fn terminate_locked(
        &self,
        group: &Group,
        instance: &str,
    ) -> Result<Result<bool, CloudError>, Error> {
        let decrement = group.desired > group.min;
        self.lock.confirm(&group.name).await?;
        Ok(self
            .cloud
            .terminate_instance(instance, decrement)
            .await
            .map(|()| decrement))
    }

    /// Polls `group` until a new instance (not there before the raise, not claimed by another
    /// entry) is InService, a launch fails, or the wait ends: `scale_up_timeout` from now, or
    /// `latest` (interruption cap) if earlier. The instance is claimed for the entry in the
    /// ledger atomically, so concurrent handlers never take the same one.
    async fn wait_for_instance(
        &self,
        group: &str,
        raised: &Raised,
        since: SystemTime,
        latest: Option<SystemTime>,
        at_risk: &str,
    ) -> Result<Result<InstanceId, WaitEnd>, Error> {
        let start = self.clock.now();
        let timeout = start + self.config.timings.scale_up_timeout;
        // Re-read every poll: an interruption notice may arrive while this wait runs.
        let until = || match self.wait_cap(at_risk, latest) {
            Some(cap) => timeout.min(cap),
            None => timeout,
        };
        if start >= until() {
            return Ok(Err(WaitEnd::NoTime));
        }
        loop {
            let now = self.clock.now();
            let until = until();
            if now >= until {
                return Ok(Err(WaitEnd::TimedOut(
                    now.duration_since(start).unwrap_or_default(),
                )));
            }
            let pause = self
                .config
                .timings
                .asg_poll
                .min(until.duration_since(now).unwrap_or_default());
            self.clock.sleep(pause).await;
            let g = self.describe(group).await?;
            if let Some(instance) = self.claim_new_instance(&g, raised).await? {
                self.emit(Event::InstanceReady {
                    group: group.to_string(),
                    instance: instance.clone(),
                    after: self.clock.now().duration_since(start).unwrap_or_default(),
                });
                return Ok(Ok(instance));
            }
            let activities = self
                .cloud
                .scaling_activities(&[group.to_string()], since)
                .await?;
            if let Some(failed) = activities.iter().find(|a| {
                a.group == group && a.status == ActivityStatus::Failed && a.start >= since
            }) {
                let message = failed
                    .status_message
                    .clone()
                    .unwrap_or_else(|| failed.description.clone());
                return Ok(Err(WaitEnd::Failed(message)));
            }
        }
    }

    /// Records, for the entry, the first InService instance of the group that was not there
    /// before its raise and that no other open entry holds.
    async fn claim_new_instance(
        &self,
        group: &Group,
        raised: &Raised,
    ) -> Result<Option<InstanceId>, Error> {
        let before: HashSet<&str> = raised.instances_before.iter().map(String::as_str).collect();
        let serving: Vec<InstanceId> = group
            .instances
            .iter()
            .filter(|i| i.is_serving() && !before.contains(i.id.as_str()))
            .map(|i| i.id.clone())
            .collect();
        if serving.is_empty() {
            return Ok(None);
        }
        let now = self.clock.now();
        self.update_ledger(|l| {
            // Already claimed for this entry (by the monitor of another process): take it.
            if let Some(mine) = l.get(&raised.entry).and_then(|e| e.instance.clone()) {
                if serving.contains(&mine) {
                    return Some(mine);
                }
            }
            let claimed = l.claimed_instances();
            let free = serving.iter().find(|i| !claimed.contains(i))?.clone();
            let e = l.get_mut(&raised.entry)?;
            e.instance = Some(free.clone());
            // Only needed to tell the new instance from the old ones: drop it once known, so
            // the stored ledger stays small on large groups.
            e.instances_before = Vec::new();
            e.note = format!("instance {free} InService");
            e.updated_at = now;
            Some(free)
        })
        .await
    }

    /// When a wait for `at_risk`'s replacement must end: the notice's own cap, or the
    /// drain window before an interruption learned since, whichever is earlier.
    fn wait_cap(&self, at_risk: &str, latest: Option<SystemTime>) -> Option<SystemTime> {
        let learned = self.state().deadlines.get(at_risk).copied();
        earlier(latest, learned.map(|d| self.drain_start(d)))
    }

    /// When the drain must start for an interruption at `deadline`: `interruption_drain_window`
    /// before it.
    fn drain_start(&self, deadline: SystemTime) -> SystemTime {
        deadline
            .checked_sub(self.config.timings.interruption_drain_window)
            .unwrap_or(deadline)
    }

    // ----- phase 1 ------------------------------------------------------------------------

    /// Phase 1, one attempt: acts on a rebalance recommendation or interruption notice.
    ///
    /// Concurrent calls for different instances raise the spot group by exactly one each
    /// (the group's [`ScaleLock`] serializes every change of its desired capacity); a call for
    /// an instance already being handled returns [`RebalanceOutcome::Coalesced`]. An error is
    /// reported as [`Event::NoticeRejected`] and not retried: the daemon calls
    /// [`Engine::handle_notice`], which retries transient errors.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any await point (an embedder's timeout, an aborted task) ends
    /// the instance's in-flight mark and gives up a scale lock it holds
    /// ([`ScaleLock::release_abandoned`]); the ledger holds whatever was raised (a `Pending`
    /// entry if the call's outcome was not seen), which the next attempt, [`Engine::recover`]
    /// or the monitor settles. `proptests::every_flow_cancelled_at_every_await_point_*`
    /// drops it after each number of polls in turn and checks that.
    pub async fn handle_rebalance(&self, notice: &Notice) -> Result<RebalanceOutcome, Error> {
        let Some(_mark) = self.begin(notice) else {
            return Ok(RebalanceOutcome::Coalesced);
        };
        let result = self.rebalance(notice).await;
        if let Err(e) = &result {
            self.emit(Event::NoticeRejected {
                instance: notice.instance_id.clone(),
                reason: e.to_string(),
            });
        }
        result
    }

    /// Phase 1 with retries: like [`Engine::handle_rebalance`], but an attempt that fails on
    /// a transient error ([`Error::is_transient`]) is tried again after a pause
    /// (`notice_retry.backoff`, doubling up to `notice_retry.max_backoff`), until it
    /// succeeds, the error is permanent (the instance or its node is gone, a policy refuses),
    /// the notice's interruption time would pass before the next attempt, or
    /// `notice_retry.attempts` were made ([`Event::NoticeAbandoned`]). The instance stays
    /// in flight meanwhile: notices for it are merged, the monitor leaves its entries alone.
    /// A retry resumes the pre-scale the ledger holds for the instance; it never raises a
    /// group a second time.
    ///
    /// Cancel-safe, as [`Engine::handle_rebalance`].
    pub async fn handle_notice(&self, notice: &Notice) -> Result<RebalanceOutcome, Error> {
        let Some(_mark) = self.begin(notice) else {
            return Ok(RebalanceOutcome::Coalesced);
        };
        let retry = &self.config.notice_retry;
        let instance = notice.instance_id.clone();
        let mut pause = retry.backoff;
        let mut attempt = 1;
        loop {
            let e = match self.rebalance(notice).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) => e,
            };
            let reason = e.to_string();
            if !e.is_transient() {
                self.emit(Event::NoticeRejected { instance, reason });
                return Err(e);
            }
            let deadline = self.deadline(notice);
            let too_late = deadline.is_some_and(|d| self.clock.now() + pause >= d);
            if attempt >= retry.attempts || too_late {
                self.emit(Event::NoticeAbandoned {
                    instance,
                    attempts: attempt,
                    reason,
                });
                return Err(e);
            }
            self.emit(Event::NoticeRetrying {
                instance: instance.clone(),
                attempt,
                after: pause,
                reason,
            });
            self.clock.sleep(pause).await;
            pause = (pause * 2).min(retry.max_backoff);
            attempt += 1;
        }
    }

    /// Reports the notice and marks its instance in flight; `None` when it already was (the
    /// notice's interruption time, if any, is merged into the running action).
    fn begin(&self, notice: &Notice) -> Option<Mark<'_, C, K, T, S, L>> {
        let instance = notice.instance_id.clone();
        self.emit(Event::NoticeReceived {
            instance: instance.clone(),
            kind: match notice.kind {
                NoticeKind::Rebalance => "rebalance".into(),
                NoticeKind::Interruption { .. } => "interruption".into(),
            },
        });
        if !self.state().in_flight.insert(instance.clone()) {
            if let Some(deadline) = notice.deadline() {
                let mut state = self.state();
                let known = state.deadlines.entry(instance.clone()).or_insert(deadline);
                *known = (*known).min(deadline);
            }
            self.emit(Event::NoticeCoalesced { instance });
            return None;
        }
        // Cleared with any interruption time learned for the instance.
        Some(Mark {
            engine: self,
            key: instance,
            clear: |state, instance| {
                state.in_flight.remove(instance);
                state.deadlines.remove(instance);
            },
        })
    }

    /// The earliest interruption time known for the notice's instance.
    fn deadline(&self, notice: &Notice) -> Option<SystemTime> {
        let learned = self.state().deadlines.get(&notice.instance_id).copied();
        earlier(notice.deadline(), learned)
    }

    /// The spot group holding `instance`, its pair, and whether the policy lets Spot Guard
    /// scale it.
    async fn scaling_target(&self, instance: &str) -> Result<Target, Error> {
        let groups = self
            .cloud
            .describe_groups(&self.config.group_names())
            .await?;
        let Some((pair, spot)) = self.config.groups.iter().find_map(|p| {
            groups
                .iter()
                .find(|g| g.name == p.spot && g.holds(instance))
                .map(|g| (p.clone(), g.clone()))
        }) else {
            return Err(Error::UnknownInstance {
                instance: instance.to_string(),
                groups: self
                    .config
                    .groups
                    .iter()
                    .map(|p| p.spot.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let drain_only = spot.capacity_rebalance
            && match self.config.capacity_rebalance {
                CapacityRebalancePolicy::Refuse => {
                    return Err(Error::CapacityRebalanceEnabled { group: spot.name });
                }
                CapacityRebalancePolicy::DrainOnly => true,
            };
        Ok(Target {
            pair,
            spot,
            drain_only,
        })
    }

    /// The node of `instance` in the snapshot.
    fn node_of(snapshot: &ClusterView, instance: &str) -> Result<String, Error> {
        snapshot
            .node_for_instance(instance)
            .map(|n| n.name.clone())
            .ok_or_else(|| Error::NoNode {
                instance: instance.to_string(),
            })
    }

    async fn taint(&self, node: &str) -> Result<(), Error> {
        self.cluster.taint(node, &self.config.taint.taint()).await?;
        self.emit(Event::Tainted {
            node: node.to_string(),
        });
        Ok(())
    }

    async fn rebalance(&self, notice: &Notice) -> Result<RebalanceOutcome, Error> {
        if let Some(deadline) = notice.deadline() {
            return self.interruption(notice, deadline).await;
        }
        let instance = notice.instance_id.as_str();
        let target = self.scaling_target(instance).await?;
        let snapshot = self.cluster.snapshot().await?;
        let node = Self::node_of(&snapshot, instance)?;

        // Taint first: nothing new lands on the node while the replacement comes.
        self.taint(&node).await?;
        let start = self.clock.now();
        let (replacement, prescale) = self
            .seek_replacement(&target, instance, start, None)
            .await?;
        let protected = self.protect(&replacement, &snapshot).await;

        // An interruption notice merged into this action since makes it drain whatever came.
        let interruption = self.state().deadlines.contains_key(instance);
        let result = match &replacement {
            Replacement::None { reason } if !interruption => {
                // Continue with the existing node: give the pre-scale back, remove the taint.
                if let Some(entry) = &prescale {
                    self.give_back_unfilled(entry, &target.pair.spot).await?;
                }
                self.cluster.untaint(&node, &self.config.taint.key).await?;
                self.emit(Event::Untainted { node: node.clone() });
                self.emit(Event::NoReplacement {
                    node: node.clone(),
                    reason: reason.clone(),
                });
                RebalanceOutcome::Handled {
                    node,
                    replacement: replacement.clone(),
                    drain: None,
                    paid_back: prescale.is_some(),
                }
            }
            _ => {
                if let Replacement::None { reason } = &replacement {
                    self.emit(Event::NoReplacement {
                        node: node.clone(),
                        reason: format!("{reason}; draining anyway before the interruption"),
                    });
                }
                let report = self.drain(&node).await?;
                let paid_back = self
                    .settle_drained(
                        instance,
                        Some(&target),
                        prescale.as_deref(),
                        &report,
                        interruption,
                    )
                    .await?;
                RebalanceOutcome::Handled {
                    node,
                    replacement: replacement.clone(),
                    drain: Some(report),
                    paid_back,
                }
            }
        };
        if let Some(node) = protected {
            self.unprotect(&node).await;
        }
        Ok(result)
    }

    /// An interruption notice (invariant 7): the node is tainted and drained whatever else
    /// fails or is unknown — the instance's group, its Capacity Rebalancing policy, the Auto
    /// Scaling API. Replacement capacity is sought best effort: the drain starts as soon as
    /// that is settled, and at the latest `interruption_drain_window` before the
    /// interruption, the search going on beside it.
    async fn interruption(
        &self,
        notice: &Notice,
        deadline: SystemTime,
    ) -> Result<RebalanceOutcome, Error> {
        let instance = notice.instance_id.as_str();
        let snapshot = self.cluster.snapshot().await?;
        let node = Self::node_of(&snapshot, instance)?;
        self.taint(&node).await?;
        let start = self.clock.now();
        let latest = self.drain_start(deadline);
        let scaling = async {
            let target = match self.scaling_target(instance).await {
                Ok(target) => target,
                Err(e) => {
                    self.emit(Event::ScalingSkipped {
                        instance: instance.to_string(),
                        reason: e.to_string(),
                    });
                    return Ok((
                        None,
                        Replacement::Skipped {
                            reason: e.to_string(),
                        },
                        None,
                    ));
                }
            };
            let (replacement, prescale) = self
                .seek_replacement(&target, instance, start, Some(latest))
                .await?;
            Ok::<_, Error>((Some(target), replacement, prescale))
        };
        let mut scaling = pin!(scaling);
        let drain_at = latest.duration_since(start).unwrap_or_default();
        let timer = pin!(self.clock.sleep(drain_at));
        let (scaled, report) = match select(scaling.as_mut(), timer).await {
            Either::Left((scaled, _)) => {
                let report = self.drain(&node).await;
                (scaled, report)
            }
            // Time to drain: the search goes on beside the drain.
            Either::Right(((), _)) => join(scaling, self.drain(&node)).await,
        };
        let report = report?;
        let (target, replacement, prescale) = match scaled {
            Ok(scaled) => scaled,
            Err(e) => {
                self.emit(Event::Error {
                    during: format!("seeking a replacement for interrupted instance {instance}"),
                    message: e.to_string(),
                });
                (
                    None,
                    Replacement::None {
                        reason: e.to_string(),
                    },
                    None,
                )
            }
        };
        if let Replacement::None { reason } = &replacement {
            self.emit(Event::NoReplacement {
                node: node.clone(),
                reason: format!("{reason}; drained before the interruption"),
            });
        }
        let paid_back = self
            .settle_drained(
                instance,
                target.as_ref(),
                prescale.as_deref(),
                &report,
                true,
            )
            .await?;
        Ok(RebalanceOutcome::Handled {
            node,
            replacement,
            drain: Some(report),
            paid_back,
        })
    }

    /// Raises the spot group (or resumes the pre-scale the ledger holds for the instance),
    /// waits for a new instance, and falls back to on-demand when spot fails. Returns what
    /// stood in and the pre-scale entry, if one was made.
    async fn seek_replacement(
        &self,
        target: &Target,
        instance: &str,
        start: SystemTime,
        latest: Option<SystemTime>,
    ) -> Result<(Replacement, Option<String>), Error> {
        if target.drain_only {
            return Ok((Replacement::NotAttempted, None));
        }
        let pair = &target.pair;
        let mut prescale: Option<String> = None;
        // A pre-scale already made for this instance (an earlier attempt, or a notice whose
        // payback failed) is resumed, never made twice.
        let raised = match self.open_prescale(instance, &target.spot).await? {
            Some((raised, Some(ready))) => {
                prescale = Some(raised.entry);
                Err(Ok(ready))
            }
            Some((raised, None)) => Ok(raised),
            None => self
                .raise(EntryKind::Prescale, &pair.spot, pair, instance)
                .await
                .map_err(Err),
        };
        let spot_result = match raised {
            Ok(raised) => {
                prescale = Some(raised.entry.clone());
                match self
                    .wait_for_instance(&pair.spot, &raised, start, latest, instance)
                    .await
                {
                    Ok(Ok(new)) => Ok(new),
                    Ok(Err(end)) => Err(end),
                    Err(e) => Err(WaitEnd::Failed(e.to_string())),
                }
            }
            Err(Ok(ready)) => Ok(ready),
            Err(Err(e)) => Err(WaitEnd::Failed(e.to_string())),
        };
        let replacement = match spot_result {
            Ok(new) => Replacement::Spot { instance: new },
            Err(WaitEnd::NoTime) => Replacement::Launching {
                group: pair.spot.clone(),
            },
            Err(end) => {
                self.emit(Event::ScaleUpFailed {
                    group: pair.spot.clone(),
                    reason: end.describe(),
                });
                self.fall_back(pair, instance, start, latest).await
            }
        };
        // A new instance that arrived after the spot wait ended counts as a replacement.
        let replacement = match replacement {
            Replacement::None { reason } if prescale.is_some() => {
                self.adopt_late_spot(pair, prescale.as_deref(), reason)
                    .await?
            }
            other => other,
        };
        Ok((replacement, prescale))
    }

    /// After the drain: pays the spot pre-scale back, or hands a drained instance with
    /// nothing to pay back to its group. Returns whether the pre-scale was paid back.
    async fn settle_drained(
        &self,
        instance: &str,
        target: Option<&Target>,
        prescale: Option<&str>,
        report: &DrainReport,
        interruption: bool,
    ) -> Result<bool, Error> {
        let Some(target) = target else {
            return Ok(false);
        };
        match (prescale, report.is_complete() || interruption) {
            (Some(entry), true) => {
                self.pay_back_prescale(entry, &target.pair.spot, instance)
                    .await
            }
            (None, true) if !target.drain_only => {
                // Nothing to pay back (the spot group could not be raised): hand the drained
                // instance back to its group, which replaces it, rather than keep a tainted,
                // empty node that EC2 may never reclaim.
                self.recycle(instance).await;
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// An open pre-scale for this at-risk instance, with its replacement when that is already
    /// InService in the group.
    async fn open_prescale(
        &self,
        at_risk: &str,
        spot: &Group,
    ) -> Result<Option<(Raised, Option<InstanceId>)>, Error> {
        let mut ledger = self.store.load().await?.value;
        // An intent an earlier attempt left pending (its call's outcome unknown): settle it
        // from the group first, under the lock, so a retry neither raises twice nor loses it.
        let pending = ledger
            .open()
            .find(|e| {
                e.kind == EntryKind::Prescale
                    && e.at_risk_instance == at_risk
                    && e.state == EntryState::Pending
            })
            .cloned();
        if let Some(entry) = pending {
            self.locked(&entry.group, async {
                let g = self.describe(&entry.group).await?;
                let by_name = HashMap::from([(g.name.as_str(), &g)]);
                self.settle_pending(&entry, &by_name).await
            })
            .await?;
            ledger = self.store.load().await?.value;
        }
        let found = ledger
            .open()
            .find(|e| {
                e.kind == EntryKind::Prescale
                    && e.at_risk_instance == at_risk
                    && e.state != EntryState::Pending
            })
            .map(|e| {
                let ready = e
                    .instance
                    .clone()
                    .filter(|i| spot.instances.iter().any(|x| &x.id == i && x.is_serving()));
                (
                    Raised {
                        entry: e.id.clone(),
                        instances_before: e.instances_before.clone(),
                    },
                    ready,
                )
            });
        Ok(found)
    }

    /// Spot failed: raise the on-demand group, wait, and record the fallback.
    async fn fall_back(
        &self,
        pair: &GroupPair,
        at_risk: &str,
        start: SystemTime,
        latest: Option<SystemTime>,
    ) -> Replacement {
        let raised = match self
            .raise(EntryKind::Fallback, &pair.on_demand, pair, at_risk)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("on-demand scale-up of {} not made: {e}", pair.on_demand);
                self.emit(Event::ScaleUpFailed {
                    group: pair.on_demand.clone(),
                    reason: e.to_string(),
                });
                return Replacement::None { reason };
            }
        };
        self.emit(Event::FallbackRecorded {
            entry: raised.entry.clone(),
            group: pair.on_demand.clone(),
        });
        let waited = self
            .wait_for_instance(&pair.on_demand, &raised, start, latest, at_risk)
            .await;
        match waited {
            Ok(Ok(instance)) => Replacement::OnDemand {
                instance,
                entry: raised.entry,
            },
            Ok(Err(WaitEnd::NoTime)) => Replacement::Launching {
                group: pair.on_demand.clone(),
            },
            Ok(Err(end)) => {
                // The entry stays Active: the monitor adopts a late instance or settles it.
                self.emit(Event::ScaleUpFailed {
                    group: pair.on_demand.clone(),
                    reason: end.describe(),
                });
                Replacement::None {
                    reason: format!(
                        "spot and on-demand both failed; on-demand {}",
                        end.describe()
                    ),
                }
            }
            Err(e) => Replacement::None {
                reason: format!("waiting for on-demand failed: {e}"),
            },
        }
    }

    /// After both waits failed, a spot instance may still have come just now.
    async fn adopt_late_spot(
        &self,
        pair: &GroupPair,
        prescale: Option<&str>,
        reason: String,
    ) -> Result<Replacement, Error> {
        let ledger = self.store.load().await?.value;
        let Some(entry) = prescale.and_then(|id| ledger.get(id)) else {
            return Ok(Replacement::None { reason });
        };
        let raised = Raised {
            entry: entry.id.clone(),
            instances_before: entry.instances_before.clone(),
        };
        let g = self.describe(&pair.spot).await?;
        Ok(match self.claim_new_instance(&g, &raised).await? {
            Some(instance) => Replacement::Spot { instance },
            None => Replacement::None { reason },
        })
    }

    /// Marks a fresh replacement node so cluster-autoscaler leaves it alone during the action.
    async fn protect(&self, replacement: &Replacement, snapshot: &ClusterView) -> Option<String> {
        let key = &self.config.protect_annotation;
        let instance = match replacement {
            Replacement::Spot { instance } | Replacement::OnDemand { instance, .. } => instance,
            _ => return None,
        };
        if key.is_empty() {
            return None;
        }
        let node = match snapshot.node_for_instance(instance) {
            Some(n) => n.name.clone(),
            None => self
                .cluster
                .snapshot()
                .await
                .ok()?
                .node_for_instance(instance)?
                .name
                .clone(),
        };
        match self.cluster.annotate(&node, key, Some("true".into())).await {
            Ok(()) => Some(node),
            Err(e) => {
                self.emit(Event::Error {
                    during: format!("protecting replacement node {node}"),
                    message: e.to_string(),
                });
                None
            }
        }
    }

    async fn unprotect(&self, node: &str) {
        if let Err(e) = self
            .cluster
            .annotate(node, &self.config.protect_annotation, None)
            .await
        {
            self.emit(Event::Error {
                during: format!("removing protection from node {node}"),
                message: e.to_string(),
            });
        }
    }

    async fn drain(&self, node: &str) -> Result<DrainReport, Error> {
        let report = self.cluster.drain(node, &self.config.drain).await?;
        if report.is_complete() {
            self.emit(Event::Drained {
                node: node.to_string(),
                evicted: report.evicted(),
            });
        } else {
            self.emit(Event::DrainIncomplete {
                node: node.to_string(),
                remaining: report.remaining(),
            });
        }
        Ok(report)
    }

    /// Pays the spot pre-scale back: terminate the drained at-risk instance with decrement
    /// (or, when it is already gone, lower desired capacity by the unfilled slot).
    async fn pay_back_prescale(
        &self,
        entry: &str,
        spot_group: &str,
        at_risk: &str,
    ) -> Result<bool, Error> {
        if !self.config.payback_prescale {
            self.transition(
                entry,
                EntryState::Released,
                "payback disabled by configuration; pre-scale kept",
            )
            .await?;
            return Ok(false);
        }
        let paid = self.locked(spot_group, async {
            // Under the lock, from the ledger as it is now: another flow for the same
            // instance (a second agent, the monitor resuming it) may have paid it back.
            let Some(open) = self.open_entry(entry).await? else {
                return Ok(None);
            };
            let g = self.describe(spot_group).await?;
            let how = if let Some(p) = open.payback.as_ref().filter(|p| p.is_done(&g)) {
                format!("{p:?} took effect before its outcome was recorded; paid back")
            } else if g.holds(at_risk) {
                self.record_payback(
                    entry,
                    Payback::Terminate {
                        instance: at_risk.to_string(),
                    },
                )
                .await?;
                match self.terminate_locked(&g, at_risk).await? {
                    Ok(true) => format!("terminated {at_risk} with decrement"),
                    Ok(false) => {
                        format!("terminated {at_risk} without decrement (group at its minimum)")
                    }
                    Err(CloudError::UnknownInstance { .. }) => {
                        match self
                            .lower_or_note_locked(spot_group, at_risk, entry)
                            .await?
                        {
                            Some(how) => how,
                            None => return Ok(None),
                        }
                    }
                    Err(e) => {
                        self.emit(Event::Error {
                            during: format!("paying back {entry}"),
                            message: e.to_string(),
                        });
                        return Ok(None);
                    }
                }
            } else {
                match self
                    .lower_or_note_locked(spot_group, at_risk, entry)
                    .await?
                {
                    Some(how) => how,
                    None => return Ok(None),
                }
            };
            // Released before the lock goes, so the next holder sees it paid back.
            let held = self.transition(entry, EntryState::Released, &how).await?;
            Ok(Some((how, held)))
        });
        let Some((how, held)) = paid.await? else {
            return Ok(false);
        };
        self.emit(Event::PaidBack {
            entry: entry.to_string(),
            group: spot_group.to_string(),
            how,
            held,
        });
        Ok(true)
    }

    /// The entry as the ledger holds it now, if it is still open.
    async fn open_entry(&self, id: &str) -> Result<Option<Entry>, Error> {
        let ledger = self.store.load().await?.value;
        Ok(ledger.get(id).filter(|e| e.is_open()).cloned())
    }

    /// Terminates a drained at-risk instance without decrement: the group launches a fresh
    /// one in its place, keeping its size.
    async fn recycle(&self, instance: &str) {
        match self.cloud.terminate_instance(instance, false).await {
            Ok(()) | Err(CloudError::UnknownInstance { .. }) => {}
            Err(e) => self.emit(Event::Error {
                during: format!("handing drained instance {instance} back to its group"),
                message: e.to_string(),
            }),
        }
    }

    /// Records a payback call before it is made (state `Draining`): if its outcome is lost
    /// (crash, failed save), settlement sees from the group that it took effect.
    async fn record_payback(&self, entry: &str, payback: Payback) -> Result<(), Error> {
        let now = self.clock.now();
        self.update_ledger(|l| {
            if let Some(e) = l.get_mut(entry) {
                e.note = format!("paying back: {payback:?}");
                e.payback = Some(payback.clone());
                e.state = EntryState::Draining;
                e.updated_at = now;
            }
        })
        .await
    }

    /// Releases an entry whose recorded payback the group shows as done.
    async fn settle_recorded_payback(&self, entry: &Entry, group: &Group) -> Result<bool, Error> {
        let Some(payback) = entry.payback.as_ref().filter(|p| p.is_done(group)) else {
            return Ok(false);
        };
        let note = format!("{payback:?} took effect before its outcome was recorded; paid back");
        self.transition(&entry.id, EntryState::Released, &note)
            .await?;
        self.emit(Event::EntrySettled {
            entry: entry.id.clone(),
            note,
        });
        Ok(true)
    }

    /// The at-risk instance is gone: lower the unfilled slot it left, or, when the group has
    /// already replaced it, hand the surplus instance to the monitor (`None`).
    async fn lower_or_note_locked(
        &self,
        group: &str,
        at_risk: &str,
        entry: &str,
    ) -> Result<Option<String>, Error> {
        if self.lower_unfilled_locked(group, entry).await? {
            return Ok(Some(format!(
                "{at_risk} already gone; lowered desired capacity by one"
            )));
        }
        let now = self.clock.now();
        let note = format!(
            "{at_risk} was reclaimed and replaced before the payback; the monitor gives the \
             surplus instance of {group} back"
        );
        self.update_ledger(|l| {
            if let Some(e) = l.get_mut(entry) {
                e.kind = EntryKind::Surplus;
                e.state = EntryState::Active;
                e.instance = None;
                e.instances_before = Vec::new();
                e.payback = None;
                e.note = note.clone();
                e.updated_at = now;
            }
        })
        .await?;
        self.emit(Event::EntrySettled {
            entry: entry.to_string(),
            note,
        });
        Ok(None)
    }

    /// Abandoning a pre-scale that delivered nothing: lower the unfilled slot.
    async fn give_back_unfilled(&self, entry: &str, group: &str) -> Result<(), Error> {
        let how = if self.lower_unfilled(group, entry).await? {
            "pre-scale delivered nothing; lowered desired capacity by one".to_string()
        } else {
            "pre-scale delivered nothing and no unfilled slot is left".to_string()
        };
        let held = self.transition(entry, EntryState::Released, &how).await?;
        self.emit(Event::PaidBack {
            entry: entry.to_string(),
            group: group.to_string(),
            how,
            held,
        });
        Ok(())
    }

    // ----- phase 2 ------------------------------------------------------------------------

    /// Phase 2: one monitor pass over the open ledger entries. With no open entry it makes no
    /// cloud call at all; otherwise one batched describe and at most one activities call.
    ///
    /// # Cancel safety
    ///
    /// Dropped at any await point, it leaves no entry claimed by this engine and no scale
    /// lock held; a scale-down under way is left `Draining` with its node tainted and
    /// cordoned, and the next tick finishes or abandons it (its termination is fenced by the
    /// entry's `scale_downs` count, so a node reopened meanwhile is never terminated).
    pub async fn monitor_tick(&self) -> Result<TickReport, Error> {
        let mut report = TickReport::default();
        let ledger = self.store.load().await?.value;
        let now = self.clock.now();
        let in_flight = self.state().in_flight.clone();
        let open: Vec<Entry> = ledger
            .open()
            .filter(|e| !in_flight.contains(&e.at_risk_instance))
            .cloned()
            .collect();
        if open.is_empty() {
            return Ok(report);
        }
        let groups = self
            .cloud
            .describe_groups(&self.config.group_names())
            .await?;
        let by_name: HashMap<&str, &Group> = groups.iter().map(|g| (g.name.as_str(), g)).collect();

        // Health of every spot group with an open fallback; activities only where the cheap
        // check (InService == desired) passes.
        let spot_groups: Vec<String> = {
            let mut v: Vec<String> = open
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::Fallback | EntryKind::Surplus))
                .map(|e| e.spot_group.clone())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let need_activities: Vec<String> = spot_groups
            .iter()
            .filter(|g| {
                by_name
                    .get(g.as_str())
                    .is_some_and(|g| g.serving_count() == g.desired)
            })
            .cloned()
            .collect();
        let window = self
            .config
            .timings
            .error_window
            .max(self.config.timings.stability);
        let activities = if need_activities.is_empty() {
            Vec::new()
        } else {
            self.cloud
                .scaling_activities(&need_activities, now.checked_sub(window).unwrap_or(now))
                .await?
        };
        let mut health_of: HashMap<String, Verdict> = HashMap::new();
        for name in &spot_groups {
            let verdict = match by_name.get(name.as_str()) {
                Some(g) => health(g, &activities, now, &self.config),
                None => Verdict::Wait(vec![Reason::GroupMissing {
                    group: name.clone(),
                }]),
            };
            let mut state = self.state();
            if verdict.is_go() {
                state.healthy_since.entry(name.clone()).or_insert(now);
            } else {
                state.healthy_since.remove(name);
            }
            health_of.insert(name.clone(), verdict);
        }

        // One snapshot and one safety index per tick (until a drain changes the cluster).
        let candidates: Vec<InstanceId> = open
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Fallback | EntryKind::Surplus))
            .filter_map(|e| e.instance.clone())
            .collect();
        let mut view: Option<TickView> = None;
        for entry in open {
            let Some(_claim) = self.claim(&entry.id) else {
                continue;
            };
            let outcome = match (entry.kind, entry.state) {
                (_, EntryState::Pending) if self.pending_is_stale(&entry, now) => {
                    self.settle_pending(&entry, &by_name).await.map(|_| ())
                }
                (_, EntryState::Pending) => Ok(()),
                (EntryKind::Prescale, _) => self.settle_prescale(&entry, &by_name).await,
                (EntryKind::Fallback | EntryKind::Surplus, _) => {
                    self.scale_down_step(
                        &entry,
                        &by_name,
                        &activities,
                        &health_of,
                        (&mut view, &candidates),
                        &mut report,
                    )
                    .await
                }
            };
            if let Err(e) = outcome {
                self.emit(Event::Error {
                    during: format!("monitoring {}", entry.id),
                    message: e.to_string(),
                });
                report.errors.push(format!("{}: {e}", entry.id));
            }
        }
        Ok(report)
    }

    /// Claims an entry for this monitor pass; `None` while another pass of this engine
    /// works on it (an embedder's overlapping ticks), which would otherwise judge, drain or
    /// abandon the same node at the same time.
    fn claim(&self, entry: &str) -> Option<Mark<'_, C, K, T, S, L>> {
        self.state()
            .monitoring
            .insert(entry.to_string())
            .then(|| Mark {
                engine: self,
                key: entry.to_string(),
                clear: |state, entry| {
                    state.monitoring.remove(entry);
                },
            })
    }

    async fn scale_down_step(
        &self,
        entry: &Entry,
        groups: &HashMap<&str, &Group>,
        activities: &[crate::model::Activity],
        health_of: &HashMap<String, Verdict>,
        (view, candidates): (&mut Option<TickView>, &[InstanceId]),
        report: &mut TickReport,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        let Some(od) = groups.get(entry.group.as_str()) else {
            return Err(CloudError::UnknownGroup {
                group: entry.group.clone(),
            }
            .into());
        };
        let Some(instance) = entry.instance.clone() else {
            return self.adopt_or_settle(entry, od).await;
        };
        if !od.holds(&instance) {
            self.transition(
                &entry.id,
                EntryState::Released,
                &format!(
                    "fallback instance {instance} left {} without Spot Guard",
                    od.name
                ),
            )
            .await?;
            self.emit(Event::EntrySettled {
                entry: entry.id.clone(),
                note: format!(
                    "fallback instance {instance} is gone from {}; nothing left to give back",
                    od.name
                ),
            });
            report.released.push(entry.id.clone());
            return Ok(());
        }

        let verdict = health_of
            .get(&entry.spot_group)
            .cloned()
            .unwrap_or(Verdict::Wait(vec![Reason::GroupMissing {
                group: entry.spot_group.clone(),
            }]));
        if !self.judge(entry, Check::Health, verdict, report).await? {
            return Ok(());
        }
        if view.is_none() {
            let cluster = self.cluster.snapshot().await?;
            let safety = {
                let index = SafetyIndex::new(&cluster, &self.config);
                candidates
                    .iter()
                    .map(|i| (i.clone(), index.check(i)))
                    .collect()
            };
            *view = Some(TickView { cluster, safety });
        }
        let TickView { cluster, safety } = view.as_ref().expect("view just built");
        let spot = groups.get(entry.spot_group.as_str()).copied();
        let since = self.state().healthy_since.get(&entry.spot_group).copied();
        let verdict = match spot {
            Some(g) => stability(g, activities, since, cluster, now, &self.config),
            None => Verdict::Wait(vec![Reason::GroupMissing {
                group: entry.spot_group.clone(),
            }]),
        };
        if !self.judge(entry, Check::Stability, verdict, report).await? {
            return Ok(());
        }
        let verdict = match safety.get(&instance) {
            Some(v) => v.clone(),
            None => SafetyIndex::new(cluster, &self.config).check(&instance),
        };
        let node = cluster.node_for_instance(&instance).map(|n| n.name.clone());
        if !self.judge(entry, Check::Safety, verdict, report).await? {
            return Ok(());
        }
        let Some(node) = node else {
            return Ok(());
        };

        // Go: taint, cordon, drain, then terminate with decrement.
        let entry = if entry.state == EntryState::Draining {
            entry.clone()
        } else {
            match self.start_scale_down(&entry.id, &node).await? {
                Some(started) => started,
                None => return Ok(()),
            }
        };
        let entry = &entry;
        self.emit(Event::ScaleDownStarted {
            entry: entry.id.clone(),
            node: node.clone(),
        });
        self.taint(&node).await?;
        self.cluster.set_unschedulable(&node, true).await?;
        self.emit(Event::Cordoned { node: node.clone() });
        *view = None;
        let drained = self.drain(&node).await?;
        if !drained.is_complete() {
            report.draining.push(entry.id.clone());
            return Ok(());
        }
        // Under both groups' locks, on the groups as they are now: phase 1 may be raising
        // the on-demand group, or the spot group (which would make it unhealthy again).
        let spot_group = entry.spot_group.as_str();
        let remove = async {
            let names = [od.name.clone(), entry.spot_group.clone()];
            let fresh = self.cloud.describe_groups(&names).await?;
            let (g, spot) = (named(&fresh, &od.name)?, named(&fresh, spot_group)?);
            let verdict = health(spot, activities, self.clock.now(), &self.config);
            if !verdict.is_go() {
                return Ok(Removal::Relapsed(verdict));
            }
            let how = if !g.holds(&instance) {
                format!(
                    "fallback instance {instance} left {} while it was drained",
                    od.name
                )
            } else {
                // The commit point: recorded only if this is still the scale-down that
                // drained the node (none abandoned it and reopened the node meanwhile).
                if !self.commit_scale_down(entry, &instance).await? {
                    return Ok(Removal::Superseded);
                }
                match self.terminate_locked(g, &instance).await? {
                    Ok(true) => format!("terminated {instance} with decrement"),
                    Ok(false) => format!(
                        "terminated {instance} without decrement ({} at its minimum)",
                        od.name
                    ),
                    Err(e) => {
                        let e = Error::from(e);
                        // Refused for good: the node may be opened again. A retryable failure
                        // (a timeout among them) may still take effect: the record stays and
                        // the next pass settles from the group what happened.
                        if !e.is_transient() {
                            self.withdraw_payback(&entry.id).await?;
                        }
                        return Err(e);
                    }
                }
            };
            // Released before the locks go, so the next holder sees it given back.
            self.transition(&entry.id, EntryState::Released, &how)
                .await?;
            Ok(Removal::Done(how))
        };
        // A surplus spot instance is given back to the spot group itself: one lock.
        let removed = if od.name == spot_group {
            self.locked(spot_group, remove).await?
        } else {
            self.locked(&od.name, self.locked(spot_group, remove))
                .await?
        };
        let how = match removed {
            Removal::Done(how) => how,
            Removal::Relapsed(verdict) => {
                // Spot relapsed while the node drained: keep the fallback.
                self.judge(entry, Check::Health, verdict, report).await?;
                return Ok(());
            }
            Removal::Superseded => {
                self.emit(Event::EntrySettled {
                    entry: entry.id.clone(),
                    note: format!(
                        "scale-down of {node} superseded by another monitor pass; {instance} kept"
                    ),
                });
                return Ok(());
            }
        };
        self.emit(Event::PaidBack {
            entry: entry.id.clone(),
            group: od.name.clone(),
            how,
            held: self
                .clock
                .now()
                .duration_since(entry.created_at)
                .unwrap_or_default(),
        });
        report.released.push(entry.id.clone());
        Ok(())
    }

    /// Moves an open entry to `Draining` as a new scale-down of `node`, counted in its
    /// `scale_downs`; returns the entry as started, or `None` when it was settled or its
    /// payback committed meanwhile.
    async fn start_scale_down(&self, id: &str, node: &str) -> Result<Option<Entry>, Error> {
        let now = self.clock.now();
        self.update_ledger(|l| {
            let e = l
                .get_mut(id)
                .filter(|e| e.is_open() && e.payback.is_none())?;
            e.state = EntryState::Draining;
            e.scale_downs += 1;
            e.note = format!("removing node {node}");
            e.updated_at = now;
            Some(e.clone())
        })
        .await
    }

    /// Records the termination of a drained fallback instance before it is sent, if `entry`
    /// is still the scale-down the ledger holds (same `scale_downs`, still draining): the
    /// fence that keeps a pass whose drain was abandoned meanwhile from terminating a node
    /// that is open to pods again. Returns whether it was recorded.
    async fn commit_scale_down(&self, entry: &Entry, instance: &str) -> Result<bool, Error> {
        let payback = Payback::Terminate {
            instance: instance.to_string(),
        };
        let now = self.clock.now();
        self.update_ledger(|l| {
            let Some(e) = l.get_mut(&entry.id) else {
                return false;
            };
            let current = e.state == EntryState::Draining
                && e.scale_downs == entry.scale_downs
                && e.payback.as_ref().is_none_or(|p| *p == payback);
            if current {
                e.note = format!("paying back: {payback:?}");
                e.payback = Some(payback.clone());
                e.updated_at = now;
            }
            current
        })
        .await
    }

    /// Clears a recorded termination that Auto Scaling refused.
    async fn withdraw_payback(&self, id: &str) -> Result<(), Error> {
        self.update_ledger(|l| {
            if let Some(e) = l.get_mut(id) {
                e.payback = None;
            }
        })
        .await
    }

    /// Emits a verdict; on wait, abandons a scale-down in progress (untaint, uncordon) unless
    /// only PDBs hold it (the drain itself waits for those).
    async fn judge(
        &self,
        entry: &Entry,
        check: Check,
        verdict: Verdict,
        report: &mut TickReport,
    ) -> Result<bool, Error> {
        self.emit(Event::Verdict {
            entry: entry.id.clone(),
            check,
            verdict: verdict.clone(),
        });
        if verdict.is_go() {
            return Ok(true);
        }
        let only_pdbs = verdict
            .reasons()
            .iter()
            .all(|r| matches!(r, Reason::PdbBlocks { .. }))
            && check == Check::Safety;
        if entry.state == EntryState::Draining && !only_pdbs {
            self.abandon_scale_down(entry).await?;
        }
        if entry.state == EntryState::Draining && only_pdbs {
            // Pods are on their way out; keep draining.
            return Ok(true);
        }
        report.waiting.push((entry.id.clone(), verdict));
        Ok(false)
    }

    /// Abandons a scale-down in progress: fences it off in the ledger first (a pass still
    /// draining the node, in this process or a former leader, can no longer terminate it),
    /// then opens the node to pods again. Nothing to do when its termination is already
    /// committed or the entry settled.
    async fn abandon_scale_down(&self, entry: &Entry) -> Result<(), Error> {
        let now = self.clock.now();
        let fenced = self
            .update_ledger(|l| {
                let e = l
                    .get_mut(&entry.id)
                    .filter(|e| e.state == EntryState::Draining && e.payback.is_none())?;
                e.scale_downs += 1;
                e.note = "abandoning the scale-down".into();
                e.updated_at = now;
                Some(e.scale_downs)
            })
            .await?;
        let Some(fence) = fenced else {
            return Ok(());
        };
        let snapshot = self.cluster.snapshot().await?;
        if let Some(node) = entry
            .instance
            .as_deref()
            .and_then(|i| snapshot.node_for_instance(i))
        {
            self.cluster
                .untaint(&node.name, &self.config.taint.key)
                .await?;
            self.emit(Event::Untainted {
                node: node.name.clone(),
            });
            self.cluster.set_unschedulable(&node.name, false).await?;
            self.emit(Event::Uncordoned {
                node: node.name.clone(),
            });
        }
        let now = self.clock.now();
        self.update_ledger(|l| {
            if let Some(e) = l
                .get_mut(&entry.id)
                .filter(|e| e.state == EntryState::Draining && e.scale_downs == fence)
            {
                e.state = EntryState::Active;
                e.note = "scale-down abandoned: spot no longer healthy and stable".into();
                e.updated_at = now;
            }
        })
        .await
    }

    /// A fallback entry without an instance: adopt a new unclaimed instance of the group, or,
    /// once stale, lower the unfilled slot it left.
    async fn adopt_or_settle(&self, entry: &Entry, od: &Group) -> Result<(), Error> {
        let now = self.clock.now();
        // Phase 1 (possibly in an agent process) may still be waiting for this instance:
        // leave it the whole wait before adopting on its behalf.
        let since_update = now.duration_since(entry.updated_at).unwrap_or_default();
        if since_update < self.config.timings.scale_up_timeout + self.config.timings.asg_poll {
            return Ok(());
        }
        let id = entry.id.clone();
        let found = self
            .update_ledger(|l| {
                let claimed = l.claimed_instances();
                let new = od
                    .instances
                    .iter()
                    .find(|i| {
                        i.is_serving()
                            && !claimed.contains(&i.id)
                            && !entry.instances_before.contains(&i.id)
                    })
                    .map(|i| i.id.clone());
                if let (Some(e), Some(new)) = (l.get_mut(&id), &new) {
                    e.instance = Some(new.clone());
                    e.note = "fallback instance adopted by the monitor".into();
                    e.updated_at = now;
                }
                new
            })
            .await?;
        if let Some(instance) = found {
            self.emit(Event::EntrySettled {
                entry: entry.id.clone(),
                note: format!("adopted fallback instance {instance}"),
            });
            return Ok(());
        }
        let age = now.duration_since(entry.created_at).unwrap_or_default();
        if age >= self.config.timings.stale_after {
            if self.settle_recorded_payback(entry, od).await? {
                return Ok(());
            }
            let note = if self.lower_unfilled(&od.name, &entry.id).await? {
                "no instance ever came; lowered desired capacity by the unfilled slot"
            } else {
                "no instance ever came and no unfilled slot is left"
            };
            self.transition(&entry.id, EntryState::Released, note)
                .await?;
            self.emit(Event::EntrySettled {
                entry: entry.id.clone(),
                note: note.into(),
            });
        }
        Ok(())
    }

    /// A pending entry younger than the scale-up timeout may belong to a scale-up in progress
    /// in another process; it is left alone until then.
    fn pending_is_stale(&self, entry: &Entry, now: SystemTime) -> bool {
        now.duration_since(entry.created_at).unwrap_or_default()
            >= self.config.timings.scale_up_timeout
    }

    /// A pending entry (intent written, outcome of the call unknown, e.g. after a crash):
    /// decide from the group whether the increase happened.
    async fn settle_pending(
        &self,
        entry: &Entry,
        groups: &HashMap<&str, &Group>,
    ) -> Result<bool, Error> {
        let Some(g) = groups.get(entry.group.as_str()) else {
            return Err(CloudError::UnknownGroup {
                group: entry.group.clone(),
            }
            .into());
        };
        let new_instance = g
            .instances
            .iter()
            .any(|i| !entry.instances_before.contains(&i.id));
        let raised = g.desired > entry.desired_before || new_instance;
        let (state, note) = if raised {
            (
                EntryState::Active,
                format!(
                    "recovered: {} was raised (desired {} → {})",
                    g.name, entry.desired_before, g.desired
                ),
            )
        } else {
            (
                EntryState::Released,
                format!("recovered: {} was never raised", g.name),
            )
        };
        self.transition(&entry.id, state, &note).await?;
        self.emit(Event::EntrySettled {
            entry: entry.id.clone(),
            note,
        });
        Ok(raised)
    }

    /// An active pre-scale whose phase 1 no longer runs (crash, restart): finish it.
    async fn settle_prescale(
        &self,
        entry: &Entry,
        groups: &HashMap<&str, &Group>,
    ) -> Result<(), Error> {
        let t = &self.config.timings;
        let grace = t.scale_up_timeout + self.config.drain.timeout + t.monitor_interval;
        let age = self
            .clock
            .now()
            .duration_since(entry.updated_at)
            .unwrap_or_default();
        if age < grace {
            return Ok(()); // phase 1 may still be running in another process
        }
        let Some(spot) = groups.get(entry.group.as_str()) else {
            return Err(CloudError::UnknownGroup {
                group: entry.group.clone(),
            }
            .into());
        };
        if self.settle_recorded_payback(entry, spot).await? {
            return Ok(());
        }
        if spot.holds(&entry.at_risk_instance) {
            // Resume: the at-risk node is still there; drain it (the replacement was asked
            // for long ago), then pay back.
            let snapshot = self.cluster.snapshot().await?;
            if let Some(node) = snapshot.node_for_instance(&entry.at_risk_instance) {
                let node = node.name.clone();
                self.taint(&node).await?;
                if !self.drain(&node).await?.is_complete() {
                    return Ok(());
                }
            }
        }
        self.emit(Event::EntrySettled {
            entry: entry.id.clone(),
            note: "resuming an interrupted pre-scale".into(),
        });
        self.pay_back_prescale(&entry.id, &entry.group, &entry.at_risk_instance)
            .await
            .map(|_| ())
    }

    // ----- recovery and cleanup -----------------------------------------------------------

    /// At start-up: settles every pending entry old enough not to belong to a scale-up still
    /// in progress elsewhere; the monitor resumes every other open entry. Returns the number
    /// of open entries.
    ///
    /// # Cancel safety
    ///
    /// Each entry is settled with one ledger save; dropped part-way, the entries not yet
    /// settled stay `Pending` for the next call.
    pub async fn recover(&self) -> Result<usize, Error> {
        let ledger = self.store.load().await?.value;
        let now = self.clock.now();
        let pending: Vec<&Entry> = ledger
            .open()
            .filter(|e| e.state == EntryState::Pending && self.pending_is_stale(e, now))
            .collect();
        if !pending.is_empty() {
            let groups = self
                .cloud
                .describe_groups(&self.config.group_names())
                .await?;
            let by_name: HashMap<&str, &Group> =
                groups.iter().map(|g| (g.name.as_str(), g)).collect();
            for e in pending {
                self.settle_pending(e, &by_name).await?;
            }
        }
        Ok(self.store.load().await?.value.open().count())
    }

    /// Drops released entries older than the retention period.
    ///
    /// # Cancel safety
    ///
    /// One ledger save: dropped, nothing or everything was dropped.
    pub async fn cleanup(&self) -> Result<usize, Error> {
        let now = self.clock.now();
        let retention = self.config.timings.released_retention;
        let removed = self.update_ledger(|l| l.cleanup(now, retention)).await?;
        if removed > 0 {
            self.emit(Event::LedgerCleaned { removed });
        }
        Ok(removed)
    }

    /// The ledger as stored. Cancel safe: it only reads.
    pub async fn ledger(&self) -> Result<Ledger, Error> {
        Ok(self.store.load().await?.value)
    }
}

#[cfg(test)]
pub(crate) mod fakes;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
