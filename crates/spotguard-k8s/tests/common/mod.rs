//! Shared setup of the integration tests: the real control plane of spotguard-testkit-k8s,
//! workloads on it, and clients that record their requests.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};
use spotguard_k8s::{KubeCluster, KubeClusterOptions};

/// Options for tests: quick sync timeout, events on.
pub fn options() -> KubeClusterOptions {
    KubeClusterOptions {
        sync_timeout: Duration::from_secs(10),
        ..KubeClusterOptions::default()
    }
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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use futures::TryStreamExt as _;
use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams};
use kube::client::{Body, ClientBuilder};
use kube::runtime::watcher;
use kube::Api;
#[allow(unused_imports)]
pub use spotguard_testkit_k8s::{
    pod_is_ready, unique_name, ApiFaultProxy, ControlPlane, NodeBuilder,
    POD_DELETE_DELAY_ANNOTATION,
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

/// A pod with no controller: bound to `node`, or, with `None`, waiting for a scheduler that
/// does not exist (never bound).
pub async fn bare_pod(ns: &str, name: &str, node: Option<&str>) -> Pod {
    let mut spec = json!({"containers": [{"name": "app", "image": "registry.invalid/app:1"}]});
    match node {
        Some(node) => spec["nodeName"] = json!(node),
        None => spec["schedulerName"] = json!("spotguard-test-no-scheduler"),
    }
    control_plane()
        .create_in(
            ns,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}),
        )
        .await
}

/// A namespace of its own, a node of its pool, and ReplicaSet `web` running on that node.
pub struct Web {
    /// The namespace, also the name of the node's pool.
    pub ns: String,
    /// The node.
    pub node: String,
    /// The namespace's pods.
    pub pods: Api<Pod>,
}

impl Web {
    /// A namespace named after `prefix`, a node named after `node_prefix` in its pool, and
    /// `replicas` Ready pods of ReplicaSet `web` (app=web) on it.
    pub async fn start(prefix: &str, node_prefix: &str, replicas: i32) -> Self {
        let cp = control_plane();
        let ns = cp.create_namespace(prefix).await;
        let node = create_node(node_prefix, Some(&ns)).await;
        let pods: Api<Pod> = Api::namespaced(cp.admin_client(), &ns);
        let _: ReplicaSet = control_plane()
            .create_in(&ns, replica_set("web", &ns, replicas))
            .await;
        wait_for_ready_pods(&pods, "web", replicas as usize).await;
        Self { ns, node, pods }
    }
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

/// The pods now bound to `node`, in any namespace: `name → uid`.
pub async fn pods_on_node(node: &str) -> BTreeMap<String, String> {
    let all: Api<Pod> = Api::all(control_plane().admin_client());
    all.list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .expect("listing pods")
        .items
        .into_iter()
        .map(|p| (name_of(&p), p.metadata.uid.clone().unwrap_or_default()))
        .collect()
}

/// A DaemonSet `name` (pods labelled `app=<name>`) whose only pod runs on `node`.
pub async fn daemon_set_on(ns: &str, name: &str, node: &str) -> DaemonSet {
    control_plane().create_in(
        ns,
        json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/hostname": node},
                        "containers": [{"name": name, "image": format!("registry.invalid/{name}:1")}],
                    },
                },
            },
        }),
    )
    .await
}

/// The mirror pod `etcd-<node>` of a static pod on `node`, as the kubelet would create it: the
/// mirror annotation, owned by the Node.
pub async fn mirror_pod(ns: &str, node: &str) -> Pod {
    let uid = Api::<Node>::all(control_plane().admin_client())
        .get(node)
        .await
        .expect("the node")
        .metadata
        .uid
        .expect("a uid");
    control_plane()
        .create_in(
            ns,
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": format!("etcd-{node}"),
                    "annotations": {"kubernetes.io/config.mirror": "hash"},
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Node", "name": node, "uid": uid,
                        "controller": true,
                    }],
                },
                "spec": {
                    "nodeName": node,
                    "containers": [{"name": "etcd", "image": "registry.invalid/etcd:1"}],
                },
            }),
        )
        .await
}

/// A Job's pod on `node` that ran and finished in `phase` (`Succeeded` or `Failed`), as a
/// kubelet reports it (kwok leaves finished pods alone); with an `emptyDir` volume when
/// `empty_dir`. Returns the pod's name.
pub async fn finished_job_pod(
    ns: &str,
    job: &str,
    node: &str,
    phase: &str,
    empty_dir: bool,
) -> String {
    let mut spec = json!({
        "restartPolicy": "Never",
        "nodeSelector": {"kubernetes.io/hostname": node},
        "containers": [{"name": "job", "image": "registry.invalid/job:1"}],
    });
    if empty_dir {
        spec["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
        spec["containers"][0]["volumeMounts"] =
            json!([{"name": "scratch", "mountPath": "/scratch"}]);
    }
    let _: Job = control_plane().create_in(
        ns,
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": job},
            "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": job}}, "spec": spec}},
        }),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(control_plane().admin_client(), ns);
    let pod = wait_for_ready_pods(&pods, job, 1).await.remove(0);
    let name = name_of(&pod);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let exit_code = if phase == "Succeeded" { 0 } else { 1 };
    pods.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": phase,
            "containerStatuses": [{
                "name": "job", "image": "registry.invalid/job:1", "imageID": "",
                "ready": false, "started": false, "restartCount": 0,
                "state": {"terminated": {
                    "exitCode": exit_code, "reason": if exit_code == 0 { "Completed" } else { "Error" },
                    "startedAt": now, "finishedAt": now,
                }},
            }],
        }})),
    )
    .await
    .expect("finishing the Job's pod");
    name
}

