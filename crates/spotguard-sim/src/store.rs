//! An in-memory [`LedgerStore`] with versions, so the engine's optimistic concurrency (and a
//! restart over the same store) behaves as it does over a ConfigMap.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use spotguard_core::ledger::Ledger;
use spotguard_core::ports::{LedgerStore, StoreError, Versioned};

/// The ledger kept in memory; clones share it.
///
/// ```
/// use spotguard_core::ledger::Ledger;
/// use spotguard_core::ports::{LedgerStore, StoreError};
/// use spotguard_sim::MemoryStore;
/// futures::executor::block_on(async {
///     let store = MemoryStore::default();
///     let loaded = store.load().await.unwrap();
///     assert_eq!(loaded.version, None);
///     let v1 = store.save(&Ledger::default(), None).await.unwrap();
///     // A save based on a stale version is refused.
///     assert!(matches!(store.save(&Ledger::default(), None).await, Err(StoreError::Conflict { .. })));
///     store.save(&Ledger::default(), Some(v1)).await.unwrap();
/// });
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<(Ledger, u64)>>,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, (Ledger, u64)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ledger as stored now.
    pub fn ledger(&self) -> Ledger {
        self.lock().0.clone()
    }

    fn version(v: u64) -> Option<String> {
        (v > 0).then(|| v.to_string())
    }
}

#[async_trait]
impl LedgerStore for MemoryStore {
    async fn load(&self) -> Result<Versioned<Ledger>, StoreError> {
        let s = self.lock();
        Ok(Versioned {
            value: s.0.clone(),
            version: Self::version(s.1),
        })
    }

    async fn save(&self, ledger: &Ledger, expected: Option<String>) -> Result<String, StoreError> {
        let mut s = self.lock();
        if Self::version(s.1) != expected {
            return Err(StoreError::Conflict { expected });
        }
        s.0 = ledger.clone();
        s.1 += 1;
        Ok(s.1.to_string())
    }
}
