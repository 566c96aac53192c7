//! [`SnapshotCache`]: watch-backed caches of nodes, pods and PodDisruptionBudgets that keep
//! only the core model.
//!
//! Each watch translates an object the moment it arrives ([`node_from_k8s`],
//! [`pod_from_k8s`], [`pdb_from_k8s`]) and drops the Kubernetes object; the cache holds the
//! translated objects by name (nodes) or `namespace/name` (pods, PDBs). Every change bumps a
//! generation counter, and [`SnapshotCache::snapshot`] hands out the same `Arc<ClusterView>`
//! until something changes, so an idle cluster costs neither a copy nor a translation per
//! snapshot. The view is built with each node's pods next to it
//! ([`ClusterViewBuilder`]), so its per-node lookups cost nothing more.
//!
//! [`CacheScope`] narrows what is watched: an agent only needs every node and the pods of its
//! own node.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node as KNode, Pod as KPod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;
use spotguard_core::model::{instance_id_from_provider_id, Node, Pdb, Pod};
use spotguard_core::view::{ClusterView, ClusterViewBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::translate::{
    node_from_k8s, node_from_k8s_without_metadata, pdb_from_k8s, pod_from_k8s, CapacityLabels,
};

/// Objects per page of a watch's initial list (and of every re-list). Each page is held as
/// Kubernetes objects only until it is translated; smaller pages keep that transient memory
/// (and the allocator's high-water mark, which an idle process keeps) low, at one more
/// round trip per page.
pub const LIST_PAGE_SIZE: u32 = 100;

/// What the watch caches of a [`SnapshotCache`] hold, and so what its snapshots contain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CacheScope {
    /// The whole cluster: every node, every pod and every PodDisruptionBudget. The monitor
    /// (controller role) needs it to judge whether a node can be drained.
    #[default]
    Cluster,
    /// One node's view, for an agent. A snapshot holds:
    ///
    /// - every node (instance ids are mapped to nodes, the replacement's node included);
    /// - only the pods bound to node `name`, watched with the field selector
    ///   `spec.nodeName=<name>`: pods on other nodes and pods not scheduled yet are absent;
    /// - no PodDisruptionBudget (`pdbs` is empty; they are not watched): the API server
    ///   enforces them when the drain evicts;
    /// - nodes without their labels and annotations (`labels` and `annotations` are empty;
    ///   the capacity type read from the labels is kept): phase 1 maps instances to nodes and
    ///   writes taints, and never reads them, and on real nodes they are most of a node's
    ///   size.
    ///
    /// Readiness waits for nodes and pods only.
    Node {
        /// The node's name (`spec.nodeName` of its pods).
        name: String,
    },
}

/// How objects are translated for the cache.
#[derive(Debug)]
struct Translation {
    labels: CapacityLabels,
    /// Keep nodes' labels and annotations.
    node_details: bool,
}

impl CacheScope {
    /// The field selector of the pod watch, if any.
    fn pod_selector(&self) -> Option<String> {
        match self {
            CacheScope::Cluster => None,
            CacheScope::Node { name } => Some(format!("spec.nodeName={name}")),
        }
    }
}

/// One kind's translated objects by key, and the objects that failed translation.
#[derive(Debug)]
struct Objects<T> {
    ok: BTreeMap<String, T>,
    failed: BTreeMap<String, Error>,
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Self {
            ok: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }
}

impl<T: PartialEq> Objects<T> {
    /// Stores a translation; `Ok(None)` means the object is left out. Whether anything
    /// changed.
    fn put(&mut self, key: String, translated: Result<Option<T>, Error>) -> bool {
        match translated {
            Ok(Some(value)) => {
                let was_failed = self.failed.remove(&key).is_some();
                if self.ok.get(&key) == Some(&value) {
                    return was_failed;
                }
                self.ok.insert(key, value);
                true
            }
            Ok(None) => self.remove(&key),
            Err(e) => {
                self.ok.remove(&key);
                self.failed.insert(key, e);
                true
            }
        }
    }

    /// Removes an object; whether it was there.
    fn remove(&mut self, key: &str) -> bool {
        let ok = self.ok.remove(key).is_some();
        let failed = self.failed.remove(key).is_some();
        ok || failed
    }
}

