//! What the engine did and why, as structured events. The daemon turns them into logs,
//! metrics and Kubernetes Events; the simulator into its timeline; tests assert on them.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::predicates::Verdict;

/// Which predicate a verdict comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Check {
    /// [`health()`](crate::predicates::health()).
    Health,
    /// [`stability()`](crate::predicates::stability()).
    Stability,
    /// [`safety()`](crate::predicates::safety()).
    Safety,
}

/// One thing the engine decided or did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    /// A notice arrived.
    NoticeReceived {
        /// Instance.
        instance: String,
        /// `rebalance` or `interruption`.
        kind: String,
    },
    /// A notice for an instance already being handled was merged into that handling.
    NoticeCoalesced {
        /// Instance.
        instance: String,
    },
    /// A notice was not acted on.
    NoticeRejected {
        /// Instance.
        instance: String,
        /// Why.
        reason: String,
    },
    /// Handling a notice met a transient error; it is tried again after a pause.
    NoticeRetrying {
        /// Instance.
        instance: String,
        /// The attempt that failed (1 for the first).
        attempt: u32,
        /// The pause before the next attempt.
        after: std::time::Duration,
        /// The error.
        reason: String,
    },
    /// A notice was given up after transient errors: the retry limit was reached or its
    /// interruption time passed.
    NoticeAbandoned {
        /// Instance.
        instance: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        reason: String,
    },
    /// An interruption is drained without replacement capacity: the group could not be
    /// found or may not be scaled. The drain goes on regardless.
    ScalingSkipped {
        /// Instance.
        instance: String,
        /// Why no replacement was asked for.
        reason: String,
    },
    /// A node got Spot Guard's taint.
    Tainted {
        /// Node.
        node: String,
    },
    /// Spot Guard's taint was removed (action abandoned).
    Untainted {
        /// Node.
        node: String,
    },
    /// A node was cordoned.
    Cordoned {
        /// Node.
        node: String,
    },
    /// A node was uncordoned (action abandoned).
    Uncordoned {
        /// Node.
        node: String,
    },
    /// Desired capacity was raised.
    ScaledUp {
        /// Group.
        group: String,
        /// Desired before.
        from: u32,
        /// Desired after.
        to: u32,
    },
    /// A scale-up could not be made or did not deliver an instance.
    ScaleUpFailed {
        /// Group.
        group: String,
        /// Why.
        reason: String,
    },
    /// The new instance is InService.
    InstanceReady {
        /// Group.
        group: String,
        /// Instance.
        instance: String,
        /// How long it took.
        after: Duration,
    },
    /// An on-demand fallback was recorded in the ledger.
    FallbackRecorded {
        /// Ledger entry.
        entry: String,
        /// On-demand group.
        group: String,
    },
    /// No replacement could be had; the action continues with the existing node.
    NoReplacement {
        /// The at-risk node.
        node: String,
        /// Why.
        reason: String,
    },
    /// A drain finished: every pod that had to leave left.
    Drained {
        /// Node.
        node: String,
        /// Pods evicted.
        evicted: usize,
    },
    /// A drain gave up with pods still in place.
    DrainIncomplete {
        /// Node.
        node: String,
        /// Pods left and why.
        remaining: Vec<String>,
    },
    /// Capacity Spot Guard added was given back.
    PaidBack {
        /// Ledger entry.
        entry: String,
        /// Group.
        group: String,
        /// How (`terminated i-… with decrement`, ...).
        how: String,
        /// How long the capacity was held: from the entry's record to its payback.
        #[serde(default)]
        held: Duration,
    },
    /// A predicate's verdict on a ledger entry.
    Verdict {
        /// Ledger entry.
        entry: String,
        /// Which predicate.
        check: Check,
        /// Its answer.
        verdict: Verdict,
    },
    /// The monitor started removing a fallback node.
    ScaleDownStarted {
        /// Ledger entry.
        entry: String,
        /// Node.
        node: String,
    },
    /// A ledger entry was settled after a restart or a stale period.
    EntrySettled {
        /// Ledger entry.
        entry: String,
        /// What was found.
        note: String,
    },
    /// Released entries were dropped from the ledger.
    LedgerCleaned {
        /// How many.
        removed: usize,
    },
    /// An error the engine logged and carried on from.
    Error {
        /// What it was doing.
        during: String,
        /// The error.
        message: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoticeReceived { instance, kind } => write!(f, "{kind} notice for {instance}"),
            Self::NoticeCoalesced { instance } => {
                write!(f, "notice for {instance} merged into the running action")
            }
            Self::NoticeRejected { instance, reason } => {
                write!(f, "notice for {instance} not acted on: {reason}")
            }
            Self::NoticeRetrying {
                instance,
                attempt,
                after,
                reason,
            } => write!(
                f,
                "notice for {instance}: attempt {attempt} failed ({reason}); trying again in {}",
                humantime::format_duration(*after)
            ),
            Self::NoticeAbandoned {
                instance,
                attempts,
                reason,
            } => write!(
                f,
                "notice for {instance} given up after {attempts} attempts: {reason}"
            ),
            Self::ScalingSkipped { instance, reason } => write!(
                f,
                "interruption of {instance}: no replacement asked for ({reason}); draining"
            ),
            Self::Tainted { node } => write!(f, "tainted node {node}"),
            Self::Untainted { node } => write!(f, "removed taint from node {node}"),
            Self::Cordoned { node } => write!(f, "cordoned node {node}"),
            Self::Uncordoned { node } => write!(f, "uncordoned node {node}"),
            Self::ScaledUp { group, from, to } => write!(f, "scaled {group} from {from} to {to}"),
            Self::ScaleUpFailed { group, reason } => {
                write!(f, "scale-up of {group} failed: {reason}")
            }
            Self::InstanceReady {
                group,
                instance,
                after,
            } => write!(
                f,
                "{instance} InService in {group} after {}",
                humantime::format_duration(Duration::from_secs(after.as_secs()))
            ),
            Self::FallbackRecorded { entry, group } => {
                write!(f, "fallback to {group} recorded as {entry}")
            }
            Self::NoReplacement { node, reason } => {
                write!(f, "no replacement for {node}, continuing on it: {reason}")
            }
            Self::Drained { node, evicted } => write!(f, "drained {node} ({evicted} pods evicted)"),
            Self::DrainIncomplete { node, remaining } => {
                write!(f, "drain of {node} incomplete: {}", remaining.join(", "))
            }
            Self::PaidBack {
                entry, group, how, ..
            } => {
                write!(f, "{entry}: gave back {group} capacity, {how}")
            }
            Self::Verdict {
                entry,
                check,
                verdict,
            } => write!(f, "{entry}: {check:?} {verdict}"),
            Self::ScaleDownStarted { entry, node } => {
                write!(f, "{entry}: removing fallback node {node}")
            }
            Self::EntrySettled { entry, note } => write!(f, "{entry}: {note}"),
            Self::LedgerCleaned { removed } => {
                write!(f, "dropped {removed} released ledger entries")
            }
            Self::Error { during, message } => write!(f, "error while {during}: {message}"),
        }
    }
}

