//! The watch caches on the real API server of spotguard-testkit-k8s: snapshots shared until
//! the cluster changes, a node-scoped cache for agents (every node, only its own node's pods,
//! following pods the scheduler binds later and pods deleted, no PDBs), lists in pages, and a
//! re-list after a watch answered `410 Gone`.
//!
//! Request logs come from the fault proxy in front of the API server, which sees every
//! request with its query (field selectors, `limit=`, `continue=`).

mod common;

use std::sync::Arc;

use common::{bare_pod, WAIT};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::Api;
use serde_json::json;
use spotguard_core::model::CapacityType;
use spotguard_core::ports::Cluster;
use spotguard_core::view::ClusterView;
use spotguard_k8s::cache::LIST_PAGE_SIZE;
use spotguard_k8s::{CacheScope, KubeCluster, KubeClusterOptions};
use spotguard_testkit_k8s::{eventually, ApiFaultProxy, ApiRule, StatusReply};

/// A namespace named after `prefix`, two nodes, and a pod of no controller on each: `web-1`
/// on the first, `web-2` on the second.
async fn two_nodes_with_a_pod_each(prefix: &str) -> (String, String, String) {
    let ns = common::control_plane().create_namespace(prefix).await;
    let n1 = common::create_node("n1", None).await;
    let n2 = common::create_node("n2", None).await;
    bare_pod(&ns, "web-1", Some(&n1)).await;
    bare_pod(&ns, "web-2", Some(&n2)).await;
    (ns, n1, n2)
}

/// Names of the snapshot's pods in `ns`.
fn pods_in(snap: &ClusterView, ns: &str) -> Vec<String> {
    snap.pods
        .iter()
        .filter(|p| p.namespace == ns)
        .map(|p| p.name.clone())
        .collect()
}

/// A snapshot taken twice at a moment when the caches saw no change in between (other tests
/// change the shared cluster): both are the same `Arc`.
async fn quiet_snapshot(cluster: &KubeCluster) -> Arc<ClusterView> {
    eventually(WAIT, "a moment without changes in the cluster", || async {
        let generation = cluster.cache().generation();
        let first = cluster.snapshot().await.expect("a snapshot");
        let again = cluster.snapshot().await.expect("a snapshot");
        (cluster.cache().generation() == generation).then(|| {
            assert!(Arc::ptr_eq(&first, &again), "no change, same snapshot");
            first
        })
    })
    .await
}

/// A node-scoped cluster adapter for `node`, through `proxy`.
async fn node_scoped(proxy: &ApiFaultProxy, node: &str) -> KubeCluster {
    let options = KubeClusterOptions {
        cache_scope: CacheScope::Node { name: node.into() },
        ..common::options()
    };
    common::proxied_cluster(proxy, options).await
}

#[tokio::test]
async fn snapshots_are_shared_until_the_cluster_changes() {
    let cp = common::control_plane();
    let ns = cp.create_namespace("cache-shared").await;
    let node = common::create_node("n1", None).await;
    bare_pod(&ns, "web-1", Some(&node)).await;
    let cluster = common::real_cluster().await;
    let first = eventually(WAIT, "web-1 in the cache", || async {
        let snap = quiet_snapshot(&cluster).await;
        (pods_in(&snap, &ns) == ["web-1"]).then_some(snap)
    })
    .await;

    bare_pod(&ns, "web-2", Some(&node)).await;
    let second = eventually(WAIT, "web-2 in the cache", || async {
        let snap = cluster.snapshot().await.expect("a snapshot");
        (pods_in(&snap, &ns).len() == 2).then_some(snap)
    })
    .await;
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(
        pods_in(&first, &ns),
        ["web-1"],
        "a snapshot handed out never changes"
    );
    let on_node: Vec<&str> = second.pods_on(&node).map(|p| p.name.as_str()).collect();
    assert_eq!(on_node, ["web-1", "web-2"]);
    let third = quiet_snapshot(&cluster).await;
    assert_eq!(pods_in(&third, &ns), ["web-1", "web-2"]);
}