/// What the watches share with the snapshots.
#[derive(Debug, Default)]
struct State {
    /// Bumped on every change of the objects.
    generation: u64,
    nodes: Objects<Node>,
    pods: Objects<Pod>,
    pdbs: Objects<Pdb>,
    /// The last snapshot and the generation it was built at.
    built: Option<(u64, Arc<ClusterView>)>,
}

impl State {
    /// A view of the objects: nodes by name, each followed by its pods by `namespace/name`;
    /// then the pods of nodes not in the cache (by node name) and the pods bound to no node;
    /// PDBs by `namespace/name`.
    fn view(&self) -> ClusterView {
        let mut pods: Vec<&Pod> = self.pods.ok.values().collect();
        // Stable: each node's pods stay in key order.
        pods.sort_by(|a, b| (a.node.is_none(), &a.node).cmp(&(b.node.is_none(), &b.node)));
        let mut pods = pods.into_iter().peekable();
        let mut builder =
            ClusterViewBuilder::with_capacity(self.nodes.ok.len(), self.pods.ok.len());
        let mut others = Vec::new();
        for node in self.nodes.ok.values() {
            let name = node.name.as_str();
            while let Some(pod) = pods.next_if(|p| p.node.as_deref().is_some_and(|n| n < name)) {
                others.push(pod.clone());
            }
            let own = std::iter::from_fn(|| pods.next_if(|p| p.node.as_deref() == Some(name)));
            builder.node(node.clone(), own.cloned());
        }
        others.extend(pods.cloned());
        builder.pods(others);
        builder.pdbs(self.pdbs.ok.values().cloned());
        builder.build()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves consistent maps (every update is one insert or
    // remove), so the state stays usable.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The translation error again: [`Error`] is not `Clone` (it can hold a client error), but
/// translation only fails with [`Error::Quantity`] and [`Error::Invalid`].
fn copy_error(e: &Error) -> Error {
    match e {
        Error::Quantity {
            object,
            field,
            value,
            reason,
        } => Error::Quantity {
            object: object.clone(),
            field: field.clone(),
            value: value.clone(),
            reason: reason.clone(),
        },
        Error::Invalid {
            object,
            field,
            message,
        } => Error::Invalid {
            object: object.clone(),
            field: field.clone(),
            message: message.clone(),
        },
        other => Error::Malformed {
            object: other.object().to_string(),
            message: other.to_string(),
        },
    }
}

/// A Kubernetes kind the cache keeps in translated form.
trait Cached:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// The core-model type.
    type Model: PartialEq + Send + 'static;
    /// Plural resource name, for logs and readiness errors.
    const RESOURCE: &'static str;
    /// The translation; `Ok(None)` leaves the object out.
    fn translate(&self, how: &Translation) -> Result<Option<Self::Model>, Error>;
    /// This kind's objects in the shared state.
    fn objects(state: &mut State) -> &mut Objects<Self::Model>;
}

impl Cached for KNode {
    type Model = Node;
    const RESOURCE: &'static str = "nodes";
    fn translate(&self, how: &Translation) -> Result<Option<Node>, Error> {
        if how.node_details {
            node_from_k8s(self, &how.labels).map(Some)
        } else {
            node_from_k8s_without_metadata(self, &how.labels).map(Some)
        }
    }
    fn objects(state: &mut State) -> &mut Objects<Node> {
        &mut state.nodes
    }
}

impl Cached for KPod {
    type Model = Pod;
    const RESOURCE: &'static str = "pods";
    fn translate(&self, _: &Translation) -> Result<Option<Pod>, Error> {
        pod_from_k8s(self).map(Some)
    }
    fn objects(state: &mut State) -> &mut Objects<Pod> {
        &mut state.pods
    }
}

impl Cached for PodDisruptionBudget {
    type Model = Pdb;
    const RESOURCE: &'static str = "poddisruptionbudgets";
    fn translate(&self, _: &Translation) -> Result<Option<Pdb>, Error> {
        pdb_from_k8s(self)
    }
    fn objects(state: &mut State) -> &mut Objects<Pdb> {
        &mut state.pdbs
    }
}

/// Name for cluster-scoped objects, `namespace/name` for namespaced ones.
fn key<K: ResourceExt>(object: &K) -> String {
    match object.namespace() {
        Some(ns) => format!("{ns}/{}", object.name_any()),
        None => object.name_any(),
    }
}

/// Translates an object, logging a failure (the snapshot reports it again).
fn translate<K: Cached>(object: &K, how: &Translation) -> Result<Option<K::Model>, Error> {
    let translated = object.translate(how);
    if let Err(e) = &translated {
        tracing::warn!(
            object = %e.object(),
            error = %e,
            "cannot translate {}; snapshots fail until it is fixed or deleted",
            e.object()
        );
    }
    translated
}

/// One watch's side of the cache: applies its events to the shared state.
struct Watch<K: Cached> {
    how: Arc<Translation>,
    state: Arc<Mutex<State>>,
    /// Set once the first list is complete.
    ready: watch::Sender<bool>,
    /// Counts this watch's changes of the cached objects, for those who wait on them.
    changes: watch::Sender<u64>,
    /// Objects of a (re-)list in progress; they replace the cached ones at once when it
    /// ends, so objects deleted while no watch was open disappear.
    listing: Option<Objects<K::Model>>,
}

impl<K: Cached> Watch<K> {
    fn new(
        how: Arc<Translation>,
        state: Arc<Mutex<State>>,
        ready: watch::Sender<bool>,
        changes: watch::Sender<u64>,
    ) -> Self {
        Self {
            how,
            state,
            ready,
            changes,
            listing: None,
        }
    }

    /// Records a change of the cached objects (the state's lock held).
    fn changed(&self, state: &mut State) {
        state.generation += 1;
        self.changes.send_modify(|n| *n += 1);
    }

    fn handle(&mut self, event: Event<K>) {
        match event {
            Event::Init => self.listing = Some(Objects::default()),
            Event::InitApply(object) => {
                let translated = translate(&object, &self.how);
                self.listing
                    .get_or_insert_with(Objects::default)
                    .put(key(&object), translated);
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                {
                    let mut state = lock(&self.state);
                    *K::objects(&mut state) = listed;
                    self.changed(&mut state);
                }
                self.ready.send_replace(true);
            }
            Event::Apply(object) => {
                let translated = translate(&object, &self.how);
                let key = key(&object);
                drop(object);
                let mut state = lock(&self.state);
                if K::objects(&mut state).put(key, translated) {
                    self.changed(&mut state);
                }
            }
            Event::Delete(object) => {
                let key = key(&object);
                let mut state = lock(&self.state);
                if K::objects(&mut state).remove(&key) {
                    self.changed(&mut state);
                }
            }
        }
    }

    /// Runs the watch until its stream ends (never: it retries with backoff) or the task is
    /// aborted.
    async fn run(mut self, api: Api<K>, config: watcher::Config) {
        let stream = watcher::watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => self.handle(event),
                Err(e) => {
                    tracing::warn!(resource = K::RESOURCE, error = %e, "watch failed; retrying with backoff")
                }
            }
        }
    }
}