/// The names an event is about, for structured log fields, notifications and status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Subjects<'a> {
    /// Instance.
    pub instance: Option<&'a str>,
    /// Node.
    pub node: Option<&'a str>,
    /// Group.
    pub group: Option<&'a str>,
    /// Ledger entry.
    pub entry: Option<&'a str>,
}

impl Event {
    /// Every event's [`name`](Event::name), in declaration order.
    pub const NAMES: [&'static str; 23] = [
        "NoticeReceived",
        "NoticeCoalesced",
        "NoticeRejected",
        "NoticeRetrying",
        "NoticeAbandoned",
        "ScalingSkipped",
        "Tainted",
        "Untainted",
        "Cordoned",
        "Uncordoned",
        "ScaledUp",
        "ScaleUpFailed",
        "InstanceReady",
        "FallbackRecorded",
        "NoReplacement",
        "Drained",
        "DrainIncomplete",
        "PaidBack",
        "Verdict",
        "ScaleDownStarted",
        "EntrySettled",
        "LedgerCleaned",
        "Error",
    ];

    /// The variant's name (`ScaledUp`, `PaidBack`, …): stable, for logs, metrics and
    /// notification filters.
    pub fn name(&self) -> &'static str {
        match self {
            Self::NoticeReceived { .. } => "NoticeReceived",
            Self::NoticeCoalesced { .. } => "NoticeCoalesced",
            Self::NoticeRejected { .. } => "NoticeRejected",
            Self::NoticeRetrying { .. } => "NoticeRetrying",
            Self::NoticeAbandoned { .. } => "NoticeAbandoned",
            Self::ScalingSkipped { .. } => "ScalingSkipped",
            Self::Tainted { .. } => "Tainted",
            Self::Untainted { .. } => "Untainted",
            Self::Cordoned { .. } => "Cordoned",
            Self::Uncordoned { .. } => "Uncordoned",
            Self::ScaledUp { .. } => "ScaledUp",
            Self::ScaleUpFailed { .. } => "ScaleUpFailed",
            Self::InstanceReady { .. } => "InstanceReady",
            Self::FallbackRecorded { .. } => "FallbackRecorded",
            Self::NoReplacement { .. } => "NoReplacement",
            Self::Drained { .. } => "Drained",
            Self::DrainIncomplete { .. } => "DrainIncomplete",
            Self::PaidBack { .. } => "PaidBack",
            Self::Verdict { .. } => "Verdict",
            Self::ScaleDownStarted { .. } => "ScaleDownStarted",
            Self::EntrySettled { .. } => "EntrySettled",
            Self::LedgerCleaned { .. } => "LedgerCleaned",
            Self::Error { .. } => "Error",
        }
    }

    /// The instance, node, group and entry the event names.
    pub fn subjects(&self) -> Subjects<'_> {
        let s = Subjects::default();
        match self {
            Self::NoticeReceived { instance, .. }
            | Self::NoticeCoalesced { instance }
            | Self::NoticeRejected { instance, .. }
            | Self::NoticeRetrying { instance, .. }
            | Self::NoticeAbandoned { instance, .. }
            | Self::ScalingSkipped { instance, .. } => Subjects {
                instance: Some(instance),
                ..s
            },
            Self::Tainted { node }
            | Self::Untainted { node }
            | Self::Cordoned { node }
            | Self::Uncordoned { node }
            | Self::NoReplacement { node, .. }
            | Self::Drained { node, .. }
            | Self::DrainIncomplete { node, .. } => Subjects {
                node: Some(node),
                ..s
            },
            Self::ScaledUp { group, .. } | Self::ScaleUpFailed { group, .. } => Subjects {
                group: Some(group),
                ..s
            },
            Self::InstanceReady {
                group, instance, ..
            } => Subjects {
                group: Some(group),
                instance: Some(instance),
                ..s
            },
            Self::FallbackRecorded { entry, group } | Self::PaidBack { entry, group, .. } => {
                Subjects {
                    entry: Some(entry),
                    group: Some(group),
                    ..s
                }
            }
            Self::Verdict { entry, .. } | Self::EntrySettled { entry, .. } => Subjects {
                entry: Some(entry),
                ..s
            },
            Self::ScaleDownStarted { entry, node } => Subjects {
                entry: Some(entry),
                node: Some(node),
                ..s
            },
            Self::LedgerCleaned { .. } | Self::Error { .. } => s,
        }
    }

    /// Whether the event is something Spot Guard did or decided about a notice, a node or
    /// capacity — what `spotguard status` lists and notifications send by default — rather
    /// than bookkeeping (a verdict, a retry, a merged notice, a ledger cleanup).
    pub fn is_action(&self) -> bool {
        !matches!(
            self,
            Self::NoticeCoalesced { .. }
                | Self::NoticeRetrying { .. }
                | Self::Verdict { .. }
                | Self::LedgerCleaned { .. }
        )
    }

    /// Whether the event reports something that went wrong or was refused (a warning log
    /// line, a Warning Event, a notification's warning colour).
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Self::NoticeRejected { .. }
                | Self::NoticeRetrying { .. }
                | Self::NoticeAbandoned { .. }
                | Self::ScalingSkipped { .. }
                | Self::ScaleUpFailed { .. }
                | Self::NoReplacement { .. }
                | Self::DrainIncomplete { .. }
                | Self::Error { .. }
        )
    }
}

