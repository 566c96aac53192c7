//! In-process [`ScaleLock`]: one async mutex per group, so concurrent handlers in one process
//! never interleave their read-modify-write of desired capacity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};

use async_trait::async_trait;
use futures::lock::{Mutex, OwnedMutexGuard};

use crate::ports::{LockError, ScaleLock};

/// Per-group async mutexes. Runtime-agnostic (no tokio).
///
/// ```
/// use spotguard_core::lock::LocalScaleLock;
/// use spotguard_core::ports::ScaleLock;
/// futures::executor::block_on(async {
///     let lock = LocalScaleLock::default();
///     lock.acquire("web-spot").await.unwrap();
///     lock.release("web-spot").await.unwrap();
/// });
/// ```
#[derive(Debug, Default)]
pub struct LocalScaleLock {
    mutexes: SyncMutex<HashMap<String, Arc<Mutex<()>>>>,
    held: SyncMutex<HashMap<String, OwnedMutexGuard<()>>>,
}

impl LocalScaleLock {
    fn mutex(&self, group: &str) -> Arc<Mutex<()>> {
        let mut map = self.mutexes.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(group.to_string()).or_default().clone()
    }
}

#[async_trait]
impl ScaleLock for LocalScaleLock {
    async fn acquire(&self, group: &str) -> Result<(), LockError> {
        let guard = self.mutex(group).lock_owned().await;
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group.to_string(), guard);
        Ok(())
    }

    /// Drops the held guard, if any. (`acquire` and `release` make no await between
    /// taking the mutex and recording it, so a held guard is always this holder's.)
    fn release_abandoned(&self, group: &str) {
        let guard = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(group);
        drop(guard);
    }

    async fn release(&self, group: &str) -> Result<(), LockError> {
        let guard = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(group);
        match guard {
            Some(g) => {
                drop(g);
                Ok(())
            }
            None => Err(LockError {
                group: group.to_string(),
                message: "released without being held".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fakes::yield_now;
    use futures::future::join_all;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn serializes_critical_sections() {
        let lock = LocalScaleLock::default();
        let inside = AtomicU32::new(0);
        let max_inside = AtomicU32::new(0);
        futures::executor::block_on(join_all((0..8).map(|_| async {
            lock.acquire("g").await.unwrap();
            let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
            max_inside.fetch_max(n, Ordering::SeqCst);
            yield_now().await; // let the others run while inside the section
            inside.fetch_sub(1, Ordering::SeqCst);
            lock.release("g").await.unwrap();
        })));
        assert_eq!(max_inside.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn release_without_acquire_names_group() {
        let lock = LocalScaleLock::default();
        let e = futures::executor::block_on(lock.release("web")).unwrap_err();
        assert_eq!(e.group, "web");
    }
}
