//! # spotguard-testkit-k8s
//!
//! A real Kubernetes control plane for Spot Guard's tests, on loopback and without
//! containers: etcd, kube-apiserver (RBAC on, bearer tokens, service-account tokens),
//! kube-controller-manager (so the disruption controller computes every PodDisruptionBudget's
//! `status.disruptionsAllowed`, which the eviction API answers from, and ReplicaSets recreate
//! evicted pods), kube-scheduler, and kwok playing the kubelets of fake nodes (pods become
//! Running and Ready, graceful deletion completes). `kubectl` and `helm` of the same release
//! are there as referees.
//!
//! The binaries are built from Go modules by `testkit/control-plane/build.sh` (see
//! `docs/control-plane.md`) and found in `target/control-plane/bin` of the workspace, or in the
//! folder named by the environment variable [`BIN_DIR_ENV`]. A missing binary fails the test
//! with a message naming that build command: it is never a skip.
//!
//! ## Use
//!
//! ```no_run
//! use spotguard_testkit_k8s::{ControlPlane, NodeBuilder};
//!
//! # async fn example() {
//! let cp = ControlPlane::shared(); // started once per test binary
//! let client = cp.admin_client(); // a new client for this test's runtime
//! let ns = cp.create_namespace("drain").await; // unique, its default ServiceAccount exists
//! let node = cp
//!     .create_node(&NodeBuilder::new(&spotguard_testkit_k8s::unique_name("spot")).cpu("4"))
//!     .await; // Ready and schedulable
//! # let _ = (client, ns, node);
//! # }
//! ```
//!
//! One control plane serves every test of a test binary ([`ControlPlane::shared`]); tests
//! keep apart by unique namespaces and node names ([`unique_name`]). It starts in a few
//! seconds and stops when the test binary exits, however it exits: each process runs under a
//! small shell wrapper that stops it when the pipe from the test binary closes, and the
//! temporary folder (certificates, etcd data, logs) is removed after them.
//!
//! Clients are made per call ([`ControlPlane::admin_client`], [`ControlPlane::client_for_token`])
//! because a [`kube::Client`] belongs to the tokio runtime it was made in, and each
//! `#[tokio::test]` has its own.
//!
//! [`ApiFaultProxy`] puts a plain-HTTP proxy in front of the API server that injects API
//! failures (error answers, delays) by rule.
#![forbid(unsafe_code)]

mod node;
mod process;
mod proxy;
mod scale;

use std::fmt::Write as _;
use std::fs;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

pub use node::{node_is_ready, pod_is_ready, NodeBuilder, NODE_READY_TIMEOUT};
use process::{Janitor, Supervised};
pub use proxy::{ApiFault, ApiFaultProxy, ApiRule, StatusReply};
pub use scale::{Populated, POPULATE_CONCURRENCY};

/// Environment variable naming the folder of the control-plane binaries, instead of
/// `target/control-plane/bin` of the workspace.
pub const BIN_DIR_ENV: &str = "SPOTGUARD_CONTROL_PLANE_BIN";

/// Environment variable: when set (non-empty), the control plane's temporary folder (logs,
/// certificates, etcd data) is kept after the test binary exits, for a look at the logs.
pub const KEEP_DIR_ENV: &str = "SPOTGUARD_CONTROL_PLANE_KEEP";

/// The command that builds the binaries, as failures name it.
pub const BUILD_COMMAND: &str = "testkit/control-plane/build.sh";

/// The annotation (key, value) that makes kwok play a node's kubelet.
pub const KWOK_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// Pod annotation: how long (a Go duration such as `"5s"`) the pod's containers take to stop
/// once it is deleted gracefully. Without it, graceful deletion completes at once.
pub const POD_DELETE_DELAY_ANNOTATION: &str = "pod-delete.stage.kwok.x-k8s.io/delay";

/// Every binary the kit needs; [`ControlPlane::shared`] checks them all before starting.
pub const BINARIES: [&str; 7] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
    "helm",
];

/// The service CIDR the API server allocates ClusterIPs from.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";

