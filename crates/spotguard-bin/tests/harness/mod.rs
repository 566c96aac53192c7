//! The world the real `spotguard` binary runs in during end-to-end tests: moto behind the
//! fault proxy, the real Kubernetes control plane of the test kit (etcd, kube-apiserver,
//! controller manager, scheduler, kwok nodes), local IMDS servers, and a bridge that plays the
//! cloud's node lifecycle: it registers a kwok Node (`providerID: aws:///<zone>/<instance-id>`)
//! for every InService instance of the groups and deletes it once the instance has left.
//!
//! The daemon talks to the API server through an [`ApiFaultProxy`] per role (so the requests of
//! agents and controllers are told apart), as the chart's own ServiceAccounts: the chart's RBAC
//! is rendered with the real `helm template` and applied for each world, and every process runs
//! with a token of its role's ServiceAccount, never as an administrator. The test itself reads
//! and writes as the administrator, directly.
//!
//! Each world has its own namespace (ledger, Leases, RBAC, workloads) and its nodes carry a
//! pool label its workloads select, so the tests of one binary share the control plane without
//! touching each other's objects.
//!
//! Everything fails loudly when a tool is missing (moto, `aws`, the control-plane binaries):
//! these tests are never skipped.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};
use spotguard_core::ledger::{EntryState, Ledger};
use spotguard_core::model::Group;
use spotguard_testkit_aws::{free_port, FaultProxy, GroupSpec, ImdsServer, MotoServer};
use spotguard_testkit_k8s::{
    node_is_ready, pod_is_ready, unique_name, ApiFaultProxy, ControlPlane, NodeBuilder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

pub mod chart;
pub mod webhook;

/// The spot group of the tests.
pub const SPOT: &str = "web-spot";
/// The on-demand group of the tests.
pub const ON_DEMAND: &str = "web-od";
/// The ledger ConfigMap (the chart's default name).
pub const LEDGER: &str = "spotguard-ledger";
/// The controllers' leader Lease (the chart's default name).
pub const LEADER_LEASE: &str = "spotguard-controller";
/// The label of a world's nodes that its workloads select (value: the world's namespace).
pub const POOL_LABEL: &str = "spotguard.dev/test-pool";
/// Availability zone of the nodes the bridge registers.
pub const ZONE: &str = "us-east-1a";
/// Credentials moto accepts (it checks none).
pub const AWS_ENV: [(&str, &str); 6] = [
    ("AWS_ACCESS_KEY_ID", "AKIDSPOTGUARDTEST"),
    ("AWS_SECRET_ACCESS_KEY", "spotguard-test-secret"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_PAGER", ""),
];

/// How a role reaches the API server: its proxy and a kubeconfig with its token.
pub struct Access {
    /// The proxy in front of the API server (its request log is this role's).
    pub api: ApiFaultProxy,
    /// A kubeconfig for the proxy with the role's ServiceAccount token.
    pub kubeconfig: PathBuf,
    /// The ServiceAccount.
    pub account: String,
}

/// The servers, the scratch directory and the bridge.
pub struct World {
    /// moto.
    pub moto: Arc<MotoServer>,
    /// The proxy the daemon talks to.
    pub proxy: FaultProxy,
    /// The control plane of this test binary.
    pub cp: &'static ControlPlane,
    /// The namespace of this world: the ledger, the Leases, the chart's RBAC, the workloads.
    pub namespace: String,
    /// The Helm release name the chart's RBAC was rendered with.
    pub release: String,
    /// The agents' way in.
    pub agent: Access,
    /// The controllers' way in (also of `--role all`).
    pub controller: Access,
    /// Scratch directory: configuration, logs, state files.
    pub dir: tempfile::TempDir,
    departed: Departed,
    bridge: JoinHandle<()>,
}

/// The last state of every node the bridge deleted, by name.
type Departed = Arc<std::sync::Mutex<std::collections::BTreeMap<String, Node>>>;

impl Drop for World {
    fn drop(&mut self) {
        self.bridge.abort();
    }
}

/// Node name of an instance.
pub fn node_name(instance: &str) -> String {
    format!("node-{instance}")
}

/// Waits, polling every 100ms, until `check` holds; panics after `limit`, naming `what`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    spotguard_testkit_k8s::eventually(limit, what, || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await
}

impl World {
    /// Starts everything and creates the groups (spot groups first in `specs`).
    pub async fn start(specs: &[GroupSpec]) -> World {
        let cp = ControlPlane::shared();
        let moto = Arc::new(MotoServer::start().await);
        let proxy = FaultProxy::start(&moto.url()).await;
        moto.create_groups(specs).await;
        let namespace = cp.create_namespace("spotguard").await;
        let release = unique_name("sg");
        install_access(cp, &release, &namespace).await;
        agent_daemon_set(cp, &namespace, &format!("{release}-agent")).await;
        let agent = Access::start(cp, &namespace, &format!("{release}-agent")).await;
        let controller = Access::start(cp, &namespace, &format!("{release}-controller")).await;
        let groups: Vec<(String, &'static str)> = specs
            .iter()
            .map(|s| {
                let capacity = match s.capacity {
                    spotguard_testkit_aws::Capacity::Spot => "SPOT",
                    spotguard_testkit_aws::Capacity::OnDemand => "ON_DEMAND",
                };
                (s.name.clone(), capacity)
            })
            .collect();
        let departed = Departed::default();
        let bridge = tokio::spawn(bridge(
            moto.clone(),
            cp,
            namespace.clone(),
            groups,
            departed.clone(),
        ));
        let world = World {
            moto,
            proxy,
            cp,
            namespace,
            release,
            agent,
            controller,
            dir: tempfile::tempdir().expect("scratch directory"),
            departed,
            bridge,
        };
        // Every instance there now has its Ready node before a test starts.
        for spec in specs {
            for id in world.group(&spec.name).await.instance_ids() {
                let name = node_name(&id);
                eventually(
                    &format!("node {name} Ready"),
                    Duration::from_secs(60),
                    || async { world.node(&name).await.is_some_and(|n| node_is_ready(&n)) },
                )
                .await;
            }
        }
        world
    }

    /// A new admin client.
    pub fn admin(&self) -> kube::Client {
        self.cp.admin_client()
    }

    /// The group as moto has it.
    pub async fn group(&self, name: &str) -> Group {
        self.moto.group(name).await
    }

    /// Instance ids of a group, sorted.
    pub async fn instances(&self, name: &str) -> BTreeSet<String> {
        self.group(name).await.instance_ids().into_iter().collect()
    }

    /// The node object, if registered.
    pub async fn node(&self, name: &str) -> Option<Node> {
        Api::<Node>::all(self.admin())
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading node {name}: {e}"))
    }

    /// The node as it is, or as it was when the bridge deleted it (its instance gone).
    pub async fn node_last_seen(&self, name: &str) -> Option<Node> {
        match self.node(name).await {
            Some(node) => Some(node),
            None => self.departed.lock().unwrap().get(name).cloned(),
        }
    }

    /// The ledger as stored in its ConfigMap (empty when there is none yet).
    pub async fn ledger(&self) -> Ledger {
        self.configmap(LEDGER)
            .await
            .and_then(|cm| cm.data.and_then(|mut d| d.remove("ledger.json")))
            .map(|text| serde_json::from_str(&text).expect("ledger JSON"))
            .unwrap_or_default()
    }

    /// A ConfigMap of this world's namespace.
    pub async fn configmap(&self, name: &str) -> Option<ConfigMap> {
        Api::<ConfigMap>::namespaced(self.admin(), &self.namespace)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading ConfigMap {name}: {e}"))
    }

    /// A Lease of this world's namespace.
    pub async fn lease(&self, name: &str) -> Option<Lease> {
        Api::<Lease>::namespaced(self.admin(), &self.namespace)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading Lease {name}: {e}"))
    }

    /// Every Lease of this world's namespace.
    pub async fn leases(&self) -> Vec<Lease> {
        Api::<Lease>::namespaced(self.admin(), &self.namespace)
            .list(&ListParams::default())
            .await
            .expect("listing Leases")
            .items
    }

    /// The pods bound to `node` (any phase, terminating ones too).
    pub async fn pods_on(&self, node: &str) -> Vec<Pod> {
        Api::<Pod>::all(self.admin())
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .expect("listing pods")
            .items
    }

    /// The pods on `node` but the agent's (a DaemonSet pod, which a drain leaves).
    pub async fn app_pods_on(&self, node: &str) -> Vec<Pod> {
        let mut pods = self.pods_on(node).await;
        pods.retain(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .all(|o| o.kind != "DaemonSet")
        });
        pods
    }

    /// The pods of this world labelled `app=<app>`.
    pub async fn app_pods(&self, app: &str) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.admin(), &self.namespace)
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .expect("listing pods")
            .items
    }

    /// Events (events.k8s.io) about `node`: `(reason, note)`.
    pub async fn node_events(&self, node: &str) -> Vec<(String, String)> {
        Api::<Event>::namespaced(self.admin(), "default")
            .list(&ListParams::default().fields(&format!("regarding.name={node}")))
            .await
            .expect("listing Events")
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// `count` Running and Ready pods of app `app` on `node`, owned by a ReplicaSet of their
    /// own that takes them over (so an evicted one is recreated, and scheduled on another node
    /// of the world).
    pub async fn add_pods(&self, app: &str, node: &str, count: usize) {
        let set = unique_name(&format!("{app}-{node}"));
        let labels = json!({"app": app, "set": set});
        for i in 0..count {
            let mut pod = pod_spec(&self.namespace);
            pod["metadata"] = json!({"name": format!("{set}-{i}"), "labels": labels});
            pod["spec"]["nodeName"] = json!(node);
            self.cp.create_in::<Pod>(&self.namespace, pod).await;
        }
        let set_pods = || async {
            Api::<Pod>::namespaced(self.admin(), &self.namespace)
                .list(&ListParams::default().labels(&format!("set={set}")))
                .await
                .expect("listing pods")
                .items
        };
        eventually(
            &format!("{count} pods of {set} Ready"),
            Duration::from_secs(60),
            || async { set_pods().await.iter().filter(|p| pod_is_ready(p)).count() == count },
        )
        .await;
        let mut template = pod_spec(&self.namespace);
        template["metadata"] = json!({"labels": labels});
        template["spec"]["nodeSelector"] = json!({POOL_LABEL: self.namespace});
        self.cp
            .create_in::<k8s_openapi::api::apps::v1::ReplicaSet>(
                &self.namespace,
                json!({
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "metadata": {"name": set, "labels": labels},
                    "spec": {
                        "replicas": count,
                        "selector": {"matchLabels": {"set": set}},
                        "template": template,
                    },
                }),
            )
            .await;
        eventually(
            &format!("the pods of {set} adopted"),
            Duration::from_secs(60),
            || async {
                let pods = set_pods().await;
                pods.len() == count
                    && pods.iter().all(|p| {
                        p.metadata.owner_references.as_ref().is_some_and(|o| {
                            o.iter().any(|o| o.kind == "ReplicaSet" && o.name == set)
                        })
                    })
            },
        )
        .await;
    }

    /// Pods `names` of app `app` on `node`, owned by a `Database` of the world's namespace: a
    /// custom resource whose operator is not running, so nothing recreates an evicted one (as
    /// with any operator while it is down).
    pub async fn add_database_pods(&self, app: &str, node: &str, names: &[&str]) {
        let owner = database(self.cp, &self.namespace, app).await;
        for name in names {
            let mut pod = pod_spec(&self.namespace);
            pod["metadata"] = json!({
                "name": name,
                "labels": {"app": app},
                "ownerReferences": [owner],
            });
            pod["spec"]["nodeName"] = json!(node);
            self.cp.create_in::<Pod>(&self.namespace, pod).await;
        }
        eventually(
            &format!("the {app} pods Ready"),
            Duration::from_secs(60),
            || async {
                let pods = self.app_pods(app).await;
                names.iter().all(|n| {
                    pods.iter()
                        .any(|p| p.metadata.name.as_deref() == Some(*n) && pod_is_ready(p))
                })
            },
        )
        .await;
    }

    /// A PodDisruptionBudget over app `app` keeping `min_available` pods, once the disruption
    /// controller has computed its status.
    pub async fn add_pdb(&self, app: &str, min_available: i32) {
        use k8s_openapi::api::policy::v1::PodDisruptionBudget;
        self.cp.create_in::<PodDisruptionBudget>(&self.namespace, json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": app},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
        }))
        .await;
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(self.admin(), &self.namespace);
        eventually(
            &format!("the status of PDB {app}"),
            Duration::from_secs(60),
            || async {
                pdbs.get(app).await.ok().is_some_and(|p| {
                    p.status.is_some_and(|s| {
                        s.observed_generation.is_some() && s.current_healthy >= Some(min_available)
                    })
                })
            },
        )
        .await;
    }

    /// Waits until the group satisfies `check`.
    pub async fn group_until(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        check: impl Fn(&Group) -> bool,
    ) -> Group {
        let started = Instant::now();
        loop {
            let group = self.group(name).await;
            if check(&group) {
                return group;
            }
            assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; {name} is {group:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes the shared configuration file and returns its path. `extra` is appended to
    /// the `[daemon]` table. Its kubeconfig is the controller's; [`World::spawn`] gives each
    /// process its own role's on the command line.
    pub fn config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("spotguard.toml");
        let text = format!(
            r#"groups = [{{ spot = "{SPOT}", on_demand = "{ON_DEMAND}" }}]

[timings]
imds_poll = "200ms"
asg_poll = "200ms"
scale_up_timeout = "30s"
monitor_interval = "500ms"
stability = "1s"
error_window = "2s"
cleanup_interval = "1m"

[drain]
timeout = "30s"

[daemon]
namespace = "{namespace}"
aws_endpoint = "{aws}"
aws_region = "us-east-1"
aws_max_attempts = 2
kubeconfig = "{kubeconfig}"
lease_duration = "3s"
shutdown_timeout = "5s"
startup_timeout = "20s"
log_level = "info"
{extra}
"#,
            namespace = self.namespace,
            aws = self.proxy.url(),
            kubeconfig = self.controller.kubeconfig.display(),
        );
        std::fs::write(&path, text).expect("write configuration");
        path
    }

    /// How `role` reaches the API server.
    pub fn access(&self, role: &str) -> &Access {
        match role {
            "agent" => &self.agent,
            _ => &self.controller,
        }
    }

    /// A kubeconfig for the agent of `node`, through the agents' proxy, with the token of the
    /// pod the world's agent DaemonSet runs on that node: it carries the node-name claim the
    /// chart's node policy checks, as the kubelet-mounted token of the real agent does.
    pub async fn agent_kubeconfig(&self, node: &str) -> PathBuf {
        let pods: Api<Pod> = Api::namespaced(self.admin(), &self.namespace);
        let selector = ListParams::default()
            .labels(&format!("app={AGENT_APP}"))
            .fields(&format!("spec.nodeName={node}"));
        let pod = spotguard_testkit_k8s::eventually(
            Duration::from_secs(60),
            &format!("the agent pod on {node}"),
            || async {
                let listed = pods.list(&selector).await.ok()?;
                listed.items.into_iter().find_map(|p| p.metadata.name)
            },
        )
        .await;
        let token = self
            .cp
            .pod_service_account_token(&self.namespace, &self.agent.account, &pod)
            .await;
        self.cp.write_kubeconfig_for(&self.agent.api.url(), &token)
    }

    /// Starts `spotguard run --config <config> --role <role>` with `args`, as its role's
    /// ServiceAccount. An agent gets `imds`'s endpoint, a state file, its node (`--node-name`
    /// in `args`, else the node of `imds`'s instance, passed as the chart does), the token of
    /// that node's agent pod and no AWS credentials at all; the other roles get moto's.
    pub async fn spawn(
        &self,
        name: &str,
        role: &str,
        imds: Option<&ImdsServer>,
        args: &[&str],
    ) -> Daemon {
        let config = self.dir.path().join("spotguard.toml");
        assert!(config.exists(), "write the configuration first");
        let port = free_port();
        let log = self.dir.path().join(format!("{name}.log"));
        // An agent is told its node, as the chart does from spec.nodeName.
        let named = args
            .iter()
            .position(|a| *a == "--node-name")
            .map(|i| args[i + 1].to_string());
        let agent_node = (role == "agent").then(|| {
            named
                .clone()
                .or_else(|| imds.map(|i| node_name(&i.instance_id())))
                .expect("an agent runs on a node: --node-name or an IMDS server")
        });
        let kubeconfig = match &agent_node {
            Some(node) => self.agent_kubeconfig(node).await,
            None => self.access(role).kubeconfig.clone(),
        };
        let mut command = Command::new(daemon_binary());
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--role", role])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(args);
        if let (Some(node), None) = (&agent_node, &named) {
            command.args(["--node-name", node]);
        }
        if let Some(imds) = imds {
            command
                .args(["--imds-endpoint", &imds.url()])
                .arg("--notice-state-file")
                .arg(self.dir.path().join(format!("{name}-notices.json")));
        }
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            command.env_remove(key);
        }
        if role != "agent" {
            command.envs(AWS_ENV);
        }
        Daemon::spawn(name, command, log, port)
    }

    /// `aws autoscaling <args>` against moto directly, as JSON (`null` when it prints nothing).
    pub async fn aws(&self, args: &[&str]) -> Value {
        let out = Command::new("aws")
            .args([
                "--endpoint-url",
                &self.moto.url(),
                "--output",
                "json",
                "autoscaling",
            ])
            .args(args)
            .envs(AWS_ENV)
            .env("HOME", self.dir.path())
            .output()
            .await
            .unwrap_or_else(|e| {
                panic!("cannot run the aws CLI (install it with `pip install awscli`): {e}")
            });
        assert!(
            out.status.success(),
            "aws {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Value::Null; // an update prints nothing
        }
        serde_json::from_slice(&out.stdout).expect("aws prints JSON")
    }

    /// A group as the aws CLI describes it.
    pub async fn aws_group(&self, name: &str) -> Value {
        let out = self
            .aws(&[
                "describe-auto-scaling-groups",
                "--auto-scaling-group-names",
                name,
            ])
            .await;
        out["AutoScalingGroups"][0].clone()
    }

    /// `kubectl <args>` (the kubectl of the control plane's release, as the administrator), as
    /// JSON (`-o json` is added).
    pub async fn kubectl_json(&self, args: &[&str]) -> Value {
        let mut command = Command::from(self.cp.kubectl());
        let out = command
            .args(args)
            .args(["-o", "json"])
            .output()
            .await
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("kubectl prints JSON")
    }

    /// Every request of the daemons to the API server: `(method, path, status)`, agents' first.
    pub fn api_requests(&self) -> Vec<(String, String, u16)> {
        let mut all = self.agent.api.requests();
        all.extend(self.controller.api.requests());
        all
    }

    /// Requests of the daemons that change something (anything but GET).
    pub fn writes_to_kubernetes(&self) -> Vec<(String, String, u16)> {
        self.api_requests()
            .into_iter()
            .filter(|(method, _, _)| method != "GET")
            .collect()
    }
}

