//! Test support (feature `test-util`): a stateful Kubernetes API server fake over real HTTP on
//! 127.0.0.1, that the real [`kube::Client`] and the real `kubectl` both talk to.
//!
//! It implements what Spot Guard and `kubectl drain` depend on:
//!
//! - discovery (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`, with
//!   `pods/eviction` in policy/v1), `/openapi/v2` and `/openapi/v3` answered 404 (kubectl
//!   does without them for `get`, `cordon` and `drain`);
//! - nodes, pods, namespaces, ConfigMaps, Events (core and `events.k8s.io/v1`), DaemonSets,
//!   ReplicaSets, Deployments, StatefulSets, PodDisruptionBudgets and Leases: create, get,
//!   list, watch, replace, patch (merge, strategic merge, JSON patch with `test`), delete;
//! - one resourceVersion counter; a replace or patch carrying a stale resourceVersion gets
//!   409, a failed JSON patch `test` 422, a duplicate create 409 `AlreadyExists`;
//! - label selectors and field selectors on any dotted path (`spec.nodeName=...`);
//! - lists in pages (`limit`, then `continue` with the previous page's token), every page
//!   carrying the first page's resourceVersion;
//! - watches (`?watch=true`) as JSON lines: from a resourceVersion out of the full history,
//!   or the current objects as `ADDED` first, then live changes until `timeoutSeconds`; with
//!   a selector, an object modified into the selection arrives as `ADDED` and one modified
//!   out of it as `DELETED`, as the API server reports them;
//! - `meta.k8s.io/v1` Tables for `kubectl get`;
//! - graceful pod deletion: `deletionTimestamp`, then removal after
//!   [`FakeConfig::termination_delay`] (at once for a zero grace period, an unbound or a
//!   finished pod);
//! - evictions: 201, or 429 with the API server's `Status` (`Cannot evict pod as it would
//!   violate the pod's disruption budget.`, the PDB named in the cause) when the covering PDB
//!   allows no disruption; 500 when two PDBs cover the pod; finished, pending and terminating
//!   pods bypass budgets; unhealthy pods follow `unhealthyPodEvictionPolicy`;
//! - PDB status (`disruptionsAllowed`, `currentHealthy`, `desiredHealthy`, `expectedPods`)
//!   recomputed on every change from the matching pods and `minAvailable`/`maxUnavailable`;
//! - a ReplicaSet controller: a terminating ReplicaSet pod is replaced by a new pod on the
//!   least busy schedulable node that admits it, Ready after
//!   [`FakeConfig::replacement_ready_delay`].
//!
//! Tests can also make another writer slip in between a client's read and write
//! ([`FakeApiServer::interfere_after_reads`]), inject API errors
//! ([`FakeApiServer::inject_failures`]), read the request log, and track the lowest healthy
//! count each PDB ever had ([`FakeApiServer::pdb_low_water`]).

mod http;
mod kubectl;
mod objects;
mod patch;
mod selector;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use kubectl::Kubectl;
pub use objects::{daemonset_pod, node, pdb_max_unavailable, pdb_min_available, PodBuilder};
pub use store::FakeConfig;

use http::Shared;
use store::{find_resource, Interference, State, RESOURCES};

