//! [`KubeCluster`]: the core's [`Cluster`] port over a [`kube::Client`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use spotguard_core::config::DrainOptions;
use spotguard_core::model::Taint;
use spotguard_core::ports::{Cluster, ClusterError, DrainReport};
use spotguard_core::view::ClusterView;

use crate::cache::{CacheScope, SnapshotCache};
use crate::drain;
use crate::error::Error;
use crate::events::NodeEvents;
use crate::node_writes::{self, WritePolicy};
use crate::translate::CapacityLabels;

/// Settings of [`KubeCluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeClusterOptions {
    /// Capacity-type labels, tried in order.
    pub capacity_labels: CapacityLabels,
    /// Retries of node writes on conflicts.
    pub writes: WritePolicy,
    /// How long [`Cluster::snapshot`] waits for the watch caches to sync before failing
    /// (default 30s).
    pub sync_timeout: Duration,
    /// Publish Kubernetes Events on nodes for taints, cordons and drains, as this controller
    /// name (default `Some("spotguard")`); `None` publishes nothing.
    pub event_reporter: Option<String>,
    /// Reporting instance of the events (e.g. the pod name).
    pub event_instance: Option<String>,
    /// What the watch caches hold (default [`CacheScope::Cluster`]): an agent uses
    /// [`CacheScope::Node`], whose snapshots hold every node but only its own node's pods and
    /// no PodDisruptionBudget.
    pub cache_scope: CacheScope,
}

impl Default for KubeClusterOptions {
    fn default() -> Self {
        Self {
            capacity_labels: CapacityLabels::default(),
            writes: WritePolicy::default(),
            sync_timeout: Duration::from_secs(30),
            event_reporter: Some("spotguard".into()),
            event_instance: std::env::var("POD_NAME").ok(),
            cache_scope: CacheScope::default(),
        }
    }
}

/// The [`Cluster`] port over Kubernetes. Snapshots come from watch caches; writes and drains go
/// straight to the API server.
pub struct KubeCluster {
    client: Client,
    evictions: Client,
    nodes: Api<Node>,
    cache: SnapshotCache,
    events: Option<NodeEvents>,
    options: KubeClusterOptions,
}

impl KubeCluster {
    /// Starts the watch caches with default options. Must be called inside a tokio runtime.
    /// Prefer [`KubeCluster::from_config`], which also builds the eviction client drains
    /// need.
    pub fn new(client: Client) -> Self {
        Self::with_options(client, KubeClusterOptions::default())
    }

    /// Builds the clients from a [`kube::Config`] and starts the watch caches: one client as
    /// configured, and one for evictions with kube's retry layer off, so a PDB's 429 reaches
    /// the drain at once (to be retried within the drain's deadline and named in the report)
    /// instead of being retried inside kube for minutes. Must be called inside a tokio
    /// runtime.
    pub fn from_config(config: kube::Config, options: KubeClusterOptions) -> Result<Self, Error> {
        let mut eviction_config = config.clone();
        eviction_config.default_retry = false;
        let build = |config: kube::Config| {
            Client::try_from(config).map_err(|e| Error::api("connect to", "the API server", e))
        };
        let client = build(config)?;
        let evictions = build(eviction_config)?;
        Ok(Self::with_clients(client, evictions, options))
    }

    /// Starts the watch caches, using `client` for everything. If its config has kube's
    /// `default_retry` on (the default), a drain blocked by a PDB still ends at its timeout but
    /// may not name the PDB. Must be called inside a tokio runtime.
    pub fn with_options(client: Client, options: KubeClusterOptions) -> Self {
        Self::with_clients(client.clone(), client, options)
    }

    /// Starts the watch caches with a separate client for evictions.
    pub fn with_clients(client: Client, evictions: Client, options: KubeClusterOptions) -> Self {
        let events = options.event_reporter.as_deref().map(|controller| {
            NodeEvents::new(client.clone(), controller, options.event_instance.clone())
        });
        Self {
            nodes: Api::all(client.clone()),
            cache: SnapshotCache::start(
                client.clone(),
                &options.cache_scope,
                options.capacity_labels.clone(),
            ),
            client,
            evictions,
            events,
            options,
        }
    }

