//! The test kit's control plane does what Spot Guard's tests rely on: scheduling onto kwok
//! nodes, PodDisruptionBudgets computed by the disruption controller, the eviction API
//! answering from them, graceful deletion and ReplicaSets replacing evicted pods, RBAC for
//! ServiceAccount tokens, and kubectl and helm of the same release.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use spotguard_testkit_k8s::{eventually, pod_is_ready, unique_name, ControlPlane, NodeBuilder};

const WAIT: Duration = Duration::from_secs(60);

/// Two fresh kwok nodes carrying a label unique to this test, so that workloads can be pinned
/// to them with a node selector.
async fn two_nodes(cp: &ControlPlane, pool: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..2 {
        let name = unique_name(&format!("{pool}-node"));
        let builder = NodeBuilder::new(&name)
            .label("spotguard.dev/test-pool", pool)
            .provider_id(&format!("aws:///us-east-1a/i-{:017x}", 0xabc0 + i))
            .cpu("2")
            .memory("8Gi")
            .pods(20);
        nodes.push(cp.create_node(&builder).await);
    }
    nodes
}

fn deployment(name: &str, pool: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"spotguard.dev/test-pool": pool},
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "app",
                        "image": "registry.invalid/app:1",
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                    }],
                },
            },
        },
    }))
    .expect("a Deployment")
}

async fn ready_pods(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("listing pods")
        .items
        .into_iter()
        .filter(pod_is_ready)
        .collect()
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

#[tokio::test]
async fn a_deployment_is_scheduled_on_kwok_nodes_and_becomes_ready() {
    let cp = ControlPlane::shared();
    let client = cp.admin_client();
    let ns = cp.create_namespace("deploy").await;
    let pool = ns.clone();
    let nodes = two_nodes(cp, &pool).await;
    let node_names: BTreeSet<String> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deployment("web", &pool, 3))
        .await
        .expect("creating the Deployment");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let ready = eventually(WAIT, "3 Ready pods of web", || async {
        let ready = ready_pods(&pods, "web").await;
        (ready.len() == 3).then_some(ready)
    })
    .await;
    for pod in &ready {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        assert!(
            node.as_ref().is_some_and(|n| node_names.contains(n)),
            "pod {:?} on {node:?}, not on {node_names:?}",
            pod.metadata.name
        );
        let status = pod.status.as_ref().expect("status");
        assert!(status.pod_ip.is_some(), "kwok gives each pod an IP");
    }
    eventually(WAIT, "the Deployment's status to count 3 ready", || async {
        let d = deployments
            .get("web")
            .await
            .expect("reading the Deployment");
        (d.status.and_then(|s| s.ready_replicas) == Some(3)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn evictions_follow_the_disruption_budget_and_replicasets_replace_evicted_pods() {
    let cp = ControlPlane::shared();
    let client = cp.admin_client();
    let ns = cp.create_namespace("evict").await;
    let pool = ns.clone();
    two_nodes(cp, &pool).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deployment("db", &pool, 2))
        .await
        .expect("creating the Deployment");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "2 Ready pods of db", || async {
        (ready_pods(&pods, "db").await.len() == 2).then_some(())
    })
    .await;

    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "db"}}},
    }))
    .expect("a PDB");
    budgets
        .create(&PostParams::default(), &pdb)
        .await
        .expect("creating the PDB");
    let allowed = |want: i32| {
        let budgets = budgets.clone();
        async move {
            let pdb = budgets.get("db").await.expect("reading the PDB");
            let generation = pdb.metadata.generation;
            let status = pdb.status?;
            (status.observed_generation == generation
                && status.current_healthy == Some(2)
                && status.disruptions_allowed == Some(want))
            .then_some(status)
        }
    };
    let status = eventually(WAIT, "the disruption controller: 0 allowed", || allowed(0)).await;
    assert_eq!(status.desired_healthy, Some(2));
    assert_eq!(status.expected_pods, Some(2));

    // Without kube's retry layer, to see the API server's own answer.
    let mut config = cp.admin_config();
    config.default_retry = false;
    let direct: Api<Pod> = Api::namespaced(kube::Client::try_from(config).expect("client"), &ns);
    let victim = ready_pods(&pods, "db").await[0]
        .metadata
        .name
        .clone()
        .expect("name");
    match direct.evict(&victim, &EvictParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 429, "{status:?}");
            assert!(
                status.message.contains("disruption budget"),
                "{}",
                status.message
            );
        }
        other => panic!("an eviction the PDB forbids was answered {other:?}"),
    }
    assert!(pods
        .get(&victim)
        .await
        .expect("the pod")
        .metadata
        .deletion_timestamp
        .is_none());

    budgets
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"minAvailable": 1}})),
        )
        .await
        .expect("relaxing the PDB");
    eventually(WAIT, "the disruption controller: 1 allowed", || allowed(1)).await;
    let before = names(&ready_pods(&pods, "db").await);

    direct
        .evict(&victim, &EvictParams::default())
        .await
        .expect("an eviction the PDB allows");
    // Graceful deletion: kwok, as the kubelet, completes it.
    eventually(WAIT, "the evicted pod to be gone", || async {
        pods.get_opt(&victim)
            .await
            .expect("reading the pod")
            .is_none()
            .then_some(())
    })
    .await;
    let after = eventually(WAIT, "a replacement pod, Ready", || async {
        let ready = names(&ready_pods(&pods, "db").await);
        (ready.len() == 2 && !ready.contains(&victim)).then_some(ready)
    })
    .await;
    assert_eq!(
        after.difference(&before).count(),
        1,
        "{before:?} → {after:?}"
    );
    eventually(WAIT, "the PDB to allow 1 again", || allowed(1)).await;
}