/// The issuer (and audience) of service-account tokens.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The admin user's name (in group `system:masters`).
pub const ADMIN_USER: &str = "spotguard-admin";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
const KWOK_STAGES: &str = include_str!("kwok-stages.yaml");
const LOG_TAIL_LINES: usize = 40;

/// The folder holding the control-plane binaries: the value of [`BIN_DIR_ENV`] if set, else
/// `target/control-plane/bin` of this workspace.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(dir);
    }
    // crates/spotguard-testkit-k8s → the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join("target/control-plane/bin")
}

/// The path of one control-plane binary (`"kubectl"`, `"helm"`, `"etcd"`, ...).
///
/// # Panics
/// When it is missing, with a message naming [`BUILD_COMMAND`].
pub fn bin(name: &str) -> PathBuf {
    match find_bin(name) {
        Ok(path) => path,
        Err(message) => panic!("{message}"),
    }
}

fn find_bin(name: &str) -> Result<PathBuf, String> {
    let path = bin_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "the control-plane binary {name} is missing at {}: build the control plane with \
             `{BUILD_COMMAND}` (from the workspace root), or set {BIN_DIR_ENV} to a folder \
             holding {}",
            path.display(),
            BINARIES.join(", "),
        ))
    }
}

/// A name unique within this test binary, valid as a namespace or node name:
/// `<prefix>-<n>`, the prefix lower-cased, other characters than `[a-z0-9-]` turned to `-`, and
/// cut to 50 characters.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    let trimmed = clean.trim_matches('-').len();
    if trimmed == 0 {
        clean = "t".to_string();
    }
    format!("{}-{n}", clean.trim_matches('-'))
}

