//! Recovery at start-up, cleanup of settled entries, and reading the ledger.

use super::*;

impl<C: Cloud, K: Cluster, T: Clock, S: LedgerStore, L: ScaleLock> Engine<C, K, T, S, L> {
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