#[tokio::test]
async fn a_service_account_token_is_authenticated_and_limited_by_rbac() {
    let cp = ControlPlane::shared();
    let client = cp.admin_client();
    let ns = cp.create_namespace("rbac").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "agent"}})).expect("an SA");
    accounts
        .create(&PostParams::default(), &sa)
        .await
        .expect("creating the ServiceAccount");
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {"expirationSeconds": 3600, "audiences": []},
    }))
    .expect("a TokenRequest");
    let token = accounts
        .create_token_request("agent", &PostParams::default(), &request)
        .await
        .expect("a token")
        .status
        .expect("a token status")
        .token
        .expect("a token");

    let as_agent = cp.client_for_token(&token);
    let nodes: Api<Node> = Api::all(as_agent.clone());
    match nodes.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status
                    .message
                    .contains(&format!("system:serviceaccount:{ns}:agent")),
                "{}",
                status.message
            );
        }
        other => panic!("listing nodes without RBAC was answered {other:?}"),
    }

    // kubectl with a kubeconfig for that token agrees.
    let kubeconfig = cp.write_kubeconfig(&token);
    let out = cp
        .kubectl()
        .env("KUBECONFIG", &kubeconfig)
        .args(["get", "pods", "-n", &ns])
        .output()
        .expect("running kubectl");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Forbidden"), "{stderr}");

    // Granting a Role changes the answer.
    let rbac = json!([
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pod-reader", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "agent-reads-pods", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}],
        },
    ]);
    for object in rbac.as_array().expect("array") {
        let mut apply = cp.kubectl();
        apply.args(["apply", "-f", "-"]);
        let out = run_with_stdin(apply, &object.to_string());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pods: Api<Pod> = Api::namespaced(as_agent, &ns);
    eventually(WAIT, "the RoleBinding to take effect", || async {
        pods.list(&ListParams::default()).await.ok().map(|_| ())
    })
    .await;
}

fn run_with_stdin(mut cmd: std::process::Command, input: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing stdin");
    child.wait_with_output().expect("waiting")
}

#[tokio::test]
async fn kubectl_and_helm_are_of_the_same_release_as_the_server() {
    let cp = ControlPlane::shared();
    let out = succeed(cp.kubectl().args(["version", "-o", "json"]));
    let version: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        version["clientVersion"]["gitVersion"], "v1.37.2",
        "{version}"
    );
    assert_eq!(
        version["serverVersion"]["gitVersion"], "v1.37.2",
        "{version}"
    );
    assert_eq!(version["serverVersion"]["minor"], "37", "{version}");

    let out = succeed(cp.helm().args(["version", "--short"]));
    assert!(out.starts_with("v3."), "{out}");
    succeed(cp.helm().args(["list", "-A"]));
}

/// Runs the command, which must succeed; its standard output.
fn succeed(command: &mut std::process::Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_control_plane_starts_within_seconds() {
    let cp = ControlPlane::shared();
    eprintln!(
        "control plane at {} started in {:?}",
        cp.server_url(),
        cp.startup_time()
    );
    assert!(cp.startup_time() < Duration::from_secs(60));
    assert!(
        cp.exited_component().is_none(),
        "{:?}",
        cp.exited_component()
    );
    assert!(cp.ca_pem().contains("BEGIN CERTIFICATE"));
}
