//! What an operator reads beside the ledger: the monitor's latest verdict on each open entry,
//! and the most recent actions. The leading controller keeps a [`StatusRecord`] from the
//! engine's events and stores it where `spotguard status` reads it.
//!
//! ```
//! use std::time::SystemTime;
//! use spotguard_core::events::{Check, Event};
//! use spotguard_core::predicates::{Reason, Verdict};
//! use spotguard_core::status::StatusRecord;
//! let mut status = StatusRecord::default();
//! let now = SystemTime::UNIX_EPOCH;
//! let wait = Verdict::Wait(vec![Reason::NotHealthy { group: "web-spot".into() }]);
//! let event = Event::Verdict { entry: "fb-1".into(), check: Check::Health, verdict: wait };
//! assert!(status.observe(now, &event));
//! // The same verdict again changes nothing an operator would read.
//! assert!(!status.observe(now, &event));
//! assert_eq!(status.latest("fb-1").unwrap().check, Check::Health);
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::events::{Check, Event};
use crate::ledger::Ledger;
use crate::predicates::Verdict;

/// How many recent actions a record keeps by default.
pub const DEFAULT_ACTIONS: usize = 50;

/// One predicate's verdict on an entry, and since when it has said so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckVerdict {
    /// The predicate.
    pub check: Check,
    /// Its answer.
    pub verdict: Verdict,
    /// The answer as one line, for readers without these types (`kubectl get -o json`).
    pub summary: String,
    /// When the predicate first gave this answer.
    #[serde(with = "humantime_serde")]
    pub since: SystemTime,
    /// When it last gave it.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
}

/// The monitor's verdicts on one entry: one per predicate it asked on its latest pass
/// (health, then stability, then safety, stopping at the first that waits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryVerdicts {
    /// In the order they are asked.
    pub checks: Vec<CheckVerdict>,
}

impl EntryVerdicts {
    /// The verdict that decides: the first that waits, else the last (all go).
    pub fn latest(&self) -> Option<&CheckVerdict> {
        self.checks
            .iter()
            .find(|c| !c.verdict.is_go())
            .or(self.checks.last())
    }
}

/// Something Spot Guard did, as status lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// When.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// The event's name ([`Event::name`]).
    pub event: String,
    /// What happened, as one line.
    pub message: String,
    /// Whether it went wrong or was refused.
    #[serde(default)]
    pub warning: bool,
    /// Instance, if the event names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Node, if the event names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Group, if the event names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Ledger entry, if the event names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
}

impl ActionRecord {
    /// The record of `event`, at `at`.
    pub fn of(at: SystemTime, event: &Event) -> Self {
        let s = event.subjects();
        Self {
            at,
            event: event.name().to_string(),
            message: event.to_string(),
            warning: event.is_warning(),
            instance: s.instance.map(str::to_string),
            node: s.node.map(str::to_string),
            group: s.group.map(str::to_string),
            entry: s.entry.map(str::to_string),
        }
    }
}

/// The monitor's latest verdicts per entry and the recent actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// Verdicts by ledger entry id.
    #[serde(default)]
    pub verdicts: BTreeMap<String, EntryVerdicts>,
    /// The most recent actions, oldest first.
    #[serde(default)]
    pub actions: VecDeque<ActionRecord>,
    /// How many actions are kept.
    #[serde(default = "default_actions")]
    pub keep_actions: usize,
}

fn default_actions() -> usize {
    DEFAULT_ACTIONS
}

impl Default for StatusRecord {
    fn default() -> Self {
        Self {
            verdicts: BTreeMap::new(),
            actions: VecDeque::new(),
            keep_actions: DEFAULT_ACTIONS,
        }
    }
}

fn order(check: Check) -> u8 {
    match check {
        Check::Health => 0,
        Check::Stability => 1,
        Check::Safety => 2,
    }
}

impl StatusRecord {
    /// Takes one engine event in. Returns whether anything an operator reads changed: a new
    /// action, or a verdict whose answer changed (the same answer again only moves its `at`).
    pub fn observe(&mut self, at: SystemTime, event: &Event) -> bool {
        match event {
            Event::Verdict {
                entry,
                check,
                verdict,
            } => self.verdict(entry, *check, verdict, at),
            _ if event.is_action() => {
                if let Event::PaidBack { entry, .. } = event {
                    self.verdicts.remove(entry);
                }
                self.actions.push_back(ActionRecord::of(at, event));
                while self.actions.len() > self.keep_actions {
                    self.actions.pop_front();
                }
                true
            }
            _ => false,
        }
    }

    fn verdict(&mut self, entry: &str, check: Check, verdict: &Verdict, at: SystemTime) -> bool {
        let checks = &mut self.verdicts.entry(entry.to_string()).or_default().checks;
        // A predicate that waits ends the pass: the ones after it were not asked. (One that
        // says go leaves them until the pass reaches them.)
        let before = checks.len();
        if !verdict.is_go() {
            checks.retain(|c| order(c.check) <= order(check));
        }
        let mut changed = checks.len() != before;
        match checks.iter_mut().find(|c| c.check == check) {
            Some(c) if c.verdict == *verdict => c.at = at,
            found => {
                let record = CheckVerdict {
                    check,
                    verdict: verdict.clone(),
                    summary: verdict.to_string(),
                    since: at,
                    at,
                };
                match found {
                    Some(c) => *c = record,
                    None => {
                        checks.push(record);
                        checks.sort_by_key(|c| order(c.check));
                    }
                }
                changed = true;
            }
        }
        changed
    }

