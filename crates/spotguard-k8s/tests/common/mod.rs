//! Shared setup of the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};
use spotguard_k8s::testing::{daemonset_pod, node, FakeApiServer, PodBuilder};
use spotguard_k8s::{KubeCluster, KubeClusterOptions};

/// Options for tests: quick sync timeout, events on.
pub fn options() -> KubeClusterOptions {
    KubeClusterOptions {
        sync_timeout: Duration::from_secs(10),
        ..KubeClusterOptions::default()
    }
}

/// A cluster adapter on the fake, caches synced.
pub async fn cluster(fake: &FakeApiServer) -> KubeCluster {
    let cluster = KubeCluster::from_config(fake.config(), options()).expect("clients");
    tokio::time::timeout(Duration::from_secs(10), cluster.ready())
        .await
        .expect("caches sync in time")
        .expect("caches sync");
    cluster
}

/// The DaemonSet object a DaemonSet pod points at (kubectl drain reads it).
pub fn daemonset(namespace: &str, name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "namespace": namespace}, "spec": {}})
}

/// Three spot nodes; `old` holds `replicas` pods of ReplicaSet `web` (app=web), a DaemonSet
/// pod and a mirror pod; the others are empty.
pub fn three_nodes_with_web(fake: &FakeApiServer, replicas: usize) {
    fake.create_all([
        node("old", "i-old", "SPOT"),
        node("new-a", "i-a", "SPOT"),
        node("new-b", "i-b", "SPOT"),
    ]);
    fake.create(daemonset("kube-system", "proxy"));
    fake.create(daemonset_pod("kube-system", "proxy", "old"));
    fake.create(
        PodBuilder::new("kube-system", "etcd-old", "old")
            .owned_by("Node", "old")
            .mirror()
            .build(),
    );
    for i in 0..replicas {
        fake.create(
            PodBuilder::new("shop", &format!("web-{i}"), "old")
                .owned_by("ReplicaSet", "web")
                .label("app", "web")
                .build(),
        );
    }
}

/// Waits until `check` holds, polling every 20ms, for at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

// ---------------------------------------------------------------------------------------------
// The real control plane (spotguard-testkit-k8s): etcd, kube-apiserver, controller manager,
// scheduler and kwok nodes on loopback, one per test binary. Tests keep apart by their own
// namespaces and uniquely named nodes; the cluster may hold other tests' objects.
// ---------------------------------------------------------------------------------------------

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::client::{Body, ClientBuilder};
use kube::Api;
#[allow(unused_imports)]
pub use spotguard_testkit_k8s::{
    pod_is_ready, unique_name, ControlPlane, NodeBuilder, POD_DELETE_DELAY_ANNOTATION,
};

/// Generous bound for the real control plane's asynchronous work (scheduling, kwok, the
/// controllers) on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(90);

/// The control plane of this test binary.
pub fn control_plane() -> &'static ControlPlane {
    ControlPlane::shared()
}

/// A cluster adapter on the real API server as the admin, caches synced.
pub async fn real_cluster() -> KubeCluster {
    let cluster =
        KubeCluster::from_config(control_plane().admin_config(), options()).expect("clients");
    wait_ready(&cluster).await;
    cluster
}

/// Waits until the adapter's watch caches have synced.
pub async fn wait_ready(cluster: &KubeCluster) {
    tokio::time::timeout(WAIT, cluster.ready())
        .await
        .expect("caches sync in time")
        .expect("caches sync");
}

/// A kwok node named [`unique_name`]`(prefix)`, with an AWS provider ID and, when `pool` is
/// given, the label `spotguard.dev/test-pool=<pool>` that the tests' workloads select.
pub async fn create_node(prefix: &str, pool: Option<&str>) -> String {
    let name = unique_name(prefix);
    let mut builder = NodeBuilder::new(&name)
        .provider_id(&format!("aws:///us-east-1a/i-{name}"))
        .label("eks.amazonaws.com/capacityType", "SPOT")
        .cpu("4")
        .memory("16Gi")
        .pods(110);
    if let Some(pool) = pool {
        builder = builder.label(POOL_LABEL, pool);
    }
    control_plane().create_node(&builder).await;
    name
}

/// The label the tests' ReplicaSets and Deployments select nodes by.
pub const POOL_LABEL: &str = "spotguard.dev/test-pool";

/// A pod template for app `app` on the nodes of `pool`.
pub fn pod_template(app: &str, pool: &str, grace_seconds: i64) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {
            "nodeSelector": {POOL_LABEL: pool},
            "terminationGracePeriodSeconds": grace_seconds,
            "containers": [{
                "name": "app",
                "image": "registry.invalid/app:1",
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            }],
        },
    })
}