impl Access {
    async fn start(cp: &ControlPlane, namespace: &str, account: &str) -> Access {
        let api = ApiFaultProxy::start(cp).await;
        let token = cp.service_account_token(namespace, account).await;
        let kubeconfig = cp.write_kubeconfig_for(&api.url(), &token);
        Access {
            api,
            kubeconfig,
            account: account.to_string(),
        }
    }
}

/// Renders the chart's ServiceAccounts, RBAC and agents' node policy for `release` in
/// `namespace` with the real `helm template`, and applies them as the administrator.
pub async fn install_access(cp: &ControlPlane, release: &str, namespace: &str) {
    let mut template = Command::from(cp.helm());
    let out = template
        .args(["template", release])
        .arg(chart::chart_dir())
        .args(["--namespace", namespace])
        .args(["--show-only", "templates/rbac.yaml"])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/agent-node-policy.yaml"])
        .output()
        .await
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm template of the RBAC failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cp.apply(
        &String::from_utf8_lossy(&out.stdout),
        &[],
        "the chart's RBAC and node policy",
    );
}

/// The `app` label of the world's agent pods.
pub const AGENT_APP: &str = "spotguard-agent";

/// The agents' DaemonSet of a world, as the chart runs it: a pod as `account` on every spot
/// node of the world's pool (kwok runs them), whose tokens the agent processes use.
async fn agent_daemon_set(cp: &ControlPlane, namespace: &str, account: &str) {
    cp.create_in::<k8s_openapi::api::apps::v1::DaemonSet>(
        namespace,
        json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": AGENT_APP},
            "spec": {
                "selector": {"matchLabels": {"app": AGENT_APP}},
                "template": {
                    "metadata": {"labels": {"app": AGENT_APP}},
                    "spec": {
                        "serviceAccountName": account,
                        "nodeSelector": {
                            POOL_LABEL: namespace,
                            "eks.amazonaws.com/capacityType": "SPOT",
                        },
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "agent", "image": "registry.invalid/spotguard:1"}],
                    },
                },
            },
        }),
    )
    .await;
}