/// Polls `check` every 100 ms until it returns `Some`, and returns that value.
///
/// # Panics
/// When `timeout` passes first, naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running control plane. Get the one of this test binary with [`ControlPlane::shared`].
pub struct ControlPlane {
    dir: PathBuf,
    server_url: String,
    ca_pem: String,
    ca_der: Vec<Vec<u8>>,
    ca_path: PathBuf,
    admin_token: String,
    kubeconfig: PathBuf,
    startup_time: Duration,
    components: Vec<Supervised>,
    _janitor: Janitor,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("dir", &self.dir)
            .field("startup_time", &self.startup_time)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use (a few seconds) and
    /// shared by all its tests. Callable from synchronous code and from any tokio runtime: it
    /// starts the components on a thread of its own.
    ///
    /// # Panics
    /// When a binary is missing (naming [`BUILD_COMMAND`]) or a component fails to start
    /// (with the tail of its log); every later call panics with the same message.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| {
            std::thread::Builder::new()
                .name("spotguard-control-plane".into())
                .spawn(start)
                .expect("spawning the start-up thread")
                .join()
                .unwrap_or_else(|_| Err("the start-up thread panicked".to_string()))
        });
        match started {
            Ok(cp) => cp,
            Err(message) => panic!("{message}"),
        }
    }

    /// `https://127.0.0.1:<port>`, the API server's URL.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The PEM of the CA that signed the API server's serving certificate (both generated by
    /// the API server in its `--cert-dir`, where `apiserver.crt` holds the serving certificate
    /// followed by this CA).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A file holding [`ControlPlane::ca_pem`].
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The admin's bearer token (user [`ADMIN_USER`], group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A kubeconfig for the admin, for `kubectl --kubeconfig` and `helm --kubeconfig`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The control plane's temporary folder (logs in `logs/`), removed when the test binary
    /// exits (unless [`KEEP_DIR_ENV`] is set).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log file of a component (`"etcd"`, `"kube-apiserver"`, `"kube-controller-manager"`,
    /// `"kube-scheduler"`, `"kwok"`).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    /// How long start-up took, from the first process started to the smoke pod being Ready.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// The path of a binary of the kit (see [`bin`]).
    pub fn bin(&self, name: &str) -> PathBuf {
        bin(name)
    }

    /// A [`kube::Config`] for the admin. kube's defaults otherwise, its retry layer (which
    /// retries 429, 503 and 504) included: set `default_retry = false` to see every answer.
    pub fn admin_config(&self) -> kube::Config {
        self.config_for_token(&self.admin_token)
    }

    /// A [`kube::Config`] with the given bearer token (for example a ServiceAccount's from
    /// the TokenRequest API).
    pub fn config_for_token(&self, token: &str) -> kube::Config {
        config_for(&self.server_url, &self.ca_der, token)
    }

    /// A new admin client. Make it inside the tokio runtime that uses it.
    pub fn admin_client(&self) -> kube::Client {
        kube::Client::try_from(self.admin_config()).expect("building the admin client")
    }

    /// A new client with the given bearer token. Make it inside the tokio runtime that uses it.
    pub fn client_for_token(&self, token: &str) -> kube::Client {
        kube::Client::try_from(self.config_for_token(token)).expect("building a client")
    }

    /// Writes a kubeconfig with the given bearer token (and this cluster, its CA, namespace
    /// `default`) to a new file in the control plane's folder and returns its path.
    pub fn write_kubeconfig(&self, token: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("kubeconfig-{n}.json"));
        write_kubeconfig(&path, &self.server_url, &self.ca_path, token)
            .unwrap_or_else(|e| panic!("{e}"));
        path
    }

    /// Writes a kubeconfig for `server` (this API server's URL, or a proxy's in front of it:
    /// a plain `http://` URL gets no certificate authority) with the given bearer token to a
    /// new file in the control plane's folder, and returns its path.
    pub fn write_kubeconfig_for(&self, server: &str, token: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("kubeconfig-for-{n}.json"));
        let ca = server
            .starts_with("https://")
            .then_some(self.ca_path.as_path());
        write_kubeconfig_file(&path, server, ca, token).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    /// A bearer token of ServiceAccount `namespace/name` from the TokenRequest API, valid for
    /// two hours (what a pod's projected token is, without a pod).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.issue_token(namespace, name, json!({"expirationSeconds": 7200}), "")
            .await
    }

    /// A token of ServiceAccount `namespace/name` bound to pod `namespace/pod` (which must run
    /// as that account), valid for two hours: what the kubelet mounts into the pod. It carries
    /// the pod's node (`authentication.kubernetes.io/node-name`) once the pod is bound to one.
    ///
    /// # Panics
    /// When the pod cannot be read or the API server refuses the request.
    pub async fn pod_service_account_token(
        &self,
        namespace: &str,
        name: &str,
        pod: &str,
    ) -> String {
        use k8s_openapi::api::core::v1::Pod;
        let bound = Api::<Pod>::namespaced(self.admin_client(), namespace)
            .get(pod)
            .await
            .unwrap_or_else(|e| panic!("reading pod {namespace}/{pod}: {e}"));
        let spec = json!({
            "expirationSeconds": 7200,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": bound.metadata.uid},
        });
        self.issue_token(namespace, name, spec, &format!(" bound to pod {pod}"))
            .await
    }

    /// A token from the TokenRequest API with `spec`; `what` completes messages.
    async fn issue_token(&self, namespace: &str, name: &str, spec: Value, what: &str) -> String {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin_client(), namespace);
        let request: TokenRequest = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": spec,
        }))
        .expect("a TokenRequest");
        let issued = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| {
                panic!("requesting a token of ServiceAccount {namespace}/{name}{what}: {e}")
            });
        let token: String = issued.status.and_then(|s| s.token).unwrap_or_default();
        assert!(
            !token.is_empty(),
            "the token request of {namespace}/{name}{what} came back without a token"
        );
        token
    }

    /// `kubectl` with the admin's kubeconfig (`KUBECONFIG` set).
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(bin("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// `kubectl apply -f -` of `manifests` (YAML or JSON) with `args`, as the administrator;
    /// returns what kubectl printed.
    ///
    /// # Panics
    /// When kubectl cannot run or refuses them, naming `what`.
    pub fn apply(&self, manifests: &str, args: &[&str], what: &str) -> String {
        use std::io::Write as _;
        use std::process::Stdio;
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot run kubectl: {e}"));
        child
            .stdin
            .take()
            .expect("kubectl's stdin")
            .write_all(manifests.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: writing to kubectl: {e}"));
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("{what}: kubectl apply: {e}"));
        assert!(
            out.status.success(),
            "{what}: kubectl apply {args:?} refused:\n{}\n{manifests}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `helm` with the admin's kubeconfig and its cache, config and data folders inside the
    /// control plane's folder (so it writes nothing to `$HOME`).
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(bin("helm"));
        let home = self.dir.join("helm");
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        cmd
    }

    /// Creates a namespace named [`unique_name`]`(prefix)` and waits until its `default`
    /// ServiceAccount exists (pods cannot be created before). Returns its name.
    pub async fn create_namespace(&self, prefix: &str) -> String {
        let client = self.admin_client();
        let name = unique_name(prefix);
        create_namespace(&client, &name)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        name
    }

    /// Creates the namespaced object given as JSON (any kind k8s-openapi knows) in
    /// `namespace`, as the administrator, and returns it as the API server stored it.
    ///
    /// # Panics
    /// When the JSON is not such an object, or the API server refuses it.
    pub async fn create_in<K>(&self, namespace: &str, object: serde_json::Value) -> K
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
        Api::<K>::namespaced(self.admin_client(), namespace)
            .create(&PostParams::default(), &typed)
            .await
            .unwrap_or_else(|e| panic!("creating {object} in {namespace}: {e}"))
    }

    /// Creates the node and waits until it is Ready and schedulable (no `not-ready` taint).
    pub async fn create_node(&self, node: &NodeBuilder) -> Node {
        node.create(&self.admin_client()).await
    }

    /// `Some` with a description when a component has exited.
    pub fn exited_component(&self) -> Option<String> {
        self.components
            .iter()
            .find_map(|c| c.exited().map(|s| format!("{} exited ({s})", c.name)))
    }
}

fn config_for(server_url: &str, ca_der: &[Vec<u8>], token: &str) -> kube::Config {
    let mut config = kube::Config::new(server_url.parse().expect("a valid server URL"));
    config.root_cert = Some(ca_der.to_vec());
    config.auth_info.token = Some(token.to_string().into());
    config
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str) -> Result<(), String> {
    write_kubeconfig_file(path, server, Some(ca), token)
}

fn write_kubeconfig_file(
    path: &Path,
    server: &str,
    ca: Option<&Path>,
    token: &str,
) -> Result<(), String> {
    let mut cluster = json!({"server": server});
    if let Some(ca) = ca {
        cluster["certificate-authority"] = json!(ca);
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "spotguard", "cluster": cluster}],
        "users": [{"name": "spotguard", "user": {"token": token}}],
        "contexts": [{"name": "spotguard", "context": {
            "cluster": "spotguard",
            "user": "spotguard",
            "namespace": "default",
        }}],
        "current-context": "spotguard",
    });
    fs::write(path, serde_json::to_vec_pretty(&config).expect("json"))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