    /// The deciding verdict on `entry` ([`EntryVerdicts::latest`]).
    pub fn latest(&self, entry: &str) -> Option<&CheckVerdict> {
        self.verdicts.get(entry).and_then(EntryVerdicts::latest)
    }

    /// Drops the verdicts of entries that are no longer open in `ledger`; returns whether any
    /// were dropped.
    pub fn retain_open(&mut self, ledger: &Ledger) -> bool {
        let before = self.verdicts.len();
        self.verdicts
            .retain(|id, _| ledger.get(id).is_some_and(|e| e.is_open()));
        self.verdicts.len() != before
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ledger::{EntryKind, EntryState, Intent};
    use crate::predicates::Reason;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn verdict(entry: &str, check: Check, verdict: Verdict) -> Event {
        Event::Verdict {
            entry: entry.into(),
            check,
            verdict,
        }
    }

    fn too_short(secs: u64) -> Verdict {
        Verdict::Wait(vec![Reason::HealthyTooShort {
            group: "web-spot".into(),
            healthy_for: Duration::from_secs(secs),
            required: Duration::from_secs(120),
        }])
    }

    #[test]
    fn the_deciding_verdict_is_the_first_that_waits_of_the_latest_pass() {
        let mut s = StatusRecord::default();
        assert!(s.observe(t(0), &verdict("e", Check::Health, Verdict::Go)));
        assert!(s.observe(t(0), &verdict("e", Check::Stability, too_short(10))));
        // The next pass, same answers but a longer healthy time: the stability reason
        // changed, the health answer did not.
        assert!(!s.observe(t(30), &verdict("e", Check::Health, Verdict::Go)));
        assert!(s.observe(t(30), &verdict("e", Check::Stability, too_short(40))));
        let latest = s.latest("e").unwrap();
        assert_eq!(latest.check, Check::Stability);
        assert_eq!(latest.since, t(30));
        assert!(
            latest.summary.contains("healthy for 40s"),
            "{}",
            latest.summary
        );
        // Everything goes: the safety verdict decides.
        s.observe(t(60), &verdict("e", Check::Health, Verdict::Go));
        s.observe(t(60), &verdict("e", Check::Stability, Verdict::Go));
        s.observe(t(60), &verdict("e", Check::Safety, Verdict::Go));
        assert_eq!(s.latest("e").unwrap().check, Check::Safety);
        assert_eq!(s.latest("e").unwrap().since, t(60));
        // Health waits again: the later verdicts of the older pass no longer stand.
        let unhealthy = Verdict::Wait(vec![Reason::NotHealthy {
            group: "web-spot".into(),
        }]);
        assert!(s.observe(t(90), &verdict("e", Check::Health, unhealthy.clone())));
        assert_eq!(s.verdicts["e"].checks.len(), 1);
        assert_eq!(s.latest("e").unwrap().verdict, unhealthy);
        assert_eq!(s.latest("e").unwrap().at, t(90));
    }

    #[test]
    fn actions_are_kept_up_to_the_limit_and_a_payback_closes_the_entry() {
        let mut s = StatusRecord {
            keep_actions: 2,
            ..StatusRecord::default()
        };
        s.observe(t(0), &verdict("e", Check::Health, Verdict::Go));
        assert!(!s.observe(
            t(1),
            &Event::NoticeRetrying {
                instance: "i-1".into(),
                attempt: 1,
                after: Duration::from_secs(5),
                reason: "throttled".into()
            }
        ));
        for node in ["a", "b"] {
            assert!(s.observe(t(2), &Event::Tainted { node: node.into() }));
        }
        assert!(s.observe(
            t(3),
            &Event::PaidBack {
                entry: "e".into(),
                group: "web-od".into(),
                how: "terminated i-9 with decrement".into(),
                held: Duration::from_secs(600),
            }
        ));
        assert!(s.verdicts.is_empty());
        let names: Vec<_> = s.actions.iter().map(|a| a.event.as_str()).collect();
        assert_eq!(names, ["Tainted", "PaidBack"]);
        assert_eq!(s.actions[1].entry.as_deref(), Some("e"));
        assert_eq!(s.actions[1].group.as_deref(), Some("web-od"));
        assert_eq!(s.actions[0].node.as_deref(), Some("b"));
    }

    #[test]
    fn verdicts_of_entries_no_longer_open_are_dropped() {
        let mut ledger = Ledger::default();
        let open = ledger.record_intent(
            Intent::new(EntryKind::Fallback, "od", "spot", "i-1", 1),
            t(0),
        );
        let closed = ledger.record_intent(
            Intent::new(EntryKind::Fallback, "od", "spot", "i-2", 1),
            t(0),
        );
        ledger.transition(&closed, EntryState::Released, "paid back", t(1));
        let mut s = StatusRecord::default();
        for id in [&open, &closed, &"gone".to_string()] {
            s.observe(t(2), &verdict(id, Check::Health, Verdict::Go));
        }
        assert!(s.retain_open(&ledger));
        assert_eq!(s.verdicts.keys().collect::<Vec<_>>(), [&open]);
        assert!(!s.retain_open(&ledger));
    }

    #[test]
    fn a_record_survives_its_json() {
        let mut s = StatusRecord::default();
        s.observe(t(0), &verdict("e", Check::Stability, too_short(5)));
        s.observe(t(1), &Event::Cordoned { node: "n".into() });
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<StatusRecord>(&text).unwrap(), s);
        // Older or hand-written records without the optional fields still load.
        let minimal: StatusRecord = serde_json::from_str("{}").unwrap();
        assert_eq!(minimal, StatusRecord::default());
    }
}
