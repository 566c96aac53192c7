//! The fallback ledger: every capacity increase Spot Guard makes, until it is paid back.
//!
//! An entry is written as `Pending` *before* the scale-up call, so a crash between the call and
//! the record cannot leak an instance: on restart, [`crate::engine::Engine::recover`] looks at
//! the group and settles every pending entry. Entries become `Active` once the increase is
//! confirmed, `Draining` while the monitor removes the fallback node, and `Released` once paid
//! back. [`Ledger::cleanup`] drops released entries after a retention period.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use spotguard_core::ledger::{EntryKind, EntryState, Intent, Ledger};
//! let t0 = SystemTime::UNIX_EPOCH;
//! let mut ledger = Ledger::default();
//! let id = ledger.record_intent(Intent::new(EntryKind::Fallback, "web-od", "web-spot", "i-risky", 2), t0);
//! ledger.get_mut(&id).unwrap().state = EntryState::Released;
//! ledger.get_mut(&id).unwrap().updated_at = t0;
//! assert_eq!(ledger.cleanup(t0 + Duration::from_secs(7200), Duration::from_secs(3600)), 1);
//! assert!(ledger.entries.is_empty());
//! ```

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::model::InstanceId;

/// What a ledger entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EntryKind {
    /// An on-demand instance launched because spot capacity failed; the monitor gives it back.
    Fallback,
    /// The spot pre-scale (+1) of phase 1; paid back by terminating the drained at-risk instance
    /// with decrement.
    Prescale,
    /// A pre-scale whose at-risk instance EC2 reclaimed before the payback, after the group
    /// had already replaced it: the group holds one instance too many, which the monitor
    /// gives back like a fallback (health, stability, safety, drain, terminate with
    /// decrement).
    Surplus,
}

impl EntryKind {
    /// The name the ledger's JSON uses (`fallback`, `prescale`, `surplus`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fallback => "fallback",
            Self::Prescale => "prescale",
            Self::Surplus => "surplus",
        }
    }
}

/// Where an entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryState {
    /// Intent recorded; the scale-up call may or may not have happened.
    Pending,
    /// The increase happened; capacity is owed back.
    Active,
    /// The monitor is draining the fallback node.
    Draining,
    /// Paid back (or found never to have happened); kept for a while, then cleaned up.
    Released,
}

impl EntryState {
    /// The name the ledger's JSON uses (`pending`, `active`, `draining`, `released`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Released => "released",
        }
    }
}

/// One capacity increase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique id.
    pub id: String,
    /// Fallback or spot pre-scale.
    pub kind: EntryKind,
    /// Group that was raised (the on-demand group of a fallback, the spot group of a
    /// pre-scale).
    pub group: String,
    /// Spot group the at-risk instance belongs to.
    pub spot_group: String,
    /// The at-risk spot instance this increase replaced.
    pub at_risk_instance: InstanceId,
    /// The instance the increase launched, once known (fallbacks).
    pub instance: Option<InstanceId>,
    /// Desired capacity of `group` just before the increase.
    pub desired_before: u32,
    /// Instances of `group` just before the increase: a new one is ours.
    pub instances_before: Vec<InstanceId>,
    /// State.
    pub state: EntryState,
    /// When the intent was recorded.
    #[serde(with = "humantime_serde")]
    pub created_at: SystemTime,
    /// Last state change.
    #[serde(with = "humantime_serde")]
    pub updated_at: SystemTime,
    /// Why the entry is in its current state, for operators.
    #[serde(default)]
    pub note: String,
    /// The payback call about to be made, recorded before it is sent, so a payback whose
    /// outcome was lost is recognised instead of made twice.
    #[serde(default)]
    pub payback: Option<Payback>,
    /// Scale-downs of this entry's node the monitor has started or abandoned so far. A
    /// scale-down terminates the node only if this is still the number it started with: one
    /// abandoned meanwhile (and so uncordoned, open to new pods) or started anew by another
    /// monitor pass fences it off.
    #[serde(default)]
    pub scale_downs: u32,
}

/// A payback call in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Payback {
    /// Terminating this instance with decrement.
    Terminate {
        /// Instance.
        instance: InstanceId,
    },
    /// Lowering desired capacity from this value by one.
    Lower {
        /// Desired capacity before the call.
        from: u32,
    },
}

impl Payback {
    /// Whether the group shows the call took effect.
    pub fn is_done(&self, group: &crate::model::Group) -> bool {
        match self {
            Self::Terminate { instance } => !group.holds(instance),
            Self::Lower { from } => group.desired < *from,
        }
    }
}

impl Entry {
    /// Whether capacity may still be owed (not released).
    pub fn is_open(&self) -> bool {
        self.state != EntryState::Released
    }

    /// The instance whose removal pays the entry back: the at-risk instance of a pre-scale
    /// (its drain and termination undo the +1), the launched instance of a fallback or a
    /// surplus (once known).
    pub fn owed_instance(&self) -> Option<&str> {
        match self.kind {
            EntryKind::Prescale => Some(&self.at_risk_instance),
            EntryKind::Fallback | EntryKind::Surplus => self.instance.as_deref(),
        }
    }
}

/// What a new entry is about: the increase about to be requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// Fallback or pre-scale.
    pub kind: EntryKind,
    /// Group about to be raised.
    pub group: String,
    /// Spot group of the at-risk instance.
    pub spot_group: String,
    /// The at-risk spot instance.
    pub at_risk_instance: InstanceId,
    /// Desired capacity of `group` now.
    pub desired_before: u32,
    /// Instances of `group` now.
    pub instances_before: Vec<InstanceId>,
}

