//! [`DryRun`]: a port that, when enabled, reads for real and only logs its writes.
//!
//! In dry-run the engine makes every decision as usual, on the real groups and the real
//! cluster; every mutating call (scaling, termination, taint, cordon, annotation, eviction) is
//! logged with what it would have done, counted in `spotguard_dry_run_suppressed_calls_total`,
//! and answered `Ok` without being sent. The ledger is read once from its ConfigMap and then
//! kept in memory, and the scale lock is in-process, so no Lease or ConfigMap is written
//! either. When disabled, every call passes through unchanged.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use spotguard_core::config::DrainOptions;
use spotguard_core::ledger::Ledger;
use spotguard_core::lock::LocalScaleLock;
use spotguard_core::model::{Activity, Group, Taint};
use spotguard_core::ports::{
    Cloud, CloudError, Cluster, ClusterError, DrainReport, LedgerStore, LockError, ScaleLock,
    StoreError, Versioned,
};
use spotguard_core::view::ClusterView;

use crate::metrics::Metrics;

/// A port whose writes are only logged while dry-run is enabled.
pub struct DryRun<P> {
    inner: P,
    enabled: bool,
    metrics: Arc<Metrics>,
    ledger: Mutex<Option<(Ledger, u64)>>,
    local: LocalScaleLock,
}

impl<P> DryRun<P> {
    /// Wraps `inner`; with `enabled` false every call passes through.
    pub fn new(inner: P, enabled: bool, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            enabled,
            metrics,
            ledger: Mutex::new(None),
            local: LocalScaleLock::default(),
        }
    }

    /// The wrapped port.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    fn suppress(&self, service: &str, operation: &str) {
        self.metrics.count_suppressed(service, operation);
    }
}

#[async_trait]
impl<C: Cloud> Cloud for DryRun<C> {
    async fn describe_groups(&self, names: &[String]) -> Result<Vec<Group>, CloudError> {
        self.inner.describe_groups(names).await
    }

    async fn set_desired_capacity(&self, group: &str, desired: u32) -> Result<(), CloudError> {
        if !self.enabled {
            return self.inner.set_desired_capacity(group, desired).await;
        }
        tracing::info!(
            group,
            desired,
            "dry-run: would set desired capacity of {group} to {desired}"
        );
        self.suppress("autoscaling", "SetDesiredCapacity");
        Ok(())
    }

    async fn terminate_instance(&self, instance: &str, decrement: bool) -> Result<(), CloudError> {
        if !self.enabled {
            return self.inner.terminate_instance(instance, decrement).await;
        }
        tracing::info!(
            instance,
            decrement,
            "dry-run: would terminate {instance} (decrement desired capacity: {decrement})"
        );
        self.suppress("autoscaling", "TerminateInstanceInAutoScalingGroup");
        Ok(())
    }

    async fn scaling_activities(
        &self,
        groups: &[String],
        since: SystemTime,
    ) -> Result<Vec<Activity>, CloudError> {
        self.inner.scaling_activities(groups, since).await
    }
}

#[async_trait]
impl<K: Cluster> Cluster for DryRun<K> {
    async fn snapshot(&self) -> Result<Arc<ClusterView>, ClusterError> {
        self.inner.snapshot().await
    }

    async fn taint(&self, node: &str, taint: &Taint) -> Result<(), ClusterError> {
        if !self.enabled {
            return self.inner.taint(node, taint).await;
        }
        tracing::info!(
            node,
            "dry-run: would taint node {node} with {}={}:{}",
            taint.key,
            taint.value,
            taint.effect.as_str()
        );
        self.suppress("kubernetes", "taint node");
        Ok(())
    }

    async fn untaint(&self, node: &str, key: &str) -> Result<(), ClusterError> {
        if !self.enabled {
            return self.inner.untaint(node, key).await;
        }
        tracing::info!(node, "dry-run: would remove taint {key} from node {node}");
        self.suppress("kubernetes", "untaint node");
        Ok(())
    }

    async fn set_unschedulable(&self, node: &str, unschedulable: bool) -> Result<(), ClusterError> {
        if !self.enabled {
            return self.inner.set_unschedulable(node, unschedulable).await;
        }
        let verb = if unschedulable { "cordon" } else { "uncordon" };
        tracing::info!(node, "dry-run: would {verb} node {node}");
        self.suppress("kubernetes", "cordon node");
        Ok(())
    }

