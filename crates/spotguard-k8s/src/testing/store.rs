//! The fake API server's state: objects as JSON, one resourceVersion counter (like etcd's),
//! the watch history, and the semantics drain depends on — graceful pod deletion, eviction
//! under PodDisruptionBudgets, PDB status, ReplicaSet replacements.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::patch;
use super::selector::{selector_matches, FieldQuery, LabelQuery};

/// A resource the fake serves.
#[derive(Debug)]
pub struct Resource {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural name in paths.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names for kubectl.
    pub short: &'static [&'static str],
}

impl Resource {
    /// `apiVersion` of its objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group`, as in API error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn res(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
) -> Resource {
    Resource {
        group,
        version,
        plural,
        singular,
        kind,
        namespaced,
        short,
    }
}

/// Every resource served.
pub static RESOURCES: &[Resource] = &[
    res("", "v1", "nodes", "node", "Node", false, &["no"]),
    res("", "v1", "pods", "pod", "Pod", true, &["po"]),
    res(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
    ),
    res(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
    ),
    res("", "v1", "events", "event", "Event", true, &["ev"]),
    res(
        "apps",
        "v1",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        &["ds"],
    ),
    res(
        "apps",
        "v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        &["rs"],
    ),
    res(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
    ),
    res(
        "apps",
        "v1",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        true,
        &["sts"],
    ),
    res(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        true,
        &["pdb"],
    ),
    res(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
        &[],
    ),
    res(
        "events.k8s.io",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
    ),
];

/// Index of a resource in [`RESOURCES`].
pub type ResourceId = usize;

/// The resource with this group and plural.
pub fn find_resource(group: &str, plural: &str) -> Option<ResourceId> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.plural == plural)
}

fn id(group: &str, plural: &str) -> ResourceId {
    find_resource(group, plural).expect("known resource")
}

/// An API error, answered as a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `reason` (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// Message.
    pub message: String,
    /// `details`, when the API server gives them.
    pub details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn not_found(r: &Resource, name: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", r.qualified()),
        );
        e.details = Some(json!({"name": name, "group": r.group, "kind": r.plural}));
        e
    }

    fn conflict(r: &Resource, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                r.qualified()
            ),
        );
        e.details = Some(json!({"name": name, "group": r.group, "kind": r.plural}));
        e
    }

    /// The `Status` body.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// Result of a state change.
pub type ApiResult<T = Value> = Result<T, ApiError>;

/// One change, as watches report it.
#[derive(Debug, Clone)]
pub struct Change {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Resource changed.
    pub resource: ResourceId,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change (before it, for deletions).
    pub object: Value,
    /// The object before a `MODIFIED` change: a watch with a selector needs both to tell an
    /// object entering its selection (`ADDED`) from one leaving it (`DELETED`).
    pub previous: Option<Value>,
}

/// What the kubelet or a controller does to a pod later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodStep {
    /// Remove a terminating pod (its containers stopped).
    Remove,
    /// Mark a replacement pod Running and Ready.
    MakeReady,
}

/// Work the server does later, outside the lock: a step on one pod incarnation (by UID, so a
/// same-named successor is left alone), after a delay.
#[derive(Debug, Clone)]
pub struct Followup {
    /// The step.
    pub step: PodStep,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Delay.
    pub after: Duration,
}

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// How long a pod with a grace period stays terminating before it is removed (the
    /// kubelet's work, shortened; default 50ms). A zero grace period removes at once.
    pub termination_delay: Duration,
    /// Recreate pods owned by a ReplicaSet on another schedulable node when they start
    /// terminating, as the ReplicaSet controller does (default true).
    pub replace_replicaset_pods: bool,
    /// How long a replacement pod takes to become Ready (default 100ms).
    pub replacement_ready_delay: Duration,
    /// The Kubernetes version `/version` reports (default `1.32`).
    pub version: (u32, u32),
    /// How long the server takes to answer an eviction (default 0).
    pub eviction_latency: Duration,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            termination_delay: Duration::from_millis(50),
            replace_replicaset_pods: true,
            replacement_ready_delay: Duration::from_millis(100),
            version: (1, 32),
            eviction_latency: Duration::ZERO,
        }
    }
}

