//! Spot Guard's engine inside a kube-runtime controller of your own, with the AWS and
//! Kubernetes adapters.
//!
//! The controller watches Nodes. A node that your own tooling labels
//! `example.com/replace=now` is treated as at risk: the engine raises its spot group, falls
//! back to on-demand if spot fails, then taints and drains the node (phase 1). Beside it, the
//! engine's monitor loop gives on-demand fallbacks back once spot is healthy (phase 2).
//!
//! Run it against a cluster (your kubeconfig) and an AWS account (the default credential
//! chain) with two Auto Scaling groups:
//!
//! ```text
//! SPOT_GROUP=web-spot ON_DEMAND_GROUP=web-od cargo run -p spotguard-examples --bin kube_controller
//! ```

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use spotguard_aws::AwsCloud;
use spotguard_core::{Config, Engine, GroupPair, LocalScaleLock, Notice, NoticeKind};
use spotguard_k8s::{ConfigMapLedgerStore, KubeCluster, TokioClock};

type SpotGuard = Engine<AwsCloud, KubeCluster, TokioClock, ConfigMapLedgerStore, LocalScaleLock>;

/// The label your tooling sets on a node to have it replaced.
const REPLACE_LABEL: &str = "example.com/replace";

#[derive(Debug)]
struct ReconcileError(String);

impl std::fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReconcileError {}

async fn reconcile(node: Arc<Node>, engine: Arc<SpotGuard>) -> Result<Action, ReconcileError> {
    if node.labels().get(REPLACE_LABEL).map(String::as_str) != Some("now") {
        return Ok(Action::await_change());
    }
    let Some(instance) = node
        .spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(|id| id.rsplit('/').next())
    else {
        return Ok(Action::await_change());
    };
    let notice = Notice {
        instance_id: instance.to_string(),
        kind: NoticeKind::Rebalance,
        notice_time: std::time::SystemTime::now(),
    };
    // Retries transient errors itself; a notice already under way is coalesced.
    let outcome = engine
        .handle_notice(&notice)
        .await
        .map_err(|e| ReconcileError(format!("node {}: {e}", node.name_any())))?;
    println!("node {}: {outcome:?}", node.name_any());
    Ok(Action::await_change())
}

fn error_policy(_node: Arc<Node>, error: &ReconcileError, _engine: Arc<SpotGuard>) -> Action {
    eprintln!("{error}");
    Action::requeue(Duration::from_secs(30))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let group = |var: &str| std::env::var(var).map_err(|_| format!("set {var}"));
    let config = Config {
        groups: vec![GroupPair {
            spot: group("SPOT_GROUP")?,
            on_demand: group("ON_DEMAND_GROUP")?,
        }],
        ..Config::default()
    };
    config.validate()?;

    let client = Client::try_default().await?;
    let cluster = KubeCluster::new(client.clone());
    cluster.ready().await?;
    let engine = Arc::new(Engine::new(
        config,
        AwsCloud::builder().load().await,
        cluster,
        TokioClock,
        ConfigMapLedgerStore::new(client.clone(), "default", "spotguard-ledger"),
        LocalScaleLock::default(),
    ));

    // Phase 2 beside the controller: recovery, then a monitor pass every 30 s.
    let monitor = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_monitor(futures::future::pending(), &()).await })
    };
    Controller::new(Api::<Node>::all(client), watcher::Config::default())
        .run(reconcile, error_policy, engine)
        .for_each(|_| async {})
        .await;
    monitor.abort();
    Ok(())
}
