//! Large clusters for benchmarks: many kwok nodes and the pods bound to them.

use std::time::{Duration, Instant};

use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::Api;
use serde_json::json;

use crate::{ControlPlane, NodeBuilder};

/// Requests in flight at once while a cluster is populated.
pub const POPULATE_CONCURRENCY: usize = 64;

/// What [`ControlPlane::populate`] made, and how long it took.
#[derive(Debug, Clone)]
pub struct Populated {
    /// Node names, `<prefix>-<i>`.
    pub nodes: Vec<String>,
    /// Pods created.
    pub pods: usize,
    /// Time to create the nodes and pods.
    pub created_in: Duration,
    /// Time until kwok had made every pod Running, after they were created.
    pub running_in: Duration,
}

impl ControlPlane {
    /// Creates `nodes` kwok nodes named `<prefix>-<i>` (4 CPUs, 16 GiB, 110 pods, spot, an AWS
    /// provider ID) and `pods_per_node` pods bound to each (`spec.nodeName`, so the scheduler
    /// is not involved) in `namespace`, labelled `app=app-<n>` over `apps` apps and requesting
    /// 100m CPU and 128 MiB; then waits until kwok has made every one of them Running.
    /// Prints progress to stderr.
    pub async fn populate(
        &self,
        namespace: &str,
        prefix: &str,
        nodes: usize,
        pods_per_node: usize,
        apps: usize,
    ) -> Populated {
        let client = self.admin_client();
        let started = Instant::now();
        let names: Vec<String> = (0..nodes).map(|i| format!("{prefix}-{i}")).collect();
        let node_api: Api<Node> = Api::all(client.clone());
        stream::iter(names.iter().enumerate())
            .map(|(i, name)| {
                let node = NodeBuilder::new(name)
                    .provider_id(&format!("aws:///us-east-1a/i-{prefix}{i:08x}"))
                    .label("eks.amazonaws.com/capacityType", "SPOT")
                    .build();
                let api = node_api.clone();
                async move { api.create(&PostParams::default(), &node).await }
            })
            .buffer_unordered(POPULATE_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_or_else(|e| panic!("creating the nodes of {prefix}: {e}"));
        eprintln!(
            "populate: {nodes} nodes created in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let pod_api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let total = nodes * pods_per_node;
        let mut done = 0usize;
        let mut creates = stream::iter(0..total)
            .map(|n| {
                let node = &names[n / pods_per_node];
                let app = format!("app-{}", n % apps.max(1));
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("{node}-{}", n % pods_per_node), "labels": {"app": app}},
                    "spec": {
                        "nodeName": node,
                        "containers": [{
                            "name": "app",
                            "image": "registry.invalid/app:1",
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                        }],
                    },
                }))
                .expect("a valid Pod");
                let api = pod_api.clone();
                async move { api.create(&PostParams::default(), &pod).await }
            })
            .buffer_unordered(POPULATE_CONCURRENCY);
        while let Some(created) = creates.next().await {
            created.unwrap_or_else(|e| panic!("creating the pods of {prefix}: {e}"));
            done += 1;
            if done % 5_000 == 0 {
                eprintln!(
                    "populate: {done}/{total} pods created ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        drop(creates);
        let created_in = started.elapsed();
        eprintln!(
            "populate: {total} pods created in {:.1} s",
            created_in.as_secs_f64()
        );
        loop {
            let mut running = 0usize;
            let mut token: Option<String> = None;
            loop {
                let mut params = ListParams::default().limit(5_000);
                if let Some(t) = &token {
                    params = params.continue_token(t);
                }
                let page = pod_api
                    .list_metadata(&params.fields("status.phase=Running"))
                    .await
                    .unwrap_or_else(|e| panic!("listing the pods of {prefix}: {e}"));
                running += page.items.len();
                token = page.metadata.continue_.filter(|t| !t.is_empty());
                if token.is_none() {
                    break;
                }
            }
            if running >= total {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3_600),
                "only {running}/{total} pods Running after an hour"
            );
            eprintln!("populate: {running}/{total} pods Running");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let running_in = started.elapsed() - created_in;
        eprintln!(
            "populate: every pod Running {:.1} s after the last was created",
            running_in.as_secs_f64()
        );
        Populated {
            nodes: names,
            pods: total,
            created_in,
            running_in,
        }
    }
}