    async fn annotate(
        &self,
        node: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<(), ClusterError> {
        if !self.enabled {
            return self.inner.annotate(node, key, value).await;
        }
        match &value {
            Some(v) => tracing::info!(node, "dry-run: would annotate node {node} with {key}={v}"),
            None => tracing::info!(
                node,
                "dry-run: would remove annotation {key} from node {node}"
            ),
        }
        self.suppress("kubernetes", "annotate node");
        Ok(())
    }

    async fn drain(&self, node: &str, options: &DrainOptions) -> Result<DrainReport, ClusterError> {
        if !self.enabled {
            return self.inner.drain(node, options).await;
        }
        let snapshot = self.inner.snapshot().await?;
        let pods: Vec<String> = snapshot
            .pods_on(node)
            .filter(|p| p.is_evictable())
            .map(|p| p.key())
            .collect();
        tracing::info!(
            node,
            pods = pods.len(),
            "dry-run: would drain node {node}, evicting {}",
            if pods.is_empty() {
                "no pod".to_string()
            } else {
                pods.join(", ")
            }
        );
        self.suppress("kubernetes", "drain node");
        Ok(DrainReport {
            node: node.to_string(),
            pods: Vec::new(),
        })
    }
}

#[async_trait]
impl<S: LedgerStore> LedgerStore for DryRun<S> {
    async fn load(&self) -> Result<Versioned<Ledger>, StoreError> {
        if !self.enabled {
            return self.inner.load().await;
        }
        if let Some((ledger, version)) = &*self.ledger.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(Versioned {
                value: ledger.clone(),
                version: Some(version.to_string()),
            });
        }
        // First read: start from what is stored, then keep every change in memory.
        let stored = self.inner.load().await?.value;
        let mut slot = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let (ledger, version) = slot.get_or_insert((stored, 0));
        Ok(Versioned {
            value: ledger.clone(),
            version: Some(version.to_string()),
        })
    }

    async fn save(&self, ledger: &Ledger, expected: Option<String>) -> Result<String, StoreError> {
        if !self.enabled {
            return self.inner.save(ledger, expected).await;
        }
        let mut slot = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let current = slot.as_ref().map(|(_, v)| v.to_string());
        if current.is_some() && current != expected {
            return Err(StoreError::Conflict { expected });
        }
        let version = slot.as_ref().map_or(0, |(_, v)| v + 1);
        *slot = Some((ledger.clone(), version));
        tracing::debug!(
            entries = ledger.entries.len(),
            "dry-run: ledger kept in memory, not saved"
        );
        self.suppress("kubernetes", "save ledger configmap");
        Ok(version.to_string())
    }
}

#[async_trait]
impl<L: ScaleLock> ScaleLock for DryRun<L> {
    async fn acquire(&self, group: &str) -> Result<(), LockError> {
        if self.enabled {
            self.local.acquire(group).await
        } else {
            self.inner.acquire(group).await
        }
    }

    async fn release(&self, group: &str) -> Result<(), LockError> {
        if self.enabled {
            self.local.release(group).await
        } else {
            self.inner.release(group).await
        }
    }

    fn release_abandoned(&self, group: &str) {
        if self.enabled {
            self.local.release_abandoned(group)
        } else {
            self.inner.release_abandoned(group)
        }
    }

    async fn confirm(&self, group: &str) -> Result<(), LockError> {
        if self.enabled {
            self.local.confirm(group).await
        } else {
            self.inner.confirm(group).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotguard_core::ledger::{EntryKind, Intent};

    /// A store that fails every call: dry-run must never reach it after the first load.
    struct Stored(Ledger);

    #[async_trait]
    impl LedgerStore for Stored {
        async fn load(&self) -> Result<Versioned<Ledger>, StoreError> {
            Ok(Versioned {
                value: self.0.clone(),
                version: Some("7".into()),
            })
        }
        async fn save(&self, _: &Ledger, _: Option<String>) -> Result<String, StoreError> {
            panic!("dry-run saved the ledger")
        }
    }

    #[test]
    fn dry_run_ledger_lives_in_memory_with_versions() {
        block_on(async {
            let metrics = Metrics::new("all", true);
            let store = DryRun::new(Stored(Ledger::default()), true, metrics.clone());
            let loaded = store.load().await.unwrap();
            let mut ledger = loaded.value;
            ledger.record_intent(
                Intent::new(EntryKind::Fallback, "od", "s", "i-1", 1),
                SystemTime::UNIX_EPOCH,
            );
            let v = store.save(&ledger, loaded.version.clone()).await.unwrap();
            assert!(matches!(
                store.save(&ledger, loaded.version).await,
                Err(StoreError::Conflict { .. })
            ));
            let again = store.load().await.unwrap();
            assert_eq!(again.version, Some(v));
            assert_eq!(again.value.entries.len(), 1);
            assert!(metrics
                .encode()
                .contains("operation=\"save ledger configmap\"} 1"));
        });
    }

    fn block_on(f: impl std::future::Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f);
    }
}