/// Receives the engine's events. Must be cheap and must not block.
pub trait Observer: Send + Sync {
    /// Called for each event, with the engine clock's time.
    fn observe(&self, at: SystemTime, event: &Event);
}

/// Discards events.
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl Observer for Discard {
    fn observe(&self, _: SystemTime, _: &Event) {}
}

/// Keeps every event in memory (tests, the simulator's timeline).
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<(SystemTime, Event)>>,
}

impl Recorder {
    /// A copy of the events so far.
    pub fn events(&self) -> Vec<(SystemTime, Event)> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes the events so far, leaving none.
    pub fn take(&self) -> Vec<(SystemTime, Event)> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Observer for Recorder {
    fn observe(&self, at: SystemTime, event: &Event) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, event.clone()));
    }
}

impl<T: Observer + ?Sized> Observer for std::sync::Arc<T> {
    fn observe(&self, at: SystemTime, event: &Event) {
        (**self).observe(at, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event of each kind.
    fn one_of_each() -> Vec<Event> {
        let s = || "x".to_string();
        let d = Duration::from_secs(1);
        vec![
            Event::NoticeReceived {
                instance: s(),
                kind: s(),
            },
            Event::NoticeCoalesced { instance: s() },
            Event::NoticeRejected {
                instance: s(),
                reason: s(),
            },
            Event::NoticeRetrying {
                instance: s(),
                attempt: 1,
                after: d,
                reason: s(),
            },
            Event::NoticeAbandoned {
                instance: s(),
                attempts: 1,
                reason: s(),
            },
            Event::ScalingSkipped {
                instance: s(),
                reason: s(),
            },
            Event::Tainted { node: s() },
            Event::Untainted { node: s() },
            Event::Cordoned { node: s() },
            Event::Uncordoned { node: s() },
            Event::ScaledUp {
                group: s(),
                from: 1,
                to: 2,
            },
            Event::ScaleUpFailed {
                group: s(),
                reason: s(),
            },
            Event::InstanceReady {
                group: s(),
                instance: s(),
                after: d,
            },
            Event::FallbackRecorded {
                entry: s(),
                group: s(),
            },
            Event::NoReplacement {
                node: s(),
                reason: s(),
            },
            Event::Drained {
                node: s(),
                evicted: 1,
            },
            Event::DrainIncomplete {
                node: s(),
                remaining: vec![],
            },
            Event::PaidBack {
                entry: s(),
                group: s(),
                how: s(),
                held: d,
            },
            Event::Verdict {
                entry: s(),
                check: Check::Health,
                verdict: Verdict::Go,
            },
            Event::ScaleDownStarted {
                entry: s(),
                node: s(),
            },
            Event::EntrySettled {
                entry: s(),
                note: s(),
            },
            Event::LedgerCleaned { removed: 1 },
            Event::Error {
                during: s(),
                message: s(),
            },
        ]
    }

    #[test]
    fn names_are_the_variants_and_every_one_is_listed() {
        let events = one_of_each();
        let names: Vec<&str> = events.iter().map(Event::name).collect();
        assert_eq!(names, Event::NAMES);
        for e in &events {
            // The serde tag is the name too, so a name in a filter matches the JSON.
            let json = serde_json::to_value(e).unwrap();
            assert!(json.get(e.name()).is_some(), "{json}");
        }
    }

    #[test]
    fn every_event_but_the_bookkeeping_is_an_action() {
        let bookkeeping: Vec<&str> = one_of_each()
            .iter()
            .filter(|e| !e.is_action())
            .map(Event::name)
            .collect();
        assert_eq!(
            bookkeeping,
            [
                "NoticeCoalesced",
                "NoticeRetrying",
                "Verdict",
                "LedgerCleaned"
            ]
        );
    }
}
