//! The Helm chart with the real `helm` and the real API server (Kubernetes v1.37.2, from the
//! control-plane test kit): `helm lint` passes, and every manifest `helm template` renders is
//! accepted by `kubectl apply --dry-run=server` — server-side schema validation, defaulting
//! and admission — with the default values, with every value changed
//! (`tests/data/values-non-default.yaml`), with the switches off
//! (`tests/data/values-switched-off.yaml`) and without controllers
//! (`tests/data/values-agents-only.yaml`). Together the files change every value `values.yaml`
//! documents.
#![cfg(feature = "daemon")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_norway::Value;
use spotguard_testkit_k8s::ControlPlane;

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
        ["labels", "annotations", "nodeSelector"]
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

/// The chart's RBAC, installed for real and used with the tokens of its two ServiceAccounts
/// (agent and controller): what Spot Guard does is allowed, and a request outside it —
/// deleting a pod directly, patching a ConfigMap that is not the ledger, writing a Lease in
/// another namespace, reading Secrets, deleting a node, and for an agent reading
/// PodDisruptionBudgets — is refused by the API server with 403.
#[tokio::test]
async fn the_charts_rbac_allows_spot_guards_calls_and_refuses_the_rest() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
    use serde_json::json;
    use spotguard_testkit_k8s::{unique_name, NodeBuilder};

    let cp = ControlPlane::shared();
    let namespace = cp.create_namespace("rbac").await;
    let other = cp.create_namespace("rbac-other").await;
    let release = unique_name("sg");
    let mut template = cp.helm();
    template
        .args(["template", &release])
        .arg(chart())
        .args(["--namespace", &namespace])
        .args(["--show-only", "templates/rbac.yaml"])
        .args(["--show-only", "templates/serviceaccount.yaml"]);
    let rbac = String::from_utf8(run(template, "helm template (RBAC)").stdout).unwrap();
    cp.apply(&rbac, &[], "the chart's RBAC");

    let admin = cp.admin_client();

    // Objects to act on.
    let node = cp
        .create_node(&NodeBuilder::new(&unique_name("rbac-node")))
        .await;
    let node_name = node.metadata.name.clone().unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {"nodeName": node_name, "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(admin.clone(), &namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let other_cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "unrelated"}})).unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), &namespace)
        .create(&PostParams::default(), &other_cm)
        .await
        .unwrap();

    // A create the other role made first is refused with 409, after authorization.
    let already_exists = |e: kube::Error| match e {
        kube::Error::Api(status) if status.code == 409 => Ok(()),
        other => Err(other),
    };
    for role in ["agent", "controller"] {
        let account = format!("{release}-{role}");
        let client = cp.client_for_token(&cp.service_account_token(&namespace, &account).await);
        // Only the controller reads PodDisruptionBudgets.
        let pdbs = Api::<PodDisruptionBudget>::all(client.clone())
            .list(&ListParams::default().limit(1))
            .await;
        match (role, pdbs) {
            ("controller", Ok(_)) => {}
            ("agent", Err(kube::Error::Api(status))) if status.code == 403 => {}
            (role, other) => panic!("{role} listing PDBs: {other:?}"),
        }
        // Allowed: what the daemon does.
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .list(&ListParams::default().limit(1))
            .await
            .expect("list nodes");
        let label = json!({"metadata": {"annotations": {"spotguard.dev/test": "true"}}});
        nodes
            .patch(&node_name, &PatchParams::default(), &Patch::Merge(&label))
            .await
            .expect("patch a node");
        Api::<Pod>::all(client.clone())
            .list(&ListParams::default().limit(1))
            .await
            .expect("list pods");
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let ledger: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "spotguard-ledger"}, "data": {}}))
                .unwrap();
        configmaps
            .create(&PostParams::default(), &ledger)
            .await
            .map(|_| ())
            .or_else(already_exists)
            .expect("create the ledger");
        configmaps
            .patch(
                "spotguard-ledger",
                &PatchParams::default(),
                &Patch::Merge(&json!({"data": {"ledger.json": "{}"}})),
            )
            .await
            .expect("patch the ledger");
        let lease = |ns: &str| -> Lease {
            serde_json::from_value(json!({"metadata": {"name": "spotguard-scale-web-spot", "namespace": ns}, "spec": {"holderIdentity": "agent"}})).unwrap()
        };
        Api::<Lease>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &lease(&namespace))
            .await
            .map(|_| ())
            .or_else(already_exists)
            .expect("create a scale-lock Lease");

        // Refused with 403.
        let forbidden = |what: &str, result: Result<(), kube::Error>| match result {
            Err(kube::Error::Api(status)) if status.code == 403 => {}
            other => panic!("{what}: expected 403, got {other:?}"),
        };
        forbidden(
            "deleting a pod directly",
            Api::<Pod>::namespaced(client.clone(), &namespace)
                .delete("app", &DeleteParams::default())
                .await
                .map(|_| ()),
        );
        forbidden(
            "patching a ConfigMap that is not the ledger",
            configmaps
                .patch(
                    "unrelated",
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"data": {"x": "y"}})),
                )
                .await
                .map(|_| ()),
        );
        forbidden(
            "writing a Lease in another namespace",
            Api::<Lease>::namespaced(client.clone(), &other)
                .create(&PostParams::default(), &lease(&other))
                .await
                .map(|_| ()),
        );
        forbidden(
            "reading Secrets",
            Api::<Secret>::namespaced(client.clone(), &namespace)
                .list(&ListParams::default())
                .await
                .map(|_| ()),
        );
        forbidden(
            "deleting a node",
            nodes
                .delete(&node_name, &DeleteParams::default())
                .await
                .map(|_| ()),
        );
    }
}