/// A PDB named `name` over app `app` with this spec (`minAvailable` / `maxUnavailable`), and
/// a wait until the disruption controller has computed its status for `healthy` pods.
pub async fn pdb(ns: &str, name: &str, app: &str, spec: Value, healthy: i32) {
    let mut spec = spec;
    spec["selector"] = json!({"matchLabels": {"app": app}});
    let _: PodDisruptionBudget = control_plane().create_in(
        ns,
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name}, "spec": spec}),
    )
    .await;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(control_plane().admin_client(), ns);
    spotguard_testkit_k8s::eventually(
        WAIT,
        "the disruption controller to observe the PDB",
        || async {
            let pdb = budgets.get(name).await.expect("reading the PDB");
            let status = pdb.status?;
            (status.observed_generation == pdb.metadata.generation
                && status.current_healthy == Some(healthy))
            .then_some(())
        },
    )
    .await;
}

/// Watches the pods of an app and records, in the order the API server's watch reports
/// changes: the fewest Ready pods at any moment, and how many were Ready just before each
/// pod began terminating.
pub struct ReadyWatch {
    low_water: Arc<AtomicUsize>,
    before_each_eviction: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatch {
    /// Starts the watch and returns once it has listed the app's pods.
    pub async fn start(pods: &Api<Pod>, app: &str) -> Self {
        let low_water = Arc::new(AtomicUsize::new(usize::MAX));
        let before_each_eviction = Arc::new(Mutex::new(Vec::new()));
        let synced = Arc::new(tokio::sync::Notify::new());
        let (low, before, ready_now) = (
            low_water.clone(),
            before_each_eviction.clone(),
            synced.clone(),
        );
        let stream = watcher(
            pods.clone(),
            watcher::Config::default().labels(&format!("app={app}")),
        );
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut state: BTreeMap<String, Pod> = BTreeMap::new();
            let mut init: BTreeMap<String, Pod> = BTreeMap::new();
            let mut live = false;
            let ready =
                |state: &BTreeMap<String, Pod>| state.values().filter(|p| pod_is_ready(p)).count();
            while let Ok(Some(event)) = stream.try_next().await {
                match event {
                    watcher::Event::Init => init.clear(),
                    watcher::Event::InitApply(p) => {
                        init.insert(name_of(&p), p);
                    }
                    watcher::Event::InitDone => {
                        state = std::mem::take(&mut init);
                        if !live {
                            live = true;
                            ready_now.notify_one();
                        }
                    }
                    watcher::Event::Apply(p) => {
                        let was_running = state
                            .get(&name_of(&p))
                            .is_some_and(|old| old.metadata.deletion_timestamp.is_none());
                        if was_running && p.metadata.deletion_timestamp.is_some() {
                            before.lock().unwrap().push(ready(&state));
                        }
                        state.insert(name_of(&p), p);
                    }
                    watcher::Event::Delete(p) => {
                        if state
                            .get(&name_of(&p))
                            .is_some_and(|old| old.metadata.deletion_timestamp.is_none())
                        {
                            before.lock().unwrap().push(ready(&state));
                        }
                        state.remove(&name_of(&p));
                    }
                }
                if live {
                    low.fetch_min(ready(&state), Ordering::SeqCst);
                }
            }
        });
        tokio::time::timeout(WAIT, synced.notified())
            .await
            .expect("the watch lists the pods");
        Self {
            low_water,
            before_each_eviction,
            task,
        }
    }

    /// Stops the watch: the fewest Ready pods seen, and the Ready pods before each eviction.
    pub fn stop(self) -> (usize, Vec<usize>) {
        self.task.abort();
        let before = self.before_each_eviction.lock().unwrap().clone();
        (self.low_water.load(Ordering::SeqCst), before)
    }
}

/// A cluster adapter whose clients go through the fault proxy (whose request log holds every
/// request with its query), caches synced.
pub async fn proxied_cluster(proxy: &ApiFaultProxy, options: KubeClusterOptions) -> KubeCluster {
    let cluster = KubeCluster::from_config(proxy.admin_config(), options).expect("clients");
    wait_ready(&cluster).await;
    cluster
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