/// A one-shot meddling with an object right after it is read, standing in for another
/// controller writing between a client's read and its write.
pub(crate) struct Interference {
    pub resource: ResourceId,
    pub namespace: String,
    pub name: String,
    pub remaining: u32,
    pub change: Arc<dyn Fn(&mut Value) + Send + Sync>,
}

/// The state.
pub struct State {
    pub(crate) config: FakeConfig,
    rv: u64,
    objects: BTreeMap<(ResourceId, String, String), Value>,
    history: Vec<Change>,
    uid_counter: u64,
    name_seed: u64,
    pub(crate) low_water: Option<BTreeMap<String, i64>>,
    pub(crate) interferences: Vec<Interference>,
    pub(crate) injected: Vec<(String, u16, u32)>,
    pub(crate) log: Vec<(String, String, u16)>,
}

fn now() -> String {
    Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or_else(|_| Timestamp::now())
        .to_string()
}

pub(crate) fn ns_key(r: &Resource, namespace: Option<&str>) -> String {
    if r.namespaced {
        namespace.unwrap_or_default().to_string()
    } else {
        String::new()
    }
}

fn is_true(v: &Value) -> bool {
    v.as_str() == Some("True")
}

/// Whether a pod counts as healthy for a PDB: Running, Ready and not terminating.
pub fn pod_healthy(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && is_true(&c["status"]))
        })
}

fn pod_terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

fn controller_of(object: &Value) -> Option<&Value> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == json!(true))
}

/// Scales an IntOrString against `total`, rounding up.
fn scaled(value: &Value, total: i64) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let p: i64 = s.strip_suffix('%')?.parse().ok()?;
            Some((total * p + 99) / 100)
        }
        _ => None,
    }
}