async fn create_namespace(client: &kube::Client, name: &str) -> Result<(), String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("a namespace object");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|e| format!("creating namespace {name}: {e}"))?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if accounts
            .get_opt("default")
            .await
            .map_err(|e| format!("reading ServiceAccount {name}/default: {e}"))?
            .is_some()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the ServiceAccount {name}/default did not appear within 60 s (is the \
                 controller manager's serviceaccount controller running?)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).expect("random bytes");
    buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

/// The DER of every certificate in a PEM bundle.
fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            if let Some(b64) = body.take() {
                if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64) {
                    out.push(der);
                }
            }
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    out
}

/// The service-account key pair, as `(private PKCS#8 PEM, public SPKI PEM)`: ECDSA P-256, so
/// tokens are ES256.
fn service_account_key() -> Result<(String, String), String> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
        .map_err(|_| "generating the service-account key".to_string())?;
    let private = key
        .to_pkcs8v1()
        .map_err(|_| "encoding the service-account key".to_string())?;
    let public = key
        .public_key()
        .as_der()
        .map_err(|_| "encoding the service-account public key".to_string())?;
    Ok((
        pem("PRIVATE KEY", private.as_ref()),
        pem("PUBLIC KEY", public.as_ref()),
    ))
}

/// Start-up state: what has been started so far, for error messages.
struct Starting {
    dir: PathBuf,
    components: Vec<Supervised>,
}

impl Starting {
    fn spawn(&mut self, name: &str, args: Vec<String>) -> Result<(), String> {
        let program = find_bin(name)?;
        let child = Supervised::spawn(&self.dir, name, &program, &args)?;
        self.components.push(child);
        Ok(())
    }