/// A running fake API server. Stops accepting connections when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FakeApiServer {
    /// Starts a server with default settings on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_with(FakeConfig::default()).await
    }

    /// Starts a server with these settings on a free port of 127.0.0.1.
    pub async fn start_with(config: FakeConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let (changes, _) = broadcast::channel(65_536);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config)),
            changes,
            addr,
            evictions_in_flight: Mutex::new((0, 0)),
        });
        let serving = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| http::handle(shared.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let server = Self { shared, accept };
        server.create(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
        );
        server
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A [`kube::Config`] for this server (kube's defaults otherwise, retry layer included).
    pub fn config(&self) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse().expect("valid url"));
        config.default_namespace = "default".into();
        config.read_timeout = None;
        config
    }

    /// A real [`kube::Client`] talking to this server over HTTP.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("kube client")
    }

    /// A `kubectl` runner pointed at this server through a generated kubeconfig.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl::new(&self.url())
    }

    /// Creates an object, choosing the resource from its `apiVersion` and `kind`. Panics on
    /// an unknown kind or an API error: it is for test setup.
    pub fn create(&self, object: Value) -> Value {
        let api_version = object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let resource = RESOURCES
            .iter()
            .position(|r| r.api_version() == api_version && r.kind == kind)
            .unwrap_or_else(|| panic!("the fake does not serve {api_version} {kind}"));
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_string);
        self.shared
            .apply(|st, ch, _| st.create(resource, namespace.as_deref(), object, ch))
            .unwrap_or_else(|e| panic!("create failed: {}", e.message))
    }

    /// Creates every object.
    pub fn create_all(&self, objects: impl IntoIterator<Item = Value>) {
        for o in objects {
            self.create(o);
        }
    }

    fn resource(group: &str, plural: &str) -> usize {
        find_resource(group, plural).unwrap_or_else(|| panic!("unknown resource {group}/{plural}"))
    }

    /// Objects of a resource (`group` empty for core), in a namespace or all, sorted by
    /// namespace and name.
    pub fn list(&self, group: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let resource = Self::resource(group, plural);
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.list(
            resource,
            namespace,
            &Default::default(),
            &Default::default(),
        )
    }

    /// One object, if it exists.
    pub fn get(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let resource = Self::resource(group, plural);
        if RESOURCES[resource].namespaced && namespace.is_none() {
            // Any namespace.
            return self
                .list(group, plural, None)
                .into_iter()
                .find(|o| o["metadata"]["name"] == name);
        }
        let ns = store::ns_key(&RESOURCES[resource], namespace);
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.current(resource, &ns, name)
    }

    /// Pods bound to the node.
    pub fn pods_on(&self, node: &str) -> Vec<Value> {
        self.list("", "pods", None)
            .into_iter()
            .filter(|p| p["spec"]["nodeName"] == node)
            .collect()
    }

    /// Modifies an object in place (bumping its resourceVersion), as another writer would.
    pub fn modify(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) {
        let resource = Self::resource(group, plural);
        let mut object = self
            .get(group, plural, namespace, name)
            .expect("object to modify exists");
        change(&mut object);
        if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        self.shared
            .apply(|st, ch, _| st.replace(resource, namespace, name, object, ch))
            .unwrap_or_else(|e| panic!("modify failed: {}", e.message));
    }

    /// After each of the next `times` reads of the object, `change` is applied to it on the
    /// server — another controller writing between a client's read and its write.
    pub fn interfere_after_reads(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
        times: u32,
        change: impl Fn(&mut Value) + Send + Sync + 'static,
    ) {
        let resource = Self::resource(group, plural);
        let namespace = if RESOURCES[resource].namespaced {
            namespace.unwrap_or_default()
        } else {
            ""
        };
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .interferences
            .push(Interference {
                resource,
                namespace: namespace.to_string(),
                name: name.to_string(),
                remaining: times,
                change: Arc::new(change),
            });
    }

    /// The next `times` requests whose path and query contain `fragment` are answered with
    /// `code` (a `Status` with reason `InternalError`).
    pub fn inject_failures(&self, fragment: &str, code: u16, times: u32) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .injected
            .push((fragment.to_string(), code, times));
    }

    /// Every request served so far: method, path with query, status code.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .log
            .clone()
    }

    /// The most eviction requests the server was answering at the same time.
    pub fn max_evictions_in_flight(&self) -> usize {
        self.shared
            .evictions_in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
    }

    /// Starts recording, per PDB (`namespace/name`), the lowest `currentHealthy` seen from now
    /// on.
    pub fn track_pdb_low_water(&self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .low_water = Some(BTreeMap::new());
    }

    /// The lowest `currentHealthy` of the PDB since [`FakeApiServer::track_pdb_low_water`].
    pub fn pdb_low_water(&self, pdb: &str) -> Option<i64> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .low_water
            .as_ref()
            .and_then(|l| l.get(pdb).copied())
    }

    /// A summary of the cluster to compare two runs: one line per node (cordon, taints) and
    /// per pod, pods named by their controller (replacement pods get random names) and
    /// sorted.
    pub fn state_summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for n in self.list("", "nodes", None) {
            let mut taints: Vec<String> = n["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    format!(
                        "{}={}:{}",
                        t["key"].as_str().unwrap_or_default(),
                        t["value"].as_str().unwrap_or_default(),
                        t["effect"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            taints.sort();
            lines.push(format!(
                "node {} unschedulable={} taints=[{}]",
                n["metadata"]["name"].as_str().unwrap_or_default(),
                n["spec"]["unschedulable"] == json!(true),
                taints.join(",")
            ));
        }
        for p in self.list("", "pods", None) {
            let owner = p["metadata"]["ownerReferences"]
                .as_array()
                .and_then(|refs| refs.iter().find(|r| r["controller"] == json!(true)))
                .map(|r| {
                    format!(
                        "{}/{}",
                        r["kind"].as_str().unwrap_or_default(),
                        r["name"].as_str().unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| {
                    format!("pod/{}", p["metadata"]["name"].as_str().unwrap_or_default())
                });
            lines.push(format!(
                "pod {}/{} node={} phase={} terminating={}",
                p["metadata"]["namespace"].as_str().unwrap_or_default(),
                owner,
                p["spec"]["nodeName"].as_str().unwrap_or("<none>"),
                p["status"]["phase"].as_str().unwrap_or_default(),
                !p["metadata"]["deletionTimestamp"].is_null()
            ));
        }
        lines.sort();
        lines
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