/// The pod every workload of the tests runs: small requests, a grace period its kwok kubelet
/// honours.
fn pod_spec(namespace: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "app",
                "image": "registry.invalid/app:1",
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            }],
        },
    })
}

/// The API group of the tests' `Database` custom resource.
const DATABASE_GROUP: &str = "testing.spotguard.dev";

/// Creates `Database` `name` in `namespace` (and its CustomResourceDefinition, once) and returns
/// a controller ownerReference to it.
async fn database(cp: &ControlPlane, namespace: &str, name: &str) -> Value {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let crds: Api<CustomResourceDefinition> = Api::all(cp.admin_client());
    let crd_name = format!("databases.{DATABASE_GROUP}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": DATABASE_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "databases", "singular": "database", "kind": "Database"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                }},
            }],
        },
    }))
    .expect("a CustomResourceDefinition");
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating the Database CustomResourceDefinition: {e}"),
    }
    let gvk = GroupVersionKind::gvk(DATABASE_GROUP, "v1", "Database");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "databases");
    let databases: Api<DynamicObject> =
        Api::namespaced_with(cp.admin_client(), namespace, &resource);
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{DATABASE_GROUP}/v1"),
        "kind": "Database",
        "metadata": {"name": name},
    }))
    .expect("a Database");
    let created = spotguard_testkit_k8s::eventually(
        Duration::from_secs(60),
        "the Database resource served",
        || async {
            match databases.create(&PostParams::default(), &object).await {
                Ok(created) => Some(created),
                Err(kube::Error::Api(e)) if e.code == 409 => Some(
                    databases
                        .get(name)
                        .await
                        .unwrap_or_else(|e| panic!("reading Database {namespace}/{name}: {e}")),
                ),
                Err(kube::Error::Api(e)) if e.code == 404 => None,
                Err(e) => panic!("creating Database {namespace}/{name}: {e}"),
            }
        },
    )
    .await;
    json!({
        "apiVersion": format!("{DATABASE_GROUP}/v1"),
        "kind": "Database",
        "name": name,
        "uid": created.metadata.uid,
        "controller": true,
    })
}