#[tokio::test]
async fn node_scope_holds_every_node_and_only_its_own_pods() {
    let cp = common::control_plane();
    let (ns, n1, n2) = two_nodes_with_a_pod_each("cache-scope").await;
    bare_pod(&ns, "later", None).await;
    let _: PodDisruptionBudget = common::control_plane()
        .create_in(
            &ns,
            json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "web"},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
            }),
        )
        .await;
    let proxy = ApiFaultProxy::start(cp).await;
    let cluster = node_scoped(&proxy, &n1).await;

    let snap = cluster.snapshot().await.unwrap();
    for name in [&n1, &n2] {
        let node = snap
            .node(name)
            .unwrap_or_else(|| panic!("{name} in the snapshot"));
        assert_eq!(
            node.capacity_type,
            CapacityType::Spot,
            "read from the labels"
        );
    }
    for n in &snap.nodes {
        assert!(n.labels.is_empty() && n.annotations.is_empty(), "{n:?}");
    }
    assert_eq!(
        snap.node_for_instance(&format!("i-{n2}"))
            .map(|n| n.name.as_str()),
        Some(n2.as_str())
    );
    let keys: Vec<String> = snap.pods.iter().map(|p| p.key()).collect();
    assert_eq!(keys, [format!("{ns}/web-1")], "only the pods on {n1}");
    assert!(snap.pdbs.is_empty(), "no PDBs");
    let requests = proxy.requests();
    assert!(
        requests
            .iter()
            .all(|(_, p, _)| !p.contains("poddisruptionbudgets")),
        "PDBs are neither listed nor watched: {requests:?}"
    );
    let pod_requests: Vec<&String> = requests
        .iter()
        .filter(|(_, p, _)| p.starts_with("/api/v1/pods?"))
        .map(|(_, p, _)| p)
        .collect();
    assert!(!pod_requests.is_empty(), "{requests:?}");
    let selector = format!("fieldSelector=spec.nodeName%3D{n1}");
    assert!(
        pod_requests.iter().all(|p| p.contains(&selector)),
        "every pod list and watch is scoped to {n1}: {pod_requests:?}"
    );
}