/// Watch-backed caches of nodes, pods and PDBs in the core model, so a snapshot costs no API
/// call and, while nothing changes, no copy. The watches run on tokio tasks that stop when the
/// cache is dropped.
pub struct SnapshotCache {
    state: Arc<Mutex<State>>,
    /// Per watch: its resource and whether its first list completed.
    ready: Vec<(&'static str, watch::Receiver<bool>)>,
    /// Per watch: its resource and the count of its changes.
    changes: Vec<(&'static str, watch::Receiver<u64>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl SnapshotCache {
    /// Starts the watches of `scope`, translating nodes with `labels`. Must be called inside
    /// a tokio runtime.
    pub fn start(client: Client, scope: &CacheScope, labels: CapacityLabels) -> Self {
        let mut cache = Self {
            state: Arc::new(Mutex::new(State::default())),
            ready: Vec::new(),
            changes: Vec::new(),
            tasks: Vec::new(),
        };
        let how = Arc::new(Translation {
            labels,
            node_details: *scope == CacheScope::Cluster,
        });
        let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
        cache.spawn(
            Api::<KNode>::all(client.clone()),
            config.clone(),
            how.clone(),
        );
        let pods = match scope.pod_selector() {
            Some(selector) => config.clone().fields(&selector),
            None => config.clone(),
        };
        cache.spawn(Api::<KPod>::all(client.clone()), pods, how.clone());
        if *scope == CacheScope::Cluster {
            cache.spawn(Api::<PodDisruptionBudget>::all(client), config, how);
        }
        cache
    }

    fn spawn<K: Cached>(&mut self, api: Api<K>, config: watcher::Config, how: Arc<Translation>) {
        let (sender, receiver) = watch::channel(false);
        self.ready.push((K::RESOURCE, receiver));
        let (changes, counted) = watch::channel(0);
        self.changes.push((K::RESOURCE, counted));
        let watch = Watch::<K>::new(how, self.state.clone(), sender, changes);
        self.tasks.push(tokio::spawn(watch.run(api, config)));
    }

    /// Waits until every watch has listed its objects once.
    pub async fn ready(&self) -> Result<(), Error> {
        for (resource, ready) in &self.ready {
            ready
                .clone()
                .wait_for(|listed| *listed)
                .await
                .map_err(|_| Error::NotReady {
                    resource: (*resource).into(),
                })?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for [`SnapshotCache::ready`]; the error names the caches still
    /// listing.
    pub async fn ready_within(&self, timeout: Duration) -> Result<(), Error> {
        match tokio::time::timeout(timeout, self.ready()).await {
            Ok(result) => result,
            Err(_) => {
                let waiting: Vec<&str> = self
                    .ready
                    .iter()
                    .filter(|(_, ready)| !*ready.borrow())
                    .map(|(resource, _)| *resource)
                    .collect();
                Err(Error::NotReady {
                    resource: waiting.join(", "),
                })
            }
        }
    }

    /// Marks a change whenever the cached nodes change (a node added, removed, or changed in
    /// what the core model keeps of it, annotations included for a cluster-wide cache): what
    /// the controller waits on to read the notices agents record on their nodes, with no
    /// call and no snapshot while nothing moves.
    pub fn node_changes(&self) -> watch::Receiver<u64> {
        self.changes
            .iter()
            .find(|(resource, _)| *resource == KNode::RESOURCE)
            .map(|(_, changes)| changes.clone())
            .expect("every cache watches nodes")
    }

    /// The cached nodes carrying annotation `key` (an agent's cache keeps no annotations),
    /// read without building a snapshot: what the controller scans on every
    /// [`SnapshotCache::node_changes`].
    pub fn nodes_with_annotation(&self, key: &str) -> Vec<Node> {
        lock(&self.state)
            .nodes
            .ok
            .values()
            .filter(|n| n.annotations.contains_key(key))
            .cloned()
            .collect()
    }

    /// How many changes the caches have seen; a snapshot is rebuilt only when this moved.
    pub fn generation(&self) -> u64 {
        lock(&self.state).generation
    }

    /// The cached objects as a shared view (see [`ClusterView`]): nodes sorted by name, each
    /// node's pods following it by `namespace/name` (pods of nodes not cached, then pods bound
    /// to no node, last), PDBs by `namespace/name`. The same `Arc` comes back until a watch
    /// changes something. Fails, naming the object and the field, while any cached object
    /// could not be translated.
    pub fn snapshot(&self) -> Result<Arc<ClusterView>, Error> {
        let mut state = lock(&self.state);
        if let Some((generation, view)) = &state.built {
            if *generation == state.generation {
                return Ok(view.clone());
            }
        }
        // Let the old view go first: callers done with it free it before the new one is built.
        state.built = None;
        if let Some(e) = state
            .nodes
            .failed
            .values()
            .chain(state.pods.failed.values())
            .chain(state.pdbs.failed.values())
            .next()
        {
            return Err(copy_error(e));
        }
        let view = Arc::new(state.view());
        state.built = Some((state.generation, view.clone()));
        Ok(view)
    }
}

impl Drop for SnapshotCache {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The name of the node backed by EC2 instance `instance`, read with one paged list of the
/// nodes (no cache needed); `None` when no node has that instance in its `spec.providerID`.
pub async fn node_name_for_instance(
    client: Client,
    instance: &str,
) -> Result<Option<String>, Error> {
    let api = Api::<KNode>::all(client);
    let mut params = ListParams::default().limit(LIST_PAGE_SIZE);
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(|e| Error::api("list", "nodes", e))?;
        if let Some(node) = page.items.iter().find(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.provider_id.as_deref())
                .and_then(instance_id_from_provider_id)
                .as_deref()
                == Some(instance)
        }) {
            return Ok(Some(node.name_any()));
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cache() -> SnapshotCache {
        SnapshotCache {
            state: Arc::new(Mutex::new(State::default())),
            ready: Vec::new(),
            changes: Vec::new(),
            tasks: Vec::new(),
        }
    }

    fn watch_of<K: Cached>(cache: &mut SnapshotCache) -> Watch<K> {
        let (sender, receiver) = watch::channel(false);
        cache.ready.push((K::RESOURCE, receiver));
        let (changes, counted) = watch::channel(0);
        cache.changes.push((K::RESOURCE, counted));
        let how = Translation {
            labels: CapacityLabels::default(),
            node_details: true,
        };
        Watch::new(Arc::new(how), cache.state.clone(), sender, changes)
    }

    #[test]
    fn node_changes_count_what_the_model_keeps_changing() {
        let mut cache = cache();
        let mut nodes = watch_of::<KNode>(&mut cache);
        let changes = cache.node_changes();
        nodes.handle(Event::Init);
        nodes.handle(Event::InitApply(knode("a", "4Gi")));
        assert_eq!(*changes.borrow(), 0, "nothing before the list completes");
        nodes.handle(Event::InitDone);
        assert_eq!(*changes.borrow(), 1);
        // A heartbeat-like update the model does not keep: no change.
        nodes.handle(Event::Apply(knode("a", "4Gi")));
        assert_eq!(*changes.borrow(), 1);
        let mut annotated = knode("a", "4Gi");
        annotated.metadata.annotations =
            Some([("spotguard.dev/notice".to_string(), "{}".to_string())].into());
        nodes.handle(Event::Apply(annotated.clone()));
        assert_eq!(*changes.borrow(), 2);
        nodes.handle(Event::Delete(annotated));
        assert_eq!(*changes.borrow(), 3);
    }

    fn pod(namespace: &str, name: &str, node: Option<&str>) -> KPod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node, "containers": [{"name": "app"}]}
        }))
        .unwrap()
    }

    fn knode(name: &str, memory: &str) -> KNode {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"providerID": format!("aws:///us-east-1a/i-{name}")},
            "status": {"allocatable": {"cpu": "2", "memory": memory}}
        }))
        .unwrap()
    }

    fn pod_names(view: &ClusterView) -> Vec<String> {
        view.pods.iter().map(|p| p.key()).collect()
    }

    #[test]
    fn a_relist_replaces_the_objects_at_once_when_it_completes() {
        let mut cache = cache();
        let mut pods = watch_of::<KPod>(&mut cache);
        pods.handle(Event::Init);
        pods.handle(Event::InitApply(pod("a", "one", None)));
        pods.handle(Event::InitApply(pod("a", "two", None)));
        assert!(
            !*cache.ready[0].1.borrow(),
            "not ready before the list completes"
        );
        assert_eq!(pod_names(&cache.snapshot().unwrap()), Vec::<String>::new());
        pods.handle(Event::InitDone);
        assert!(*cache.ready[0].1.borrow());
        assert_eq!(pod_names(&cache.snapshot().unwrap()), ["a/one", "a/two"]);

        // The watch broke; "a/one" was deleted meanwhile and the re-list no longer has it.
        pods.handle(Event::Init);
        pods.handle(Event::InitApply(pod("a", "two", None)));
        pods.handle(Event::InitApply(pod("a", "three", None)));
        assert_eq!(
            pod_names(&cache.snapshot().unwrap()),
            ["a/one", "a/two"],
            "the old objects stay until the re-list is complete"
        );
        pods.handle(Event::InitDone);
        assert_eq!(pod_names(&cache.snapshot().unwrap()), ["a/three", "a/two"]);

        pods.handle(Event::Delete(pod("a", "two", None)));
        pods.handle(Event::Apply(pod("b", "four", None)));
        assert_eq!(pod_names(&cache.snapshot().unwrap()), ["a/three", "b/four"]);
    }

    #[test]
    fn views_are_shared_until_something_changes() {
        let mut cache = cache();
        let mut nodes = watch_of::<KNode>(&mut cache);
        nodes.handle(Event::Init);
        nodes.handle(Event::InitApply(knode("n1", "1Gi")));
        nodes.handle(Event::InitDone);
        let first = cache.snapshot().unwrap();
        let generation = cache.generation();
        assert!(Arc::ptr_eq(&first, &cache.snapshot().unwrap()));

        // An update that changes nothing Spot Guard reads (here: nothing at all).
        nodes.handle(Event::Apply(knode("n1", "1Gi")));
        assert_eq!(cache.generation(), generation);
        assert!(Arc::ptr_eq(&first, &cache.snapshot().unwrap()));
        // Deleting what is not cached changes nothing either.
        nodes.handle(Event::Delete(knode("n9", "1Gi")));
        assert!(Arc::ptr_eq(&first, &cache.snapshot().unwrap()));

        nodes.handle(Event::Apply(knode("n1", "2Gi")));
        let second = cache.snapshot().unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(second.node("n1").unwrap().allocatable.memory_bytes, 2 << 30);
        assert_eq!(first.node("n1").unwrap().allocatable.memory_bytes, 1 << 30);
        assert_eq!(
            second.node_for_instance("i-n1").map(|n| n.name.as_str()),
            Some("n1")
        );
    }

    #[test]
    fn an_untranslatable_object_fails_snapshots_until_fixed_or_deleted() {
        let mut cache = cache();
        let mut nodes = watch_of::<KNode>(&mut cache);
        nodes.handle(Event::Init);
        nodes.handle(Event::InitApply(knode("good", "1Gi")));
        nodes.handle(Event::InitApply(knode("bad", "16 GB")));
        nodes.handle(Event::InitDone);
        for _ in 0..2 {
            let err = cache.snapshot().unwrap_err().to_string();
            assert!(err.contains("node/bad"), "{err}");
            assert!(err.contains("status.allocatable.memory"), "{err}");
            assert!(err.contains("16 GB"), "{err}");
        }
        nodes.handle(Event::Apply(knode("bad", "16Gi")));
        assert_eq!(cache.snapshot().unwrap().nodes.len(), 2);
        nodes.handle(Event::Apply(knode("bad", "16 GB")));
        assert!(cache.snapshot().is_err());
        nodes.handle(Event::Delete(knode("bad", "16 GB")));
        let view = cache.snapshot().unwrap();
        assert_eq!(view.nodes.len(), 1);
        assert_eq!(view.nodes[0].name, "good");
    }

    #[test]
    fn pods_follow_their_node_in_the_view() {
        let mut cache = cache();
        let mut nodes = watch_of::<KNode>(&mut cache);
        let mut pods = watch_of::<KPod>(&mut cache);
        nodes.handle(Event::Init);
        for name in ["b", "a", "c"] {
            nodes.handle(Event::InitApply(knode(name, "1Gi")));
        }
        nodes.handle(Event::InitDone);
        pods.handle(Event::Init);
        for (ns, name, node) in [
            ("x", "pending", None),
            ("x", "on-c", Some("c")),
            ("z", "on-a", Some("a")),
            ("y", "on-a", Some("a")),
            ("x", "on-gone", Some("bb")),
            ("x", "on-b", Some("b")),
            ("x", "on-zz", Some("zz")),
        ] {
            pods.handle(Event::InitApply(pod(ns, name, node)));
        }
        pods.handle(Event::InitDone);
        let view = cache.snapshot().unwrap();
        let names: Vec<&str> = view.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(
            pod_names(&view),
            [
                "y/on-a",
                "z/on-a",
                "x/on-b",
                "x/on-c",
                "x/on-gone",
                "x/on-zz",
                "x/pending"
            ]
        );
        let on_a: Vec<String> = view.pods_on("a").map(|p| p.key()).collect();
        assert_eq!(on_a, ["y/on-a", "z/on-a"]);
        assert_eq!(view.pods_on("bb").count(), 1);
        assert_eq!(view.used(view.node_index("a").unwrap()).pods, 2);
    }
}