    /// Waits until the watch caches have listed their objects once: nodes, pods and (in
    /// [`CacheScope::Cluster`]) PDBs. For readiness probes.
    pub async fn ready(&self) -> Result<(), Error> {
        self.cache.ready().await
    }

    /// The snapshot as this crate's error type: the same `Arc` as the last one while the
    /// caches saw no change (see [`SnapshotCache::snapshot`]).
    pub async fn snapshot_now(&self) -> Result<Arc<ClusterView>, Error> {
        self.cache.ready_within(self.options.sync_timeout).await?;
        self.cache.snapshot()
    }

    /// The watch caches.
    pub fn cache(&self) -> &SnapshotCache {
        &self.cache
    }

    /// The event publisher, when events are enabled.
    pub fn events(&self) -> Option<&NodeEvents> {
        self.events.as_ref()
    }

    async fn publish(&self, node: &str, reason: &str, message: &str, warning: bool) {
        if let Some(events) = &self.events {
            if let Err(e) = events.publish(node, reason, message, warning).await {
                tracing::warn!(node, reason, error = %e, "could not publish event");
            }
        }
    }
}

#[async_trait]
impl Cluster for KubeCluster {
    async fn snapshot(&self) -> Result<Arc<ClusterView>, ClusterError> {
        self.snapshot_now()
            .await
            .map_err(|e| e.into_cluster_error("snapshot", None))
    }

    async fn taint(&self, node: &str, taint: &Taint) -> Result<(), ClusterError> {
        let changed = node_writes::add_taint(&self.nodes, node, taint, self.options.writes)
            .await
            .map_err(|e| e.into_cluster_error("taint node", Some(node)))?;
        if changed {
            let message = format!(
                "Added taint {}={}:{}",
                taint.key,
                taint.value,
                taint.effect.as_str()
            );
            self.publish(node, "SpotGuardTainted", &message, false)
                .await;
        }
        Ok(())
    }

    async fn untaint(&self, node: &str, key: &str) -> Result<(), ClusterError> {
        let changed = node_writes::remove_taint(&self.nodes, node, key, self.options.writes)
            .await
            .map_err(|e| e.into_cluster_error("untaint node", Some(node)))?;
        if changed {
            self.publish(
                node,
                "SpotGuardUntainted",
                &format!("Removed taint {key}"),
                false,
            )
            .await;
        }
        Ok(())
    }

    async fn set_unschedulable(&self, node: &str, unschedulable: bool) -> Result<(), ClusterError> {
        let changed =
            node_writes::set_unschedulable(&self.nodes, node, unschedulable, self.options.writes)
                .await
                .map_err(|e| e.into_cluster_error("cordon node", Some(node)))?;
        if changed {
            let (reason, message) = if unschedulable {
                ("SpotGuardCordoned", "Marked unschedulable")
            } else {
                ("SpotGuardUncordoned", "Marked schedulable")
            };
            self.publish(node, reason, message, false).await;
        }
        Ok(())
    }

    async fn annotate(
        &self,
        node: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<(), ClusterError> {
        node_writes::set_annotation(
            &self.nodes,
            node,
            key,
            value.as_deref(),
            self.options.writes,
        )
        .await
        .map(|_| ())
        .map_err(|e| e.into_cluster_error("annotate node", Some(node)))
    }

    async fn drain(&self, node: &str, options: &DrainOptions) -> Result<DrainReport, ClusterError> {
        let report = drain::drain(self.client.clone(), self.evictions.clone(), node, options)
            .await
            .map_err(|e| e.into_cluster_error("drain node", Some(node)))?;
        if report.is_complete() {
            let message = format!("Drained: {} pod(s) evicted", report.evicted());
            self.publish(node, "SpotGuardDrained", &message, false)
                .await;
        } else {
            let message = format!("Drain incomplete: {}", report.remaining().join(", "));
            self.publish(node, "SpotGuardDrainIncomplete", &message, true)
                .await;
        }
        Ok(report)
    }
}