/// The node-scoped cache follows its field-selected watch on the real API server: a pod the
/// scheduler binds to the node later enters the cache, a pod deleted from it leaves, and a pod
/// bound elsewhere never shows.
#[tokio::test]
async fn node_scope_follows_pods_bound_later_and_deleted() {
    let cp = common::control_plane();
    let (ns, n1, n2) = two_nodes_with_a_pod_each("cache-follow").await;
    // Waits for a node of its own pool, which no node has yet.
    let mut later = common::pod_template("later", &ns, 30);
    later["metadata"]["name"] = json!("later");
    let _: Pod = common::control_plane().create_in(&ns, later).await;
    let proxy = ApiFaultProxy::start(cp).await;
    let cluster = node_scoped(&proxy, &n1).await;
    let cached = || async {
        let snap = cluster.snapshot().await.expect("a snapshot");
        pods_in(&snap, &ns)
    };
    assert_eq!(cached().await, ["web-1"]);

    // n1 joins the pool: the scheduler binds "later" to it.
    Api::<Node>::all(cp.admin_client())
        .patch(
            &n1,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {common::POOL_LABEL: ns}}})),
        )
        .await
        .expect("labelling the node");
    bare_pod(&ns, "web-3", Some(&n2)).await;
    eventually(WAIT, "the bound pod in the cache", || async {
        cached().await.contains(&"later".to_string()).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(cp.admin_client(), &ns);
    let bound = pods.get("later").await.expect("the pod");
    assert_eq!(common::node_of(&bound).as_deref(), Some(n1.as_str()));

    pods.delete("web-1", &DeleteParams::default())
        .await
        .expect("deleting web-1");
    eventually(WAIT, "the deleted pod to leave the cache", || async {
        (cached().await == ["later"]).then_some(())
    })
    .await;
    assert!(
        pods.get_opt("web-1").await.unwrap().is_none(),
        "web-1 is gone"
    );
    assert!(pods.get_opt("web-3").await.unwrap().is_some());
}

#[tokio::test]
async fn caches_list_in_pages() {
    let cp = common::control_plane();
    let ns = cp.create_namespace("cache-pages").await;
    let count = LIST_PAGE_SIZE as usize + 50;
    futures::stream::iter(0..count)
        .map(|i| {
            let ns = ns.clone();
            async move { bare_pod(&ns, &format!("p-{i:03}"), None).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let proxy = ApiFaultProxy::start(cp).await;
    let cluster = common::proxied_cluster(&proxy, common::options()).await;
    let snap = cluster.snapshot().await.unwrap();
    assert_eq!(pods_in(&snap, &ns).len(), count, "every pod, across pages");

    let requests = proxy.requests();
    let lists = |prefix: &str| -> Vec<String> {
        requests
            .iter()
            .filter(|(m, p, _)| m == "GET" && p.starts_with(prefix) && !p.contains("watch="))
            .map(|(_, p, _)| p.clone())
            .collect()
    };
    let limit = format!("limit={LIST_PAGE_SIZE}");
    for prefix in [
        "/api/v1/nodes?",
        "/api/v1/pods?",
        "/apis/policy/v1/poddisruptionbudgets?",
    ] {
        let pages = lists(prefix);
        assert!(!pages.is_empty(), "{prefix} listed: {requests:?}");
        assert!(
            pages.iter().all(|p| p.contains(&limit)),
            "{prefix} in pages of {LIST_PAGE_SIZE}: {pages:?}"
        );
    }
    // More than a page of pods: the first page, then the next ones by continue token.
    let pages = lists("/api/v1/pods?");
    assert!(pages.len() >= 2, "{pages:?}");
    assert!(!pages[0].contains("continue="), "{pages:?}");
    assert!(pages.iter().any(|p| p.contains("continue=")), "{pages:?}");
}

/// A watch the API server ends at once with a `410 Expired` error event (its resourceVersion
/// compacted away, as after a long disconnection): the cache lists again and goes on following
/// the cluster. Watches ask
/// for bookmarks, so a quiet watch keeps a fresh resourceVersion and rarely meets this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_answered_gone_relists_and_keeps_following() {
    let cp = common::control_plane();
    let ns = cp.create_namespace("cache-gone").await;
    let node = common::create_node("gone", None).await;
    bare_pod(&ns, "before", Some(&node)).await;
    let proxy = ApiFaultProxy::start(cp).await;
    const POD_WATCH: &str = "/api/v1/pods?&watch=true";
    proxy.add(
        ApiRule::watch_error(
            "GET",
            POD_WATCH,
            StatusReply::new(410, "Expired", "too old resource version: 1 (2)"),
        )
        .times(1),
    );
    let cluster = common::proxied_cluster(&proxy, common::options()).await;
    let pod_lists = || {
        proxy
            .requests()
            .iter()
            .filter(|(m, p, _)| {
                m == "GET" && p.starts_with("/api/v1/pods?") && !p.contains("watch=")
            })
            .count()
    };
    let relisted = tokio::time::timeout(WAIT, async {
        while !(proxy.injected("GET", POD_WATCH) == 1 && pod_lists() >= 2) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        relisted.is_ok(),
        "the pod watch answered 410 and the pods listed again: {:#?}",
        proxy.requests()
    );

    // Still following: a pod created after the re-list is seen, the first one still is.
    bare_pod(&ns, "after", Some(&node)).await;
    eventually(WAIT, "the new pod in a snapshot", || async {
        let names = pods_in(&cluster.snapshot().await.unwrap(), &ns);
        (names.contains(&"after".to_string()) && names.contains(&"before".to_string()))
            .then_some(())
    })
    .await;
    let watches: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|(_, p, status)| p.contains("watch=true") && *status == 200)
        .map(|(_, p, _)| p)
        .collect();
    assert!(!watches.is_empty(), "watches made");
    assert!(
        watches
            .iter()
            .all(|p| p.contains("allowWatchBookmarks=true")),
        "every watch asks for bookmarks: {watches:?}"
    );
}