    /// An error if a component has exited, with its log's tail.
    fn check_alive(&self) -> Result<(), String> {
        for c in &self.components {
            if let Some(status) = c.exited() {
                return Err(format!(
                    "the control plane did not start: {} exited ({status})\n--- last {} lines \
                     of {} ---\n{}",
                    c.name,
                    LOG_TAIL_LINES,
                    c.log.display(),
                    c.log_tail(LOG_TAIL_LINES),
                ));
            }
        }
        Ok(())
    }

    /// An error describing `what` went wrong, with the log tails of `suspects`.
    fn failure(&self, what: &str, suspects: &[&str]) -> String {
        if let Err(e) = self.check_alive() {
            return e;
        }
        let mut msg = format!("the control plane did not start: {what}");
        for c in self
            .components
            .iter()
            .filter(|c| suspects.contains(&c.name.as_str()))
        {
            let _ = write!(
                msg,
                "\n--- last {} lines of {} ---\n{}",
                LOG_TAIL_LINES,
                c.log.display(),
                c.log_tail(LOG_TAIL_LINES)
            );
        }
        msg
    }

    /// Waits (blocking) until `ready` returns true, checking every 50 ms that no component
    /// has exited.
    fn wait_blocking(
        &self,
        what: &str,
        suspects: &[&str],
        deadline: Instant,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        loop {
            self.check_alive()?;
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!("timed out waiting for {what}"), suspects));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn start() -> Result<ControlPlane, String> {
    let started_at = Instant::now();
    let deadline = started_at + STARTUP_TIMEOUT;
    for name in BINARIES {
        find_bin(name)?;
    }
    let dir = tempfile::Builder::new()
        .prefix("spotguard-control-plane-")
        .tempdir()
        .map_err(|e| format!("creating the control plane's folder: {e}"))?
        .keep();
    process::prepare(&dir)?;
    let keep = std::env::var_os(KEEP_DIR_ENV).is_some_and(|v| !v.is_empty());
    if keep {
        eprintln!(
            "spotguard-testkit-k8s: {KEEP_DIR_ENV} is set: {} stays after the tests",
            dir.display()
        );
    }
    let janitor = Janitor::spawn(&dir, keep)?;
    let path = |p: &str| dir.join(p).to_string_lossy().into_owned();

    let (sa_private, sa_public) = service_account_key()?;
    fs::write(dir.join("sa.key"), sa_private).map_err(|e| format!("writing sa.key: {e}"))?;
    fs::write(dir.join("sa.pub"), sa_public).map_err(|e| format!("writing sa.pub: {e}"))?;
    let admin_token = random_hex(24);
    fs::write(
        dir.join("tokens.csv"),
        format!("{admin_token},{ADMIN_USER},{ADMIN_USER},system:masters\n"),
    )
    .map_err(|e| format!("writing tokens.csv: {e}"))?;

    let etcd_port = free_port()?;
    let etcd_peer_port = free_port()?;
    let api_port = free_port()?;
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
    let server_url = format!("https://127.0.0.1:{api_port}");

    let mut st = Starting {
        dir: dir.clone(),
        components: Vec::new(),
    };
    st.spawn(
        "etcd",
        vec![
            "--name=spotguard".into(),
            format!("--data-dir={}", path("etcd")),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={etcd_peer_url}"),
            format!("--initial-advertise-peer-urls={etcd_peer_url}"),
            format!("--initial-cluster=spotguard={etcd_peer_url}"),
            "--initial-cluster-state=new".into(),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
    )?;
    let cert_dir = dir.join("apiserver");
    st.spawn(
        "kube-apiserver",
        vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", cert_dir.display()),
            format!("--token-auth-file={}", path("tokens.csv")),
            "--authorization-mode=Node,RBAC".into(),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", path("sa.pub")),
            format!("--service-account-signing-key-file={}", path("sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            // Throughput on small machines, as kwok's own clusters run.
            "--enable-priority-and-fairness=false".into(),
            "--max-requests-inflight=0".into(),
            "--max-mutating-requests-inflight=0".into(),
            // No kubelet serves the `kubernetes` Service's endpoints; the API server would
            // otherwise keep trying to publish its loopback address there.
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ],
    )?;

    // The API server writes its self-signed serving certificate (and its CA) before serving.
    let crt = cert_dir.join("apiserver.crt");
    let key = cert_dir.join("apiserver.key");
    st.wait_blocking(
        "the API server's serving certificate",
        &["kube-apiserver"],
        deadline,
        || crt.is_file() && key.is_file(),
    )?;
    let mut ca_pem = String::new();
    st.wait_blocking(
        "a readable serving certificate",
        &["kube-apiserver"],
        deadline,
        || {
            ca_pem = fs::read_to_string(&crt).unwrap_or_default();
            !pem_certificates(&ca_pem).is_empty() && ca_pem.trim_end().ends_with("-----")
        },
    )?;
    // apiserver.crt holds the serving certificate followed by the CA that signed it: clients
    // (and the controller manager's --root-ca-file, published as kube-root-ca.crt and as a
    // ClusterTrustBundle) get the CA alone.
    let ca_der: Vec<Vec<u8>> = pem_certificates(&ca_pem).pop().into_iter().collect();
    let ca_pem = pem("CERTIFICATE", &ca_der[0]);
    let ca_path = dir.join("ca.crt");
    fs::write(&ca_path, &ca_pem).map_err(|e| format!("writing ca.crt: {e}"))?;
    let kubeconfig = dir.join("admin.kubeconfig");
    write_kubeconfig(&kubeconfig, &server_url, &ca_path, &admin_token)?;

    st.spawn(
        "kube-controller-manager",
        vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            "--controllers=*".into(),
            format!("--service-account-private-key-file={}", path("sa.key")),
            format!("--root-ca-file={}", ca_path.display()),
            "--use-service-account-credentials=false".into(),
            "--kube-api-qps=1000".into(),
            "--kube-api-burst=1000".into(),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
            "--cluster-name=spotguard".into(),
        ],
    )?;
    let scheduler_config = dir.join("kube-scheduler.yaml");
    fs::write(
        &scheduler_config,
        serde_json::to_vec_pretty(&json!({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {
                "kubeconfig": kubeconfig,
                "qps": 1000,
                "burst": 1000,
            },
            "leaderElection": {"leaderElect": false},
        }))
        .expect("json"),
    )
    .map_err(|e| format!("writing the scheduler's configuration: {e}"))?;
    st.spawn(
        "kube-scheduler",
        vec![
            format!("--config={}", scheduler_config.display()),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            "--profiling=false".into(),
        ],
    )?;
    let kwok_config = dir.join("kwok.yaml");
    fs::write(&kwok_config, KWOK_STAGES).map_err(|e| format!("writing kwok.yaml: {e}"))?;
    let (annotation, value) = KWOK_NODE_ANNOTATION;
    st.spawn(
        "kwok",
        vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--config={}", kwok_config.display()),
            "--manage-all-nodes=false".into(),
            format!("--manage-nodes-with-annotation-selector={annotation}={value}"),
            // Pod IPs (status only: nothing listens on them).
            "--cidr=10.128.0.0/12".into(),
            "--node-ip=10.127.0.1".into(),
            "--node-lease-duration-seconds=40".into(),
        ],
    )?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building a tokio runtime: {e}"))?;
    runtime.block_on(wait_ready(
        &st,
        &server_url,
        &ca_der,
        &admin_token,
        deadline,
    ))?;
    drop(runtime);

    Ok(ControlPlane {
        dir,
        server_url,
        ca_pem,
        ca_der,
        ca_path,
        admin_token,
        kubeconfig,
        startup_time: started_at.elapsed(),
        components: st.components,
        _janitor: janitor,
    })
}

/// Polls `step` every 50 ms until it returns `Ok(Some(_))`; an `Err` from it is kept as the
/// last error and polling goes on, until `deadline` or a component exits.
async fn poll<T, F, Fut>(
    st: &Starting,
    what: &str,
    suspects: &[&str],
    deadline: Instant,
    mut step: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let mut last = String::new();
    loop {
        st.check_alive()?;
        match step().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            let detail = if last.is_empty() {
                String::new()
            } else {
                format!(" (last error: {last})")
            };
            return Err(st.failure(&format!("timed out waiting for {what}{detail}"), suspects));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_ready(
    st: &Starting,
    server_url: &str,
    ca_der: &[Vec<u8>],
    token: &str,
    deadline: Instant,
) -> Result<(), String> {
    let mut config = config_for(server_url, ca_der, token);
    config.default_retry = false;
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(10));
    let client =
        kube::Client::try_from(config).map_err(|e| format!("building the admin client: {e}"))?;

    poll(
        st,
        "the API server's /readyz",
        &["kube-apiserver", "etcd"],
        deadline,
        || async {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a request");
            match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => Ok(Some(())),
                Ok(body) => Err(format!("/readyz answered {body}")),
                Err(e) => Err(format!("/readyz: {e}")),
            }
        },
    )
    .await?;

    // The controller manager's serviceaccount controller creates `default` in every namespace.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    poll(
        st,
        "the ServiceAccount default/default (created by the controller manager)",
        &["kube-controller-manager"],
        deadline,
        || async {
            accounts
                .get_opt("default")
                .await
                .map(|sa| sa.map(|_| ()))
                .map_err(|e| e.to_string())
        },
    )
    .await?;