impl State {
    pub(crate) fn new(config: FakeConfig) -> Self {
        Self {
            config,
            rv: 1,
            objects: BTreeMap::new(),
            history: Vec::new(),
            uid_counter: 0,
            name_seed: 0x2545_f491_4f6c_dd1d,
            low_water: None,
            interferences: Vec::new(),
            injected: Vec::new(),
            log: Vec::new(),
        }
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn next_uid(&mut self) -> String {
        self.uid_counter += 1;
        format!(
            "{:08x}-0000-4000-8000-{:012x}",
            self.uid_counter,
            self.uid_counter * 7919
        )
    }

    fn random_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..5)
            .map(|_| {
                // xorshift64*
                self.name_seed ^= self.name_seed >> 12;
                self.name_seed ^= self.name_seed << 25;
                self.name_seed ^= self.name_seed >> 27;
                let n = self.name_seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
                ALPHABET[(n % ALPHABET.len() as u64) as usize] as char
            })
            .collect()
    }

    /// Stores an object (new resourceVersion), records the change and returns it.
    fn put(
        &mut self,
        resource: ResourceId,
        mut object: Value,
        kind: &'static str,
        changes: &mut Vec<Change>,
    ) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let previous = self.objects.insert((resource, ns, name), object.clone());
        let change = Change {
            rv: self.rv,
            resource,
            kind,
            object: object.clone(),
            previous: previous.filter(|_| kind == "MODIFIED"),
        };
        self.history.push(change.clone());
        changes.push(change);
        object
    }

    fn remove(
        &mut self,
        resource: ResourceId,
        ns: &str,
        name: &str,
        changes: &mut Vec<Change>,
    ) -> Option<Value> {
        let mut object = self
            .objects
            .remove(&(resource, ns.to_string(), name.to_string()))?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let change = Change {
            rv: self.rv,
            resource,
            kind: "DELETED",
            object: object.clone(),
            previous: None,
        };
        self.history.push(change.clone());
        changes.push(change);
        Some(object)
    }

    /// The stored object.
    pub fn get(
        &mut self,
        resource: ResourceId,
        namespace: Option<&str>,
        name: &str,
        changes: &mut Vec<Change>,
    ) -> ApiResult {
        let r = &RESOURCES[resource];
        let ns = ns_key(r, namespace);
        let found = self
            .objects
            .get(&(resource, ns.clone(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(r, name))?;
        // Another writer slips in right after this read, if a test asked for it.
        if let Some(i) = self.interferences.iter().position(|f| {
            f.resource == resource && f.namespace == ns && f.name == name && f.remaining > 0
        }) {
            self.interferences[i].remaining -= 1;
            let change = self.interferences[i].change.clone();
            let mut modified = found.clone();
            change(&mut modified);
            self.put(resource, modified, "MODIFIED", changes);
            self.after_change(resource, changes);
        }
        Ok(found)
    }

    /// Objects of a resource, in a namespace or all, filtered.
    pub fn list(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
        labels: &LabelQuery,
        fields: &FieldQuery,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, o)| o)
            .filter(|o| labels.matches(o) && fields.matches(o))
            .cloned()
            .collect()
    }

    /// One page of [`State::list`]: at most `limit` objects (all when `None`) whose
    /// `(namespace, name)` comes after `after`, in that order, and the key of the last one
    /// when more objects follow.
    pub fn list_page(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
        labels: &LabelQuery,
        fields: &FieldQuery,
        after: Option<(String, String)>,
        limit: Option<usize>,
    ) -> (Vec<Value>, Option<(String, String)>) {
        use std::ops::Bound;
        let start = match after {
            Some((ns, name)) => Bound::Excluded((resource, ns, name)),
            None => Bound::Included((resource, String::new(), String::new())),
        };
        let limit = limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut matching = self
            .objects
            .range((start, Bound::Unbounded))
            .take_while(|((r, _, _), _)| *r == resource)
            .filter(|((_, ns, _), o)| {
                namespace.is_none_or(|n| n == ns) && labels.matches(o) && fields.matches(o)
            });
        let mut last = None;
        for ((_, ns, name), o) in matching.by_ref() {
            items.push(o.clone());
            last = Some((ns.clone(), name.clone()));
            if items.len() == limit {
                break;
            }
        }
        let more = matching.next().is_some();
        (items, last.filter(|_| more))
    }

    /// Changes after `rv` (for watches resuming from a resourceVersion).
    pub fn history_after(&self, rv: u64) -> Vec<Change> {
        let start = self.history.partition_point(|c| c.rv <= rv);
        self.history[start..].to_vec()
    }

    /// Creates an object.
    pub fn create(
        &mut self,
        resource: ResourceId,
        namespace: Option<&str>,
        mut object: Value,
        changes: &mut Vec<Change>,
    ) -> ApiResult {
        let r = &RESOURCES[resource];
        if !object.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body is not an object",
            ));
        }
        if object["metadata"].is_null() {
            object["metadata"] = json!({});
        }
        let name = match object["metadata"]["name"].as_str() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match object["metadata"]["generateName"].as_str() {
                Some(prefix) => format!("{prefix}{}", self.random_suffix()),
                None => {
                    return Err(ApiError::new(422, "Invalid", format!("{} \"\" is invalid: metadata.name: Required value: name or generateName is required", r.kind)))
                }
            },
        };
        let ns = ns_key(r, namespace.or(object["metadata"]["namespace"].as_str()));
        if self
            .objects
            .contains_key(&(resource, ns.clone(), name.clone()))
        {
            let mut e = ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", r.qualified()),
            );
            e.details = Some(json!({"name": name, "group": r.group, "kind": r.plural}));
            return Err(e);
        }
        object["apiVersion"] = json!(r.api_version());
        object["kind"] = json!(r.kind);
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        if r.namespaced {
            meta["namespace"] = json!(ns);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["uid"] = json!(self.next_uid());
        meta["creationTimestamp"] = json!(now());
        meta["generation"] = json!(1);
        let stored = self.put(resource, object, "ADDED", changes);
        self.after_change(resource, changes);
        Ok(self.current(resource, &ns, &name).unwrap_or(stored))
    }

    pub(crate) fn current(&self, resource: ResourceId, ns: &str, name: &str) -> Option<Value> {
        self.objects
            .get(&(resource, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Stores `updated` in place of the current object, keeping what clients cannot change
    /// and checking the resourceVersion it carries, if any.
    fn update(
        &mut self,
        resource: ResourceId,
        ns: &str,
        name: &str,
        mut updated: Value,
        changes: &mut Vec<Change>,
    ) -> ApiResult {
        let r = &RESOURCES[resource];
        let current = self
            .current(resource, ns, name)
            .ok_or_else(|| ApiError::not_found(r, name))?;
        let sent = updated["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !sent.is_empty()
            && sent
                != current["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
        {
            return Err(ApiError::conflict(r, name, "the object has been modified; please apply your changes to the latest version and try again"));
        }
        if !updated.is_object() || !updated["metadata"].is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body is not an object with metadata",
            ));
        }
        updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        for field in [
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match current["metadata"].get(field) {
                Some(v) => updated["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = updated["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        updated["apiVersion"] = json!(r.api_version());
        updated["kind"] = json!(r.kind);
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        updated["metadata"]["generation"] = json!(if updated["spec"] != current["spec"] {
            generation + 1
        } else {
            generation
        });
        if updated == current {
            return Ok(current);
        }
        self.put(resource, updated, "MODIFIED", changes);
        self.after_change(resource, changes);
        Ok(self.current(resource, ns, name).unwrap_or_default())
    }

    /// Replaces an object (PUT).
    pub fn replace(
        &mut self,
        resource: ResourceId,
        namespace: Option<&str>,
        name: &str,
        object: Value,
        changes: &mut Vec<Change>,
    ) -> ApiResult {
        let ns = ns_key(&RESOURCES[resource], namespace);
        self.update(resource, &ns, name, object, changes)
    }

    /// Patches an object with the patch type named by the content type.
    pub fn patch(
        &mut self,
        resource: ResourceId,
        namespace: Option<&str>,
        name: &str,
        content_type: &str,
        body: &Value,
        changes: &mut Vec<Change>,
    ) -> ApiResult {
        let r = &RESOURCES[resource];
        let ns = ns_key(r, namespace);
        let mut object = self
            .current(resource, &ns, name)
            .ok_or_else(|| ApiError::not_found(r, name))?;
        let before_rv = object["metadata"]["resourceVersion"].clone();
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => json_patch::merge(&mut object, body),
            "application/strategic-merge-patch+json" => patch::strategic_merge(&mut object, body),
            "application/json-patch+json" => patch::json_patch(&mut object, body).map_err(|m| ApiError::new(422, "Invalid", m))?,
            other => {
                return Err(ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})")))
            }
        }
        // A resourceVersion the patch set is a precondition; otherwise the write is unconditional.
        if object["metadata"]["resourceVersion"] == before_rv {
            if let Some(m) = object["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
        }
        self.update(resource, &ns, name, object, changes)
    }

    /// Deletes an object; pods terminate gracefully.
    pub fn delete(
        &mut self,
        resource: ResourceId,
        namespace: Option<&str>,
        name: &str,
        options: &Value,
        changes: &mut Vec<Change>,
        followups: &mut Vec<Followup>,
    ) -> ApiResult {
        let r = &RESOURCES[resource];
        let ns = ns_key(r, namespace);
        let current = self
            .current(resource, &ns, name)
            .ok_or_else(|| ApiError::not_found(r, name))?;
        if let Some(uid) = options["preconditions"]["uid"].as_str() {
            let actual = current["metadata"]["uid"].as_str().unwrap_or_default();
            if uid != actual {
                return Err(ApiError::conflict(r, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}")));
            }
        }
        if resource == id("", "pods") {
            return Ok(self.delete_pod(
                &ns,
                name,
                options["gracePeriodSeconds"].as_i64(),
                changes,
                followups,
            ));
        }
        let removed = self.remove(resource, &ns, name, changes).unwrap_or(current);
        self.after_change(resource, changes);
        Ok(removed)
    }

    fn delete_pod(
        &mut self,
        ns: &str,
        name: &str,
        grace: Option<i64>,
        changes: &mut Vec<Change>,
        followups: &mut Vec<Followup>,
    ) -> Value {
        let pods = id("", "pods");
        let Some(mut pod) = self.current(pods, ns, name) else {
            return Value::Null;
        };
        let mut grace = grace
            .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        if pod["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
            || pod_terminal(&pod)
        {
            grace = 0;
        }
        let already_terminating = !pod["metadata"]["deletionTimestamp"].is_null();
        if grace <= 0 {
            let removed = self.remove(pods, ns, name, changes).unwrap_or(pod.clone());
            if !already_terminating {
                self.replace_controlled_pod(&removed, changes, followups);
            }
            self.after_change(pods, changes);
            return removed;
        }
        if already_terminating {
            return pod;
        }
        pod["metadata"]["deletionTimestamp"] = json!(now());
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        let stored = self.put(pods, pod, "MODIFIED", changes);
        followups.push(Followup {
            step: PodStep::Remove,
            namespace: ns.to_string(),
            name: name.to_string(),
            uid: stored["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            after: self.config.termination_delay,
        });
        self.replace_controlled_pod(&stored, changes, followups);
        self.after_change(pods, changes);
        stored
    }

    /// Removes a terminating pod whose grace has passed (only the same incarnation).
    pub fn finish_termination(
        &mut self,
        ns: &str,
        name: &str,
        uid: &str,
        changes: &mut Vec<Change>,
    ) {
        let pods = id("", "pods");
        if self
            .current(pods, ns, name)
            .is_some_and(|p| p["metadata"]["uid"] == uid)
        {
            self.remove(pods, ns, name, changes);
            self.after_change(pods, changes);
        }
    }

    /// Marks a pod Running and Ready (only the same incarnation).
    pub fn make_ready(&mut self, ns: &str, name: &str, uid: &str, changes: &mut Vec<Change>) {
        let pods = id("", "pods");
        let Some(mut pod) = self.current(pods, ns, name) else {
            return;
        };
        if pod["metadata"]["uid"] != uid || !pod["metadata"]["deletionTimestamp"].is_null() {
            return;
        }
        pod["status"]["phase"] = json!("Running");
        pod["status"]["conditions"] = json!([
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True"},
            {"type": "ContainersReady", "status": "True"}
        ]);
        self.put(pods, pod, "MODIFIED", changes);
        self.after_change(pods, changes);
    }

    /// The ReplicaSet controller: a terminating pod of a ReplicaSet is replaced at once by a
    /// new pod, scheduled on the least busy node that admits it.
    fn replace_controlled_pod(
        &mut self,
        old: &Value,
        changes: &mut Vec<Change>,
        followups: &mut Vec<Followup>,
    ) {
        if !self.config.replace_replicaset_pods {
            return;
        }
        let Some(owner) = controller_of(old) else {
            return;
        };
        if owner["kind"] != "ReplicaSet" {
            return;
        }
        let pods = id("", "pods");
        let ns = old["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = format!(
            "{}-{}",
            owner["name"].as_str().unwrap_or("pod"),
            self.random_suffix()
        );
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": old["metadata"]["labels"].clone(),
                "ownerReferences": old["metadata"]["ownerReferences"].clone(),
            },
            "spec": old["spec"].clone(),
            "status": {"phase": "Pending"},
        });
        let node = self.schedule(&pod);
        match &node {
            Some(n) => pod["spec"]["nodeName"] = json!(n),
            None => {
                if let Some(spec) = pod["spec"].as_object_mut() {
                    spec.remove("nodeName");
                }
            }
        }
        pod["metadata"]["uid"] = json!(self.next_uid());
        pod["metadata"]["creationTimestamp"] = json!(now());
        pod["metadata"]["generation"] = json!(1);
        let stored = self.put(pods, pod, "ADDED", changes);
        if node.is_some() {
            followups.push(Followup {
                step: PodStep::MakeReady,
                namespace: ns,
                name,
                uid: stored["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                after: self.config.replacement_ready_delay,
            });
        }
    }

    /// A node for the pod: Ready, schedulable, labels and taints admitting it; the one with
    /// the fewest pods wins (ties by name).
    fn schedule(&self, pod: &Value) -> Option<String> {
        let nodes = id("", "nodes");
        let pods = id("", "pods");
        let mut load: HashMap<String, usize> = HashMap::new();
        for ((r, _, _), p) in &self.objects {
            if *r == pods {
                if let Some(n) = p["spec"]["nodeName"].as_str() {
                    *load.entry(n.to_string()).or_default() += 1;
                }
            }
        }
        let tolerations = pod["spec"]["tolerations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let tolerates = |taint: &Value| {
            tolerations.iter().any(|t| {
                let effect_ok = t["effect"]
                    .as_str()
                    .is_none_or(|e| e.is_empty() || Some(e) == taint["effect"].as_str());
                let key_ok = match t["key"].as_str().filter(|k| !k.is_empty()) {
                    None => t["operator"] == "Exists",
                    Some(k) => {
                        Some(k) == taint["key"].as_str()
                            && (t["operator"] == "Exists"
                                || t["value"].as_str().unwrap_or_default()
                                    == taint["value"].as_str().unwrap_or_default())
                    }
                };
                effect_ok && key_ok
            })
        };
        let selector = pod["spec"]["nodeSelector"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        self.objects
            .iter()
            .filter(|((r, _, _), _)| *r == nodes)
            .map(|(_, n)| n)
            .filter(|n| {
                let ready = n["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && is_true(&c["status"]))
                });
                let schedulable = n["spec"]["unschedulable"] != json!(true);
                let taints_ok = n["spec"]["taints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| t["effect"] != "PreferNoSchedule")
                    .all(&tolerates);
                let labels_ok = selector
                    .iter()
                    .all(|(k, v)| n["metadata"]["labels"][k] == *v);
                ready && schedulable && taints_ok && labels_ok
            })
            .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
            .min_by_key(|name| (load.get(name).copied().unwrap_or(0), name.clone()))
    }

    /// Keeps derived state in step after a change: PDB status follows pods and PDBs.
    fn after_change(&mut self, resource: ResourceId, changes: &mut Vec<Change>) {
        if resource == id("", "pods") || resource == id("policy", "poddisruptionbudgets") {
            self.refresh_pdbs(changes);
        }
    }

    /// Healthy, desired and expected pods of a PDB, from the current pods.
    fn pdb_counts(&self, pdb: &Value) -> (i64, i64, i64) {
        let pods = id("", "pods");
        let ns = pdb["metadata"]["namespace"].as_str().unwrap_or_default();
        let selector = &pdb["spec"]["selector"];
        if selector.is_null() {
            return (0, 0, 0);
        }
        let matching: Vec<&Value> = self
            .objects
            .range((pods, ns.to_string(), String::new())..)
            .take_while(|((r, pns, _), _)| *r == pods && pns == ns)
            .filter(|(_, p)| !pod_terminal(p) && selector_matches(selector, p))
            .map(|(_, p)| p)
            .collect();
        let expected = matching
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .count() as i64;
        let healthy = matching.iter().filter(|p| pod_healthy(p)).count() as i64;
        let spec = &pdb["spec"];
        let desired = if !spec["minAvailable"].is_null() {
            scaled(&spec["minAvailable"], expected).unwrap_or(expected)
        } else if !spec["maxUnavailable"].is_null() {
            (expected - scaled(&spec["maxUnavailable"], expected).unwrap_or(0)).max(0)
        } else {
            1
        };
        (healthy, desired, expected)
    }

    fn refresh_pdbs(&mut self, changes: &mut Vec<Change>) {
        let pdbs = id("policy", "poddisruptionbudgets");
        // Only the PDBs' key range: a cluster of 150,000 pods must not be scanned per write.
        let keys: Vec<_> = self
            .objects
            .range((pdbs, String::new(), String::new())..)
            .map(|(k, _)| k)
            .take_while(|(r, _, _)| *r == pdbs)
            .cloned()
            .collect();
        for key in keys {
            let pdb = self.objects[&key].clone();
            let (healthy, desired, expected) = self.pdb_counts(&pdb);
            let allowed = (healthy - desired).max(0);
            if let Some(low) = self.low_water.as_mut() {
                let entry = low.entry(format!("{}/{}", key.1, key.2)).or_insert(healthy);
                *entry = (*entry).min(healthy);
            }
            let status = json!({
                "observedGeneration": pdb["metadata"]["generation"].clone(),
                "disruptionsAllowed": allowed,
                "currentHealthy": healthy,
                "desiredHealthy": desired,
                "expectedPods": expected,
                "conditions": [{
                    "type": "DisruptionAllowed",
                    "status": if allowed > 0 { "True" } else { "False" },
                    "reason": if allowed > 0 { "SufficientPods" } else { "InsufficientPods" },
                    "message": "",
                    "lastTransitionTime": pdb["status"]["conditions"][0]["lastTransitionTime"].as_str().map(str::to_string).unwrap_or_else(now),
                    "observedGeneration": pdb["metadata"]["generation"].clone(),
                }],
            });
            let same = [
                "disruptionsAllowed",
                "currentHealthy",
                "desiredHealthy",
                "expectedPods",
                "observedGeneration",
            ]
            .iter()
            .all(|f| pdb["status"][f] == status[f]);
            if !same {
                let mut updated = pdb;
                updated["status"] = status;
                self.put(pdbs, updated, "MODIFIED", changes);
            }
        }
    }

    /// The Eviction subresource: PDB check, then graceful deletion.
    pub fn evict(
        &mut self,
        ns: &str,
        name: &str,
        eviction: &Value,
        changes: &mut Vec<Change>,
        followups: &mut Vec<Followup>,
    ) -> ApiResult {
        let pods = id("", "pods");
        let pdbs = id("policy", "poddisruptionbudgets");
        let pod = self
            .current(pods, ns, name)
            .ok_or_else(|| ApiError::not_found(&RESOURCES[pods], name))?;
        let options = &eviction["deleteOptions"];
        if let Some(uid) = options["preconditions"]["uid"].as_str() {
            let actual = pod["metadata"]["uid"].as_str().unwrap_or_default();
            if uid != actual {
                return Err(ApiError::conflict(&RESOURCES[pods], name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}")));
            }
        }
        let success = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
        let phase = pod["status"]["phase"].as_str().unwrap_or_default();
        let ignores_budgets = matches!(phase, "Succeeded" | "Failed" | "Pending")
            || !pod["metadata"]["deletionTimestamp"].is_null();
        if !ignores_budgets {
            let covering: Vec<Value> = self
                .objects
                .iter()
                .filter(|((r, pns, _), pdb)| {
                    *r == pdbs
                        && pns == ns
                        && !pdb["spec"]["selector"].is_null()
                        && selector_matches(&pdb["spec"]["selector"], &pod)
                })
                .map(|(_, pdb)| pdb.clone())
                .collect();
            if covering.len() > 1 {
                return Err(ApiError::new(500, "InternalError", "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."));
            }
            if let Some(pdb) = covering.first() {
                let (healthy, desired, _) = self.pdb_counts(pdb);
                let allowed = (healthy - desired).max(0);
                let always = pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
                let permitted = if pod_healthy(&pod) {
                    allowed > 0
                } else {
                    always || healthy >= desired
                };
                if !permitted {
                    let mut e = ApiError::new(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                    );
                    e.details = Some(json!({
                        "causes": [{
                            "reason": "DisruptionBudget",
                            "message": format!(
                                "The disruption budget {} needs {desired} healthy pods and has {healthy} currently",
                                pdb["metadata"]["name"].as_str().unwrap_or_default()
                            ),
                        }]
                    }));
                    return Err(e);
                }
            }
        }
        self.delete_pod(
            ns,
            name,
            options["gracePeriodSeconds"].as_i64(),
            changes,
            followups,
        );
        Ok(success)
    }
}
