//! The chart as the real `helm template` renders it (the `helm` of the control-plane test
//! kit, built by `testkit/control-plane/build.sh`), and the RBAC rules of rendered manifests
//! next to the Kubernetes access a request to the API server needs, to check one against the
//! other.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;

/// The chart in this repository.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/spotguard")
}

/// One rendered manifest and the template it came from.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `templates/<file>`.
    pub template: String,
    /// The object.
    pub object: Json,
}

impl Manifest {
    /// `kind`.
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }
}

/// `helm template <release> <chart> --namespace <namespace>` with `values` (JSON is YAML) over
/// the chart's defaults, as one manifest per document.
pub fn render(values: &Json, release: &str, namespace: &str) -> Vec<Manifest> {
    let dir = tempfile::tempdir().expect("scratch directory");
    let file = dir.path().join("values.json");
    std::fs::write(&file, values.to_string()).expect("write the values");
    let out = Command::new(spotguard_testkit_k8s::bin("helm"))
        .env("HELM_CACHE_HOME", dir.path().join("cache"))
        .env("HELM_CONFIG_HOME", dir.path().join("config"))
        .env("HELM_DATA_HOME", dir.path().join("data"))
        .args(["template", release])
        .arg(chart_dir())
        .args(["--namespace", namespace, "--values"])
        .arg(&file)
        .output()
        .expect("run helm");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm template with {values} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_manifests(&text)
}

/// The documents of `helm template`'s output, each with the template its `# Source:` line names.
pub fn parse_manifests(text: &str) -> Vec<Manifest> {
    let mut manifests = Vec::new();
    for document in text.split("\n---\n") {
        let template = document
            .lines()
            .find_map(|l| l.strip_prefix("# Source: spotguard/"))
            .unwrap_or_default()
            .to_string();
        let object: Json = serde_norway::from_str(document)
            .unwrap_or_else(|e| panic!("{template} renders invalid YAML: {e}\n{document}"));
        if !object.is_null() {
            manifests.push(Manifest { template, object });
        }
    }
    manifests
}

/// One permission: API group, resource (with `/subresource`), verb, and the namespace it
/// holds in (`None`: every namespace), restricted to names when `names` is not empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    /// API group (empty for core).
    pub group: String,
    /// Resource, `pods/eviction` for a subresource.
    pub resource: String,
    /// Verb.
    pub verb: String,
    /// Namespace of a Role; `None` for a ClusterRole.
    pub namespace: Option<String>,
    /// `resourceNames`.
    pub names: Vec<String>,
}

/// Every permission the rendered ClusterRoles and Roles grant, bound or not.
pub fn grants(manifests: &[Manifest]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for m in manifests
        .iter()
        .filter(|m| m.kind() == "ClusterRole" || m.kind() == "Role")
    {
        let namespace = (m.kind() == "Role").then(|| {
            m.object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
        for rule in m.object["rules"].as_array().into_iter().flatten() {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        out.insert(Grant {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb,
                            namespace: namespace.clone(),
                            names: strings("resourceNames"),
                        });
                    }
                }
            }
        }
    }
    out
}

/// The grants of the roles bound to ServiceAccount `account` (by any binding of `manifests`).
pub fn grants_of(manifests: &[Manifest], account: &str) -> BTreeSet<Grant> {
    let bound: Vec<(String, String, Json)> = manifests
        .iter()
        .filter(|m| m.kind().ends_with("Binding"))
        .filter(|m| {
            m.object["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == account)
        })
        .map(|m| {
            (
                m.object["roleRef"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                m.object["roleRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                m.object["metadata"]["namespace"].clone(),
            )
        })
        .collect();
    let roles: Vec<Manifest> = manifests
        .iter()
        .filter(|m| {
            bound.iter().any(|(kind, name, namespace)| {
                m.kind() == kind
                    && m.name() == name
                    && (kind == "ClusterRole" || &m.object["metadata"]["namespace"] == namespace)
            })
        })
        .cloned()
        .collect();
    grants(&roles)
}

/// What a request to the API server needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    /// API group.
    pub group: String,
    /// Resource (with `/subresource`).
    pub resource: String,
    /// Verb.
    pub verb: String,
    /// Namespace of the object (`None`: cluster-scoped or across namespaces).
    pub namespace: Option<String>,
    /// Object name, when the request names one.
    pub name: Option<String>,
}

/// The access a request (`GET /api/v1/nodes?watch=true`) needs; `None` for discovery and
/// other non-resource paths.
pub fn access(method: &str, path_and_query: &str) -> Option<Access> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest.to_vec()),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest.to_vec()),
        _ => return None,
    };
    let (namespace, rest) = match rest.as_slice() {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest.to_vec()),
        _ => (None, rest),
    };
    let (resource, name, sub) = match rest.as_slice() {
        [resource] => (resource.to_string(), None, None),
        [resource, name] => (resource.to_string(), Some(name.to_string()), None),
        [resource, name, sub] => (
            resource.to_string(),
            Some(name.to_string()),
            Some(sub.to_string()),
        ),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, &name) {
        ("GET", None) if watch => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", None) => "deletecollection",
        ("DELETE", Some(_)) => "delete",
        _ => return None,
    };
    let resource = match sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource,
    };
    // A create names no object in its path, except for subresources.
    let name = if verb == "create" && !resource.contains('/') {
        None
    } else {
        name
    };
    Some(Access {
        group,
        resource,
        verb: verb.into(),
        namespace,
        name,
    })
}

/// Whether some grant allows the access.
pub fn permits(grants: &BTreeSet<Grant>, access: &Access) -> bool {
    grants.iter().any(|g| {
        g.group == access.group
            && g.resource == access.resource
            && g.verb == access.verb
            && (g.namespace.is_none() || g.namespace == access.namespace)
            && (g.names.is_empty() || access.name.as_ref().is_some_and(|n| g.names.contains(n)))
    })
}

/// The rendered manifests by kind.
pub fn by_kind(manifests: &[Manifest]) -> HashMap<String, Vec<Manifest>> {
    let mut map: HashMap<String, Vec<Manifest>> = HashMap::new();
    for m in manifests {
        map.entry(m.kind().to_string()).or_default().push(m.clone());
    }
    map
}