/// A ReplicaSet of `replicas` pods labelled `app=<name>` on the nodes of `pool`.
pub fn replica_set(name: &str, pool: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name, pool, 30),
        },
    })
}

/// Creates the namespaced object given as JSON in `namespace` and returns it as the API
/// server stored it.
pub async fn create<K>(namespace: &str, object: Value) -> K
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
    K::DynamicType: Default,
{
    let typed: K = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("{object} is not a valid object: {e}"));
    let api: Api<K> = Api::namespaced(control_plane().admin_client(), namespace);
    api.create(&kube::api::PostParams::default(), &typed)
        .await
        .unwrap_or_else(|e| panic!("creating {object}: {e}"))
}

/// The pods of `namespace` labelled `app=<app>`.
pub async fn app_pods(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("listing pods")
        .items
}

/// Waits until `app` has exactly `count` Ready pods (and no others), and returns them.
pub async fn wait_for_ready_pods(pods: &Api<Pod>, app: &str, count: usize) -> Vec<Pod> {
    spotguard_testkit_k8s::eventually(WAIT, &format!("{count} Ready pods of {app}"), || async {
        let all = app_pods(pods, app).await;
        (all.len() == count && all.iter().all(pod_is_ready)).then_some(all)
    })
    .await
}

/// The name of a pod.
pub fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The node a pod is bound to.
pub fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

// ---------------------------------------------------------------------------------------------
// A client that records every request (method, path, status) and can run a hook after a
// response, before the caller sees it: another writer acting between the adapter's read and
// its write, on the real API server.
// ---------------------------------------------------------------------------------------------

/// What to do after a response: `(method, path, status)` in, a future to await before the
/// response is handed back out (or `None`).
pub type Hook = Box<dyn FnMut(&str, &str, u16) -> Option<BoxFuture<'static, ()>> + Send>;

/// The requests a recording client sent, and its hook.
#[derive(Default)]
pub struct Recorder {
    requests: Mutex<Vec<(String, String, u16)>>,
    hook: Mutex<Option<Hook>>,
}

impl Recorder {
    /// `(method, path, status)` of every request answered so far, in order of the answers.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.requests.lock().unwrap().clone()
    }

    /// How many requests with this method went to this path, and with which statuses.
    pub fn statuses(&self, method: &str, path: &str) -> Vec<u16> {
        self.requests()
            .into_iter()
            .filter(|(m, p, _)| m == method && p == path)
            .map(|(_, _, c)| c)
            .collect()
    }

    /// Sets the hook run after each response.
    pub fn set_hook(&self, hook: Hook) {
        *self.hook.lock().unwrap() = Some(hook);
    }
}

/// A tower layer recording into a [`Recorder`].
#[derive(Clone)]
struct RecordingLayer(Arc<Recorder>);

impl<S> tower::Layer<S> for RecordingLayer {
    type Service = Recording<S>;
    fn layer(&self, inner: S) -> Recording<S> {
        Recording {
            inner,
            recorder: self.0.clone(),
        }
    }
}

struct Recording<S> {
    inner: S,
    recorder: Arc<Recorder>,
}

impl<S, B> tower::Service<http::Request<Body>> for Recording<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let recorder = self.recorder.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let status = response.status().as_u16();
            recorder
                .requests
                .lock()
                .unwrap()
                .push((method.clone(), path.clone(), status));
            let after = recorder
                .hook
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|hook| hook(&method, &path, status));
            if let Some(after) = after {
                after.await;
            }
            Ok(response)
        })
    }
}

/// A client from `config` that records its requests.
pub fn recording_client(config: kube::Config) -> (kube::Client, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let client = ClientBuilder::try_from(config)
        .expect("a client builder")
        .with_layer(&RecordingLayer(recorder.clone()))
        .build();
    (client, recorder)
}

/// A cluster adapter on the real API server as the admin whose clients (node reads and writes,
/// events, caches, and evictions) record their requests in one recorder; caches synced.
pub async fn recording_cluster() -> (KubeCluster, Arc<Recorder>) {
    let config = control_plane().admin_config();
    let recorder = Arc::new(Recorder::default());
    let build = |config: kube::Config| {
        ClientBuilder::try_from(config)
            .expect("a client builder")
            .with_layer(&RecordingLayer(recorder.clone()))
            .build()
    };
    let client = build(config.clone());
    // Evictions without kube's retry layer, as `KubeCluster::from_config` builds them.
    let mut eviction_config = config;
    eviction_config.default_retry = false;
    let evictions = build(eviction_config);
    let cluster = KubeCluster::with_clients(client, evictions, options());
    wait_ready(&cluster).await;
    (cluster, recorder)
}
