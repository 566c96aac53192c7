//! The controller's [`StatusRecord`]: kept up to date inline by the observer (a short lock,
//! no I/O), and stored by a task at most every few seconds, only when it changed, in the
//! status ConfigMap that `spotguard status` reads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use spotguard_core::events::Event;
use spotguard_core::ledger::Ledger;
use spotguard_core::status::StatusRecord;
use spotguard_k8s::ConfigMapStatusStore;

use crate::shutdown::Shutdown;

/// How often a changed record is stored, at most.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Inner {
    record: StatusRecord,
    /// Bumped on each change; the publisher stores the record when it moved.
    version: u64,
}

/// The record and its change count, shared by the observer, the monitor and the publisher.
#[derive(Clone, Default)]
pub struct StatusBook(Arc<Mutex<Inner>>);

impl StatusBook {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes an engine event in (see [`StatusRecord::observe`]).
    pub fn observe(&self, at: SystemTime, event: &Event) {
        self.with(|i| {
            if i.record.observe(at, event) {
                i.version += 1;
            }
        });
    }

    /// Drops the verdicts of entries the ledger no longer holds open.
    pub fn retain_open(&self, ledger: &Ledger) {
        self.with(|i| {
            if i.record.retain_open(ledger) {
                i.version += 1;
            }
        });
    }

    /// The record, if it changed since `seen` (which it then moves to the current version).
    fn changed_since(&self, seen: &mut u64) -> Option<StatusRecord> {
        self.with(|i| {
            (i.version != *seen).then(|| {
                *seen = i.version;
                i.record.clone()
            })
        })
    }

    /// Starts from a stored record (what an earlier leader recorded), keeping what this
    /// process recorded after it.
    fn resume(&self, stored: StatusRecord) {
        self.with(|i| {
            let mine = std::mem::replace(&mut i.record, stored);
            let last = i.record.actions.back().map(|a| a.at);
            i.record.verdicts.extend(mine.verdicts);
            i.record
                .actions
                .extend(mine.actions.into_iter().filter(|a| Some(a.at) > last));
            while i.record.actions.len() > i.record.keep_actions {
                i.record.actions.pop_front();
            }
            i.version += 1;
        });
    }
}

/// The status record and where it is stored.
#[derive(Clone)]
pub struct StatusPublisher {
    /// The record the observer keeps.
    pub book: StatusBook,
    /// Its ConfigMap.
    pub store: ConfigMapStatusStore,
}

impl StatusPublisher {
    /// While leading: resumes the stored record, then stores the record whenever it changed,
    /// at most every [`SAVE_EVERY`], until `stop`, and once more then. A failed save is logged
    /// and tried again on the next tick.
    pub async fn run(&self, stop: Shutdown) {
        let Self { book, store } = self;
        match store.load().await {
            Ok(Some(stored)) => book.resume(stored),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not read the stored status record; starting a new one")
            }
        }
        let mut seen = 0;
        let mut ticks = tokio::time::interval(SAVE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = ticks.tick() => false,
                _ = stop.triggered() => true,
            };
            if let Some(record) = book.changed_since(&mut seen) {
                if let Err(e) = store.save(&record).await {
                    tracing::warn!(error = %e, object = %store.object(), "could not store the status record");
                    // Not stored: the next tick tries again.
                    seen = seen.wrapping_sub(1);
                }
            }
            if stopping {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_handed_out_once_and_an_earlier_record_is_resumed() {
        let book = StatusBook::default();
        let mut seen = 0;
        assert!(book.changed_since(&mut seen).is_none());
        let at = SystemTime::UNIX_EPOCH;
        book.observe(at, &Event::Cordoned { node: "b".into() });
        assert_eq!(book.changed_since(&mut seen).unwrap().actions.len(), 1);
        assert!(book.changed_since(&mut seen).is_none());
        let mut earlier = StatusRecord::default();
        earlier.observe(at, &Event::Cordoned { node: "a".into() });
        // What this process recorded after the earlier record's last action is kept.
        book.observe(
            at + Duration::from_secs(1),
            &Event::Cordoned { node: "c".into() },
        );
        book.resume(earlier);
        let nodes: Vec<_> = book
            .changed_since(&mut seen)
            .unwrap()
            .actions
            .iter()
            .map(|a| a.node.clone().unwrap())
            .collect();
        assert_eq!(nodes, ["a", "c"]);
    }
}