/// The cloud's node lifecycle: a kwok Node per InService instance of the groups (labelled with
/// its capacity type, the zone and the world's pool), deleted once the instance has left.
async fn bridge(
    moto: Arc<MotoServer>,
    cp: &'static ControlPlane,
    pool: String,
    groups: Vec<(String, &'static str)>,
    departed: Departed,
) {
    let nodes: Api<Node> = Api::all(cp.admin_client());
    let mut known: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut present = BTreeSet::new();
        for (group, capacity) in &groups {
            let g = moto.group(group).await;
            for i in g.instances.iter().filter(|i| i.is_serving()) {
                present.insert(i.id.clone());
                if known.contains(&i.id) {
                    continue;
                }
                let node = NodeBuilder::new(&node_name(&i.id))
                    .provider_id(&format!("aws:///{ZONE}/{}", i.id))
                    .label("eks.amazonaws.com/capacityType", capacity)
                    .label("topology.kubernetes.io/zone", ZONE)
                    .label(POOL_LABEL, &pool)
                    .build();
                match nodes.create(&PostParams::default(), &node).await {
                    Ok(_) => {
                        known.insert(i.id.clone());
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        known.insert(i.id.clone());
                    }
                    Err(e) => eprintln!("bridge: registering the node of {}: {e}", i.id),
                }
            }
        }
        for gone in known.difference(&present).cloned().collect::<Vec<_>>() {
            // Its last state first: the instance is gone, nothing writes to it any more.
            if let Ok(Some(node)) = nodes.get_opt(&node_name(&gone)).await {
                departed.lock().unwrap().insert(node_name(&gone), node);
            }
            match nodes
                .delete(&node_name(&gone), &DeleteParams::default())
                .await
            {
                Ok(_) => {
                    known.remove(&gone);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    known.remove(&gone);
                }
                Err(e) => eprintln!("bridge: deleting the node of {gone}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `spotguard` process; killed when dropped.
pub struct Daemon {
    /// Name in messages.
    pub name: String,
    child: Child,
    /// Its output (stdout and stderr).
    pub log: PathBuf,
    /// Port of its endpoints.
    pub port: u16,
}

impl Daemon {
    fn spawn(name: &str, mut command: Command, log: PathBuf, port: u16) -> Daemon {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = command
            .env("HOME", log.parent().expect("log directory"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("start the spotguard binary");
        Daemon {
            name: name.to_string(),
            child,
            log,
            port,
        }
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Waits until `/readyz` answers 200; panics (with the log) if it exits or takes too long.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Some((200, _)) = http_get(self.port, "/readyz").await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before it was ready:\n{}",
                    self.name,
                    self.output()
                );
            }
            assert!(
                started.elapsed() < limit,
                "{} not ready after {limit:?}:\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        match http_get(self.port, "/metrics").await {
            Some((200, body)) => body,
            other => panic!("{} /metrics answered {other:?}", self.name),
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Sends SIGKILL and reaps the process.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "{} still running after {limit:?}:\n{}",
                self.name,
                self.output()
            ),
        }
    }

    /// Panics with the log unless it is still running.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status}:\n{}", self.name, self.output());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failing test shows what the process logged.
        if std::thread::panicking() {
            eprintln!("----- {} output -----\n{}", self.name, self.output());
        }
    }
}

/// `GET path` on 127.0.0.1:port: status and body, `None` when nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Runs `spotguard <args>` to completion: status, stdout, stderr.
pub async fn run_cli(
    args: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> (ExitStatus, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(env!("CARGO_BIN_EXE_spotguard"))
            .args(args)
            .envs(AWS_ENV)
            .envs(env.iter().copied())
            .env("HOME", dir)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("spotguard finished within two minutes")
    .expect("run spotguard");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The standard groups: spot `web-spot` (3 instances) and on-demand `web-od` with one
/// baseline instance.
pub fn standard_groups() -> Vec<GroupSpec> {
    vec![
        GroupSpec::spot(SPOT, 0, 10, 3),
        GroupSpec::on_demand(ON_DEMAND, 0, 5, 1),
    ]
}

/// What phase 1 left behind after a notice whose spot launch failed.
#[derive(Debug)]
pub struct Fallback {
    /// The at-risk spot instance (gone now).
    pub at_risk: String,
    /// The on-demand instance that stood in.
    pub on_demand: String,
    /// Its ledger entry.
    pub entry: String,
}

/// Waits until the controller has given the fallback back: the on-demand group back to one
/// instance without the fallback one, and its ledger entry released.
pub async fn fallback_given_back(world: &World, fallback: &Fallback, what: &str) {
    world
        .group_until(ON_DEMAND, what, Duration::from_secs(90), |g| {
            g.desired == 1 && !g.holds(&fallback.on_demand)
        })
        .await;
    eventually(
        "the ledger entry released",
        Duration::from_secs(30),
        || async {
            world
                .ledger()
                .await
                .get(&fallback.entry)
                .is_some_and(|e| e.state == EntryState::Released)
        },
    )
    .await;
}

/// A rebalance notice for `at_risk` while spot launches fail: the agent raises the spot group,
/// sees the launch fail, falls back to on-demand, records it, drains the at-risk node and pays
/// the spot pre-scale back. Returns once all of that is visible in moto and the ledger.
pub async fn reach_fallback(world: &World, imds: &ImdsServer, at_risk: &str) -> Fallback {
    let spot_before = world.group(SPOT).await;
    let od_before = world.group(ON_DEMAND).await;
    // New spot instances stay Pending in every answer the daemon gets...
    world.proxy.delay_in_service(
        SPOT,
        &spot_before.instance_ids(),
        spotguard_testkit_aws::Until::Cleared,
    );
    imds.set_rebalance(
        &humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    );
    let limit = Duration::from_secs(90);
    world
        .group_until(SPOT, "the spot pre-scale", limit, |g| {
            g.desired == spot_before.desired + 1
        })
        .await;
    // ...and the launch fails, as when the pools have no spot capacity.
    world.proxy.add_failed_activity(
        SPOT,
        "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot \
         capacity available that matches your request. Launching EC2 instance failed.",
    );
    let before = od_before.instance_ids();
    // Raised, and the instance launched (moto may list the new desired capacity a moment
    // before the instance).
    let od = world
        .group_until(ON_DEMAND, "the on-demand fallback", limit, |g| {
            g.desired == od_before.desired + 1
                && g.instance_ids().iter().any(|i| !before.contains(i))
        })
        .await;
    let on_demand = od
        .instance_ids()
        .into_iter()
        .find(|i| !before.contains(i))
        .expect("moto launched the fallback instance");
    let entry = spotguard_testkit_k8s::eventually(
        limit,
        "the fallback recorded with its instance",
        || async {
            world
                .ledger()
                .await
                .entries
                .iter()
                .find(|e| {
                    e.kind == spotguard_core::ledger::EntryKind::Fallback
                        && e.instance.as_deref() == Some(on_demand.as_str())
                })
                .map(|e| e.id.clone())
        },
    )
    .await;
    world
        .group_until(SPOT, "the spot pre-scale paid back", limit, |g| {
            g.desired == spot_before.desired && !g.holds(at_risk)
        })
        .await;
    Fallback {
        at_risk: at_risk.to_string(),
        on_demand,
        entry,
    }
}

/// The daemon binary [`World::spawn`] runs: `SPOTGUARD_BENCH_BIN` when set (the benchmarks
/// measure the release build that ships; `benches/run.sh` sets it), else the one cargo built
/// for this test or benchmark.
pub fn daemon_binary() -> std::path::PathBuf {
    std::env::var_os("SPOTGUARD_BENCH_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_spotguard").into())
}
