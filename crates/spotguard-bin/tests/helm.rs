//! The Helm chart with the real `helm` and the real API server (Kubernetes v1.37.2, from the
//! control-plane test kit): `helm lint` passes, and every manifest `helm template` renders is
//! accepted by `kubectl apply --dry-run=server` — server-side schema validation, defaulting
//! and admission — with the default values, with every value changed
//! (`tests/data/values-non-default.yaml`), with the switches off
//! (`tests/data/values-switched-off.yaml`) and without controllers
//! (`tests/data/values-agents-only.yaml`). Together the files change every value `values.yaml`
//! documents. The chart's RBAC and node policy are then installed and tried with each role's
//! token.
#![cfg(feature = "daemon")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_norway::Value;
use spotguard_testkit_k8s::ControlPlane;

mod harness;

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/spotguard")
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

const VALUE_FILES: [&str; 3] = [
    "values-non-default.yaml",
    "values-switched-off.yaml",
    "values-agents-only.yaml",
];

/// The default values, then each file of [`VALUE_FILES`].
fn value_sets() -> impl Iterator<Item = Option<&'static str>> {
    std::iter::once(None).chain(VALUE_FILES.iter().copied().map(Some))
}

fn run(mut command: Command, what: &str) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn with_values(mut command: Command, values: Option<&str>) -> Command {
    if let Some(file) = values {
        command.arg("--values").arg(data(file));
    }
    command
}

/// Every leaf of a values tree, by dotted path; a list, an empty map or a map of labels,
/// annotations or a node selector (keys like `eks.amazonaws.com/capacityType`) is one leaf.
fn leaves(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    let free_keys = |map: &serde_norway::Mapping| {
        [
            "labels",
            "annotations",
            "nodeSelector",
            "affinity",
            "headers",
        ]
        .iter()
        .any(|k| prefix.ends_with(k))
            || map
                .keys()
                .any(|k| k.as_str().is_some_and(|k| k.contains('/')))
    };
    match value {
        Value::Mapping(map) if !map.is_empty() && !free_keys(map) => {
            for (key, value) in map {
                let key = key.as_str().expect("string keys");
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&path, value, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn read_leaves(path: &std::path::Path) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let value: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut out = BTreeMap::new();
    leaves("", &value, &mut out);
    out
}

#[test]
fn every_documented_value_is_changed_by_one_of_the_value_files() {
    let defaults = read_leaves(&chart().join("values.yaml"));
    let files: Vec<_> = VALUE_FILES.iter().map(|f| read_leaves(&data(f))).collect();
    let untouched: Vec<&String> = defaults
        .iter()
        .filter(|(path, default)| {
            !files
                .iter()
                .any(|f| f.get(*path).is_some_and(|v| v != *default))
        })
        .map(|(path, _)| path)
        .collect();
    assert!(
        untouched.is_empty(),
        "values no test file changes: {untouched:?}"
    );
    for file in &files {
        for path in file.keys() {
            assert!(
                defaults.contains_key(path) || defaults.keys().any(|d| path.starts_with(d)),
                "{path} is not a value of the chart"
            );
        }
    }
}

#[test]
fn helm_lint_passes_with_every_value_file() {
    let cp = ControlPlane::shared();
    for values in value_sets() {
        let mut lint = cp.helm();
        lint.arg("lint").arg("--strict").arg(chart());
        let out = run(
            with_values(lint, values),
            &format!("helm lint ({values:?})"),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("0 chart(s) failed"), "{text}");
    }
}

/// CustomResourceDefinitions of prometheus-operator's ServiceMonitor and PodMonitor, schema
/// left open: enough for the API server to accept the chart's monitors.
fn install_monitor_crds(cp: &ControlPlane) {
    let crd = |kind: &str, plural: &str| {
        format!(
            r#"{{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
"metadata":{{"name":"{plural}.monitoring.coreos.com"}},
"spec":{{"group":"monitoring.coreos.com","scope":"Namespaced",
"names":{{"kind":"{kind}","plural":"{plural}","singular":"{singular}"}},
"versions":[{{"name":"v1","served":true,"storage":true,
"schema":{{"openAPIV3Schema":{{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}}}}]}}}}"#,
            singular = kind.to_lowercase()
        )
    };
    for (kind, plural) in [
        ("ServiceMonitor", "servicemonitors"),
        ("PodMonitor", "podmonitors"),
    ] {
        cp.apply(&crd(kind, plural), &[], "monitor CRD");
    }
    let mut wait = cp.kubectl();
    wait.args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/podmonitors.monitoring.coreos.com",
    ]);
    run(wait, "kubectl wait for the monitor CRDs");
}

#[tokio::test]
async fn every_rendered_manifest_is_accepted_by_the_api_server() {
    let cp = ControlPlane::shared();
    install_monitor_crds(cp);
    for values in value_sets() {
        let namespace = cp.create_namespace("chart").await;
        let mut template = cp.helm();
        template
            .args(["template", "spotguard"])
            .arg(chart())
            .args(["--namespace", &namespace]);
        let out = run(
            with_values(template, values),
            &format!("helm template ({values:?})"),
        );
        let manifests = String::from_utf8(out.stdout).expect("UTF-8");
        let documents = manifests
            .split("\n---")
            .filter(|d| d.contains("kind:"))
            .count();
        assert!(documents >= 3, "{values:?}: {documents} documents");
        let applied = cp.apply(
            &manifests,
            // Every object names its namespace (the release's, or `default` for the Role on
            // node Events).
            &["--dry-run=server"],
            &format!("{values:?}"),
        );
        // kubectl names every object it would create, one per line.
        let accepted = applied
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        assert_eq!(accepted, documents, "{values:?}:\n{applied}");
    }
}

/// Refused with 403, naming `what`; `needle`, when given, must be in the API server's message.
fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>, needle: Option<&str>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {
            if let Some(needle) = needle {
                assert!(
                    status.message.contains(needle),
                    "{what}: {}",
                    status.message
                );
            }
        }
        other => panic!("{what}: expected 403, got {other:?}"),
    }
}