    // A smoke pod on a kwok node of its own (tainted, so no test's pod lands there) shows the
    // scheduler and kwok at work.
    let smoke = format!("spotguard-testkit-smoke-{}", std::process::id());
    create_namespace(&client, &smoke).await?;
    let taint_key = "spotguard.dev/testkit-smoke";
    let node = NodeBuilder::new(&smoke).taint(taint_key, "", "NoSchedule");
    node.create_checked(&client, deadline)
        .await
        .map_err(|e| st.failure(&e, &["kwok", "kube-controller-manager"]))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &smoke);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "smoke"},
        "spec": {
            "containers": [{"name": "smoke", "image": "registry.invalid/smoke:1"}],
            "tolerations": [{"key": taint_key, "operator": "Exists"}],
            "nodeSelector": {"kubernetes.io/hostname": smoke},
        }
    }))
    .expect("a pod object");
    pods.create(&PostParams::default(), &pod)
        .await
        .map_err(|e| format!("creating the smoke pod: {e}"))?;
    poll(
        st,
        "the smoke pod to be scheduled and Ready",
        &["kube-scheduler", "kwok"],
        deadline,
        || async {
            let pod = pods.get("smoke").await.map_err(|e| e.to_string())?;
            Ok(node::pod_is_ready(&pod).then_some(()))
        },
    )
    .await?;
    pods.delete("smoke", &DeleteParams::default())
        .await
        .map_err(|e| format!("deleting the smoke pod: {e}"))?;
    poll(
        st,
        "the smoke pod's graceful deletion (by kwok)",
        &["kwok"],
        deadline,
        || async {
            let pod = pods.get_opt("smoke").await.map_err(|e| e.to_string())?;
            Ok(pod.is_none().then_some(()))
        },
    )
    .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .delete(&smoke, &DeleteParams::default())
        .await
        .map_err(|e| format!("deleting the smoke node: {e}"))?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&smoke, &DeleteParams::default())
        .await
        .map_err(|e| format!("deleting the smoke namespace: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_and_distinct() {
        let a = unique_name("Drain_Test");
        let b = unique_name("Drain_Test");
        assert_ne!(a, b);
        assert!(a.starts_with("drain-test-"), "{a}");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert!(unique_name(&"x".repeat(100)).len() <= 63);
        assert!(unique_name("--").starts_with("t-"));
    }

    #[test]
    fn pem_round_trip() {
        let der = vec![1u8, 2, 3, 250, 251, 252];
        let text = pem("CERTIFICATE", &der);
        assert_eq!(pem_certificates(&text), vec![der]);
    }

    #[test]
    fn service_account_keys_are_pem() {
        let (private, public) = service_account_key().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }

    #[test]
    fn missing_binary_names_the_build_command() {
        let err = find_bin("no-such-binary").unwrap_err();
        assert!(err.contains(BUILD_COMMAND), "{err}");
    }
}