impl Intent {
    /// An intent with no recorded instances (handy in tests and examples).
    pub fn new(
        kind: EntryKind,
        group: &str,
        spot_group: &str,
        at_risk: &str,
        desired_before: u32,
    ) -> Self {
        Self {
            kind,
            group: group.into(),
            spot_group: spot_group.into(),
            at_risk_instance: at_risk.into(),
            desired_before,
            instances_before: Vec::new(),
        }
    }
}

/// The ledger: all entries, open and recently released.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Entries in creation order.
    pub entries: Vec<Entry>,
    /// Counter for entry ids, so ids stay unique across restarts.
    #[serde(default)]
    pub next_id: u64,
}

impl Ledger {
    /// Records the intent to raise a group by one; returns the new entry's id.
    pub fn record_intent(&mut self, intent: Intent, now: SystemTime) -> String {
        let Intent {
            kind,
            group,
            spot_group,
            at_risk_instance,
            desired_before,
            instances_before,
        } = intent;
        self.next_id += 1;
        let prefix = match kind {
            EntryKind::Fallback => "fb",
            EntryKind::Prescale => "ps",
            EntryKind::Surplus => "sp",
        };
        let id = format!("{prefix}-{}-{}", self.next_id, at_risk_instance);
        self.entries.push(Entry {
            id: id.clone(),
            kind,
            group,
            spot_group,
            at_risk_instance,
            instance: None,
            desired_before,
            instances_before,
            state: EntryState::Pending,
            created_at: now,
            updated_at: now,
            note: "scale-up requested".into(),
            payback: None,
            scale_downs: 0,
        });
        id
    }

    /// The entry with this id.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// The entry with this id, mutably.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.id == id)
    }

    /// Moves an entry to a state, with a note, and returns how long the entry had been in
    /// the ledger by then; no-op (and `None`) for unknown ids.
    pub fn transition(
        &mut self,
        id: &str,
        state: EntryState,
        note: &str,
        now: SystemTime,
    ) -> Option<std::time::Duration> {
        let e = self.get_mut(id)?;
        e.state = state;
        e.note = note.to_string();
        e.updated_at = now;
        Some(now.duration_since(e.created_at).unwrap_or_default())
    }

    /// Entries not yet released.
    pub fn open(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.is_open())
    }

    /// Number of entries per state: pending, active, draining, released.
    pub fn counts(&self) -> [usize; 4] {
        let mut c = [0; 4];
        for e in &self.entries {
            c[match e.state {
                EntryState::Pending => 0,
                EntryState::Active => 1,
                EntryState::Draining => 2,
                EntryState::Released => 3,
            }] += 1;
        }
        c
    }

    /// Instances already claimed by an open entry.
    pub fn claimed_instances(&self) -> Vec<InstanceId> {
        self.open().filter_map(|e| e.instance.clone()).collect()
    }

    /// Drops released entries older than `retention`; returns how many were dropped.
    pub fn cleanup(&mut self, now: SystemTime, retention: std::time::Duration) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| {
            e.is_open()
                || now
                    .duration_since(e.updated_at)
                    .map(|age| age < retention)
                    .unwrap_or(true)
        });
        before - self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names_are_the_json_names() {
        for kind in [EntryKind::Fallback, EntryKind::Prescale, EntryKind::Surplus] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for state in [
            EntryState::Pending,
            EntryState::Active,
            EntryState::Draining,
            EntryState::Released,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }

    #[test]
    fn ids_are_unique_and_state_flows() {
        let t = SystemTime::UNIX_EPOCH;
        let mut l = Ledger::default();
        let a = l.record_intent(Intent::new(EntryKind::Fallback, "od", "s", "i-1", 1), t);
        let b = l.record_intent(Intent::new(EntryKind::Prescale, "s", "s", "i-1", 3), t);
        assert_ne!(a, b);
        l.transition(&a, EntryState::Active, "up", t);
        assert_eq!(l.counts(), [1, 1, 0, 0]);
        l.get_mut(&a).unwrap().instance = Some("i-od".into());
        assert_eq!(l.claimed_instances(), vec!["i-od".to_string()]);
        l.transition(&a, EntryState::Released, "paid back", t);
        assert_eq!(l.claimed_instances(), Vec::<String>::new());
        assert_eq!(l.open().count(), 1);
    }

    #[test]
    fn cleanup_keeps_open_and_recent_entries() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut l = Ledger::default();
        let old = l.record_intent(Intent::new(EntryKind::Fallback, "od", "s", "i-1", 1), t);
        let recent = l.record_intent(Intent::new(EntryKind::Fallback, "od", "s", "i-2", 1), t);
        let open = l.record_intent(Intent::new(EntryKind::Fallback, "od", "s", "i-3", 1), t);
        l.transition(&old, EntryState::Released, "", t);
        l.transition(
            &recent,
            EntryState::Released,
            "",
            t + Duration::from_secs(3000),
        );
        let now = t + Duration::from_secs(4000);
        assert_eq!(l.cleanup(now, Duration::from_secs(3600)), 1);
        assert!(l.get(&old).is_none());
        assert!(l.get(&recent).is_some());
        assert!(l.get(&open).is_some());
    }

    #[test]
    fn round_trips_through_json_with_readable_times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut l = Ledger::default();
        let mut intent = Intent::new(EntryKind::Fallback, "od", "s", "i-1", 1);
        intent.instances_before = vec!["i-9".into()];
        l.record_intent(intent, t);
        let json = serde_json::to_string(&l).unwrap();
        assert!(json.contains("2023-11-14T22:13:20Z"), "{json}");
        assert!(json.contains("\"pending\""));
        let back: Ledger = serde_json::from_str(&json).unwrap();
        assert_eq!(back, l);
    }
}