/// The chart's RBAC and node policy, installed for real and used with the tokens of its two
/// ServiceAccounts. The controller may do what Spot Guard does and is refused the rest —
/// deleting a pod directly, patching a ConfigMap that is not the ledger, writing a Lease in
/// another namespace, reading Secrets, deleting a node. An agent, with the token of its pod
/// on node A, may read node A and mark it (taint and notice record, the agent's one write),
/// and nothing else: not node B, not A's labels, other annotations, other taints or cordon,
/// no pod (of B or of A), eviction, budget, ledger, Lease, Secret or other namespace. A token of the agents' account that
/// comes from no pod writes no node at all.
#[tokio::test]
async fn the_charts_rbac_and_node_policy_allow_spot_guards_calls_and_refuse_the_rest() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
    use serde_json::json;
    use spotguard_core::model::{Taint, TaintEffect};
    use spotguard_core::notice::{Notice, NoticeKind};
    use spotguard_k8s::node_writes::WritePolicy;
    use spotguard_k8s::notice::{mark_node, NOTICE_ANNOTATION};
    use spotguard_testkit_k8s::{eventually, unique_name, NodeBuilder};

    let cp = ControlPlane::shared();
    let namespace = cp.create_namespace("rbac").await;
    let other = cp.create_namespace("rbac-other").await;
    let release = unique_name("sg");
    harness::install_access(cp, &release, &namespace).await;
    let admin = cp.admin_client();

    // Two nodes; an application pod and the agent's pod on node A.
    let mut nodes = Vec::new();
    for prefix in ["rbac-a", "rbac-b"] {
        let name = unique_name(prefix);
        let builder = NodeBuilder::new(&name)
            .provider_id(&format!("aws:///us-east-1a/i-{name}"))
            .label("example.com/pool", "spot");
        cp.create_node(&builder).await;
        nodes.push(name);
    }
    let (node_a, node_b) = (nodes[0].clone(), nodes[1].clone());
    let agent_account = format!("{release}-agent");
    for (name, account, node) in [
        ("app", "default", &node_a),
        ("app-b", "default", &node_b),
        ("agent", agent_account.as_str(), &node_a),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "nodeName": node,
                "serviceAccountName": account,
                "containers": [{"name": name, "image": "registry.invalid/app:1"}],
            },
        }))
        .unwrap();
        Api::<Pod>::namespaced(admin.clone(), &namespace)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }
    let other_cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "unrelated"}})).unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), &namespace)
        .create(&PostParams::default(), &other_cm)
        .await
        .unwrap();
    let lease = |ns: &str| -> Lease {
        serde_json::from_value(json!({"metadata": {"name": "spotguard-scale-web-spot", "namespace": ns}, "spec": {"holderIdentity": "x"}})).unwrap()
    };
    let ledger: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "spotguard-ledger"}, "data": {}}))
            .unwrap();

    // The controller.
    let controller = cp.client_for_token(
        &cp.service_account_token(&namespace, &format!("{release}-controller"))
            .await,
    );
    Api::<PodDisruptionBudget>::all(controller.clone())
        .list(&ListParams::default().limit(1))
        .await
        .expect("list PDBs");
    let controller_nodes: Api<Node> = Api::all(controller.clone());
    controller_nodes
        .list(&ListParams::default().limit(1))
        .await
        .expect("list nodes");
    let protect = json!({"metadata": {"annotations": {"spotguard.dev/test": "true"}}});
    controller_nodes
        .patch(&node_b, &PatchParams::default(), &Patch::Merge(&protect))
        .await
        .expect("patch a node");
    Api::<Pod>::all(controller.clone())
        .list(&ListParams::default().limit(1))
        .await
        .expect("list pods");
    let configmaps: Api<ConfigMap> = Api::namespaced(controller.clone(), &namespace);
    configmaps
        .create(&PostParams::default(), &ledger)
        .await
        .expect("create the ledger");
    configmaps
        .patch(
            "spotguard-ledger",
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": {"ledger.json": "{}"}})),
        )
        .await
        .expect("patch the ledger");
    // The status record: created by the first save, patched by the next, read back.
    let status = spotguard_k8s::ConfigMapStatusStore::new(
        controller.clone(),
        &namespace,
        "spotguard-status",
    );
    let mut record = spotguard_core::status::StatusRecord::default();
    for node in ["a", "b"] {
        record.observe(
            std::time::SystemTime::now(),
            &spotguard_core::events::Event::Cordoned { node: node.into() },
        );
        status.save(&record).await.expect("save the status record");
    }
    assert_eq!(
        status.load().await.expect("read the status record"),
        Some(record)
    );
    Api::<Lease>::namespaced(controller.clone(), &namespace)
        .create(&PostParams::default(), &lease(&namespace))
        .await
        .expect("create a scale-lock Lease");
    let pods: Api<Pod> = Api::namespaced(controller.clone(), &namespace);
    forbidden(
        "the controller deleting a pod directly",
        pods.delete("app", &DeleteParams::default()).await,
        None,
    );
    forbidden(
        "the controller patching a ConfigMap that is not the ledger",
        configmaps
            .patch(
                "unrelated",
                &PatchParams::default(),
                &Patch::Merge(&json!({"data": {"x": "y"}})),
            )
            .await,
        None,
    );
    forbidden(
        "the controller writing a Lease in another namespace",
        Api::<Lease>::namespaced(controller.clone(), &other)
            .create(&PostParams::default(), &lease(&other))
            .await,
        None,
    );
    forbidden(
        "the controller reading Secrets",
        Api::<Secret>::namespaced(controller.clone(), &namespace)
            .list(&ListParams::default())
            .await,
        None,
    );
    forbidden(
        "the controller deleting a node",
        controller_nodes
            .delete(&node_b, &DeleteParams::default())
            .await,
        None,
    );

    // The agent of node A, with its pod's token.
    let agent = cp.client_for_token(
        &cp.pod_service_account_token(&namespace, &agent_account, "agent")
            .await,
    );
    let agent_nodes: Api<Node> = Api::all(agent.clone());
    // The policy is in force once the API server has loaded it.
    let other_node = format!("may not write node {node_b}");
    eventually(
        std::time::Duration::from_secs(30),
        "the node policy in force",
        || async {
            let tried = agent_nodes
                .patch(&node_b, &PatchParams::default(), &Patch::Merge(&protect))
                .await;
            match tried {
                Err(kube::Error::Api(status)) if status.code == 403 => {
                    assert!(status.message.contains(&other_node), "{}", status.message);
                    Some(())
                }
                Ok(_) => None,
                Err(e) => panic!("agent patching node B: {e}"),
            }
        },
    )
    .await;
    // Its one write, as the daemon sends it.
    agent_nodes
        .get(&node_a)
        .await
        .expect("the agent reads its node");
    let taint = Taint {
        key: "spotguard.dev/draining".into(),
        value: "true".into(),
        effect: TaintEffect::NoSchedule,
    };
    let notice = Notice {
        instance_id: format!("i-{node_a}"),
        kind: NoticeKind::Rebalance,
        notice_time: std::time::SystemTime::now(),
    };
    assert!(mark_node(
        &agent_nodes,
        &node_a,
        &taint,
        &notice,
        WritePolicy::default()
    )
    .await
    .expect("the agent marks its node"));
    let marked = Api::<Node>::all(admin.clone()).get(&node_a).await.unwrap();
    assert!(marked
        .metadata
        .annotations
        .unwrap()
        .contains_key(NOTICE_ANNOTATION));
    // Nothing else on its node...
    let own = |what: &str, patch: serde_json::Value, needle: &'static str| {
        let (nodes, node, what) = (agent_nodes.clone(), node_a.clone(), what.to_string());
        async move {
            forbidden(
                &what,
                nodes
                    .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                    .await,
                Some(needle),
            );
        }
    };
    own(
        "the agent labelling its node",
        json!({"metadata": {"labels": {"example.com/pool": "on-demand"}}}),
        "labels, cordon or provider ID",
    )
    .await;
    own(
        "the agent cordoning its node",
        json!({"spec": {"unschedulable": true}}),
        "labels, cordon or provider ID",
    )
    .await;
    own(
        "the agent annotating its node",
        json!({"metadata": {"annotations": {"example.com/x": "y"}}}),
        "no annotation of its node",
    )
    .await;
    own(
        "the agent adding another taint",
        json!({"spec": {"taints": [
            {"key": "spotguard.dev/draining", "value": "true", "effect": "NoSchedule"},
            {"key": "example.com/evict", "effect": "NoExecute"},
        ]}}),
        "no taint of its node",
    )
    .await;
    // ...and nothing beyond it.
    let agent_pods: Api<Pod> = Api::namespaced(agent.clone(), &namespace);
    for (pod, whose) in [("app-b", "node B"), ("app", "its own node")] {
        forbidden(
            &format!("the agent evicting a pod of {whose}"),
            agent_pods.evict(pod, &EvictParams::default()).await,
            None,
        );
    }
    forbidden(
        "the agent reading ConfigMaps of another namespace",
        Api::<ConfigMap>::namespaced(agent.clone(), &other)
            .list(&ListParams::default())
            .await,
        None,
    );
    forbidden(
        "the agent listing pods",
        agent_pods.list(&ListParams::default()).await,
        None,
    );
    forbidden(
        "the agent listing nodes",
        agent_nodes.list(&ListParams::default()).await,
        None,
    );
    forbidden(
        "the agent listing PDBs",
        Api::<PodDisruptionBudget>::all(agent.clone())
            .list(&ListParams::default())
            .await,
        None,
    );
    forbidden(
        "the agent reading the ledger",
        Api::<ConfigMap>::namespaced(agent.clone(), &namespace)
            .get("spotguard-ledger")
            .await,
        None,
    );
    forbidden(
        "the agent writing a Lease",
        Api::<Lease>::namespaced(agent.clone(), &namespace)
            .create(&PostParams::default(), &lease(&namespace))
            .await,
        None,
    );
    forbidden(
        "the agent reading Secrets",
        Api::<Secret>::namespaced(agent.clone(), &namespace)
            .list(&ListParams::default())
            .await,
        None,
    );
    forbidden(
        "the agent deleting its node",
        agent_nodes.delete(&node_a, &DeleteParams::default()).await,
        None,
    );

    // The agents' account without a pod: no node write at all, its "own" node included.
    let podless = cp.client_for_token(&cp.service_account_token(&namespace, &agent_account).await);
    forbidden(
        "the agents' account writing a node with a token of no pod",
        Api::<Node>::all(podless)
            .patch(
                &node_a,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {NOTICE_ANNOTATION: "{}"}}})),
            )
            .await,
        Some("authentication.kubernetes.io/node-name"),
    );
}
