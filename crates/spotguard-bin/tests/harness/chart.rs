//! `helm template` for Spot Guard's chart, in the test: the templates are Go text/template
//! (rendered by gtmpl) with the few Helm functions the chart uses (`quote`, `default`,
//! `toYaml`, `nindent`, `indent`), implemented as Helm implements them. A template calling
//! any other function fails to render, so the chart cannot drift from what this tests.
//!
//! Also: the RBAC rules of rendered manifests, and the Kubernetes access a request to the API
//! server needs, to check one against the other.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use gtmpl::{Context, Func, FuncError, Template, Value};
use serde_json::{json, Value as Json};

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

fn yaml_file(path: &Path) -> Json {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// Deep merge, `over` winning (as `--set`/`-f` do).
pub fn merge(base: &mut Json, over: &Json) {
    match (base, over) {
        (Json::Object(b), Json::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Json::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn to_gtmpl(v: &Json) -> Value {
    match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => Value::Nil,
        },
        Json::String(s) => Value::String(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(to_gtmpl).collect()),
        Json::Object(o) => Value::Map(o.iter().map(|(k, v)| (k.clone(), to_gtmpl(v))).collect()),
    }
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::NoValue | Value::Nil | Value::Function(_) => Json::Null,
        Value::Bool(b) => json!(b),
        Value::String(s) => json!(s),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => json!(i),
            (_, Some(u), _) => json!(u),
            (_, _, Some(f)) => json!(f),
            _ => Json::Null,
        },
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        Value::Object(o) | Value::Map(o) => {
            Json::Object(o.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::NoValue | Value::Nil => String::new(),
        other => other.to_string(),
    }
}

/// Helm's `empty`: false, 0, "", nil, empty list or map.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::NoValue | Value::Nil => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) | Value::Map(o) => o.is_empty(),
        Value::Function(_) => false,
    }
}

fn generic(message: String) -> FuncError {
    FuncError::Generic(message)
}

/// `quote`: each argument as a double-quoted string, joined by spaces.
fn quote(args: &[Value]) -> Result<Value, FuncError> {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| serde_json::to_string(&text(a)).expect("strings serialize"))
        .collect();
    Ok(Value::String(quoted.join(" ")))
}

/// `default DEFAULT VALUE`: VALUE unless it is empty.
fn default(args: &[Value]) -> Result<Value, FuncError> {
    match args {
        [fallback] => Ok(fallback.clone()),
        [fallback, given] => Ok(if is_empty(given) {
            fallback.clone()
        } else {
            given.clone()
        }),
        _ => Err(FuncError::AtLeastXArgs("default".into(), 1)),
    }
}

/// `toYaml`: YAML without the trailing newline.
fn to_yaml(args: &[Value]) -> Result<Value, FuncError> {
    let [value] = args else {
        return Err(FuncError::ExactlyXArgs("toYaml".into(), 1));
    };
    let yaml = serde_norway::to_string(&to_json(value)).map_err(|e| generic(e.to_string()))?;
    Ok(Value::String(yaml.trim_end_matches('\n').to_string()))
}

fn indented(args: &[Value], name: &str) -> Result<String, FuncError> {
    let [n, s] = args else {
        return Err(FuncError::ExactlyXArgs(name.into(), 2));
    };
    let n = match n {
        Value::Number(n) => n.as_i64().unwrap_or_default(),
        other => return Err(generic(format!("{name}: {other} is not a number"))),
    };
    let pad = " ".repeat(usize::try_from(n).unwrap_or_default());
    Ok(text(s)
        .split('\n')
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `indent N TEXT`.
fn indent(args: &[Value]) -> Result<Value, FuncError> {
    indented(args, "indent").map(Value::String)
}

/// `nindent N TEXT`: a newline, then `indent`.
fn nindent(args: &[Value]) -> Result<Value, FuncError> {
    indented(args, "nindent").map(|s| Value::String(format!("\n{s}")))
}

const FUNCTIONS: [(&str, Func); 5] = [
    ("quote", quote),
    ("default", default),
    ("toYaml", to_yaml),
    ("indent", indent),
    ("nindent", nindent),
];

/// Renders the chart with `values` laid over values.yaml, as release `name` in `namespace`.
pub fn render(values: &Json, name: &str, namespace: &str) -> Vec<Manifest> {
    let dir = chart_dir();
    let chart = yaml_file(&dir.join("Chart.yaml"));
    let mut merged = yaml_file(&dir.join("values.yaml"));
    merge(&mut merged, values);
    let context = to_gtmpl(&json!({
        "Values": merged,
        "Release": {"Name": name, "Namespace": namespace, "Service": "Helm", "IsInstall": true},
        "Chart": {
            "Name": chart["name"],
            "Version": chart["version"],
            "AppVersion": chart["appVersion"],
        },
    }));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))
        .expect("templates directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let file = p.file_name().and_then(|f| f.to_str()).unwrap_or_default();
            file.ends_with(".yaml") && !file.starts_with('_')
        })
        .collect();
    files.sort();
    let mut manifests = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file).expect("template");
        let template_name = format!(
            "templates/{}",
            file.file_name()
                .and_then(|f| f.to_str())
                .unwrap_or_default()
        );
        let mut template = Template::default();
        template.add_funcs(&FUNCTIONS);
        template
            .parse(source)
            .unwrap_or_else(|e| panic!("{template_name} does not parse: {e}"));
        let out = template
            .render(&Context::from(context.clone()))
            .unwrap_or_else(|e| panic!("{template_name} does not render: {e}"));
        for document in split_documents(&out) {
            let object: Json = serde_norway::from_str(&document).unwrap_or_else(|e| {
                panic!("{template_name} renders invalid YAML: {e}\n{document}")
            });
            if !object.is_null() {
                manifests.push(Manifest {
                    template: template_name.clone(),
                    object,
                });
            }
        }
    }
    manifests
}

fn split_documents(out: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in out.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let last = docs.last_mut().expect("one document");
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
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
