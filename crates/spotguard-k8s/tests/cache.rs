//! The watch caches: shared views, a node-scoped cache for agents, and the API server fake's
//! field-selector lists and watches they rely on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod as KPod;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use spotguard_core::model::CapacityType;
use spotguard_core::ports::Cluster;
use spotguard_k8s::testing::{node, pdb_min_available, FakeApiServer, PodBuilder};
use spotguard_k8s::{CacheScope, KubeCluster, KubeClusterOptions};

/// An unscheduled pod.
fn pending(namespace: &str, name: &str) -> serde_json::Value {
    let mut pod = PodBuilder::new(namespace, name, "unset").build();
    pod["spec"].as_object_mut().unwrap().remove("nodeName");
    pod
}

fn bind(fake: &FakeApiServer, namespace: &str, name: &str, node: &str) {
    fake.modify("", "pods", Some(namespace), name, |p| {
        p["spec"]["nodeName"] = json!(node);
    });
}

/// The next watch event, as (type, pod name).
async fn next_event(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<KPod>>> + Unpin),
) -> (&'static str, String) {
    let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a watch event within 5s")
        .expect("the watch is open")
        .expect("a valid event");
    match event {
        WatchEvent::Added(p) => ("ADDED", p.name_any()),
        WatchEvent::Modified(p) => ("MODIFIED", p.name_any()),
        WatchEvent::Deleted(p) => ("DELETED", p.name_any()),
        other => panic!("unexpected event {other:?}"),
    }
}

#[tokio::test]
async fn fake_field_selector_lists_and_watches_follow_the_selection() {
    let fake = FakeApiServer::start().await;
    fake.create_all([node("n1", "i-1", "SPOT"), node("n2", "i-2", "SPOT")]);
    fake.create(PodBuilder::new("shop", "on-1", "n1").build());
    fake.create(PodBuilder::new("shop", "on-2", "n2").build());
    fake.create(pending("shop", "later"));
    let pods: Api<KPod> = Api::all(fake.client());

    let list = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap();
    let names: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, ["on-1"]);
    let version = list.metadata.resource_version.unwrap();

    let params = WatchParams::default().fields("spec.nodeName=n1");
    let mut stream = pods.watch(&params, &version).await.unwrap().boxed();
    // Modified into the selection: ADDED, as the API server reports it.
    bind(&fake, "shop", "later", "n1");
    assert_eq!(next_event(&mut stream).await, ("ADDED", "later".into()));
    // Modified within the selection.
    fake.modify("", "pods", Some("shop"), "later", |p| {
        p["metadata"]["labels"] = json!({"app": "web"});
    });
    assert_eq!(next_event(&mut stream).await, ("MODIFIED", "later".into()));
    // Changes outside the selection are not reported; one leaving it is a DELETED of the
    // object as it was, at the change's resourceVersion.
    fake.modify("", "pods", Some("shop"), "on-2", |p| {
        p["metadata"]["labels"] = json!({"app": "web"});
    });
    bind(&fake, "shop", "later", "n2");
    let event = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WatchEvent::Deleted(gone) = event else {
        panic!("expected DELETED, got {event:?}");
    };
    assert_eq!(gone.name_any(), "later");
    assert_eq!(gone.spec.unwrap().node_name.as_deref(), Some("n1"));
    let now = fake.get("", "pods", Some("shop"), "later").unwrap();
    assert_eq!(
        gone.metadata.resource_version.as_deref(),
        now["metadata"]["resourceVersion"].as_str()
    );
    // A deletion in the selection.
    fake.create(PodBuilder::new("shop", "again", "n1").build());
    assert_eq!(next_event(&mut stream).await, ("ADDED", "again".into()));
    Api::<KPod>::namespaced(fake.client(), "shop")
        .delete("again", &Default::default())
        .await
        .unwrap();
    // Graceful deletion: marked terminating (MODIFIED), then removed (DELETED).
    let mut seen = Vec::new();
    while seen.last() != Some(&("DELETED", "again".to_string())) {
        seen.push(next_event(&mut stream).await);
    }
    assert!(seen.iter().all(|(_, name)| name == "again"), "{seen:?}");
}

#[tokio::test]
async fn snapshots_are_shared_until_the_cluster_changes() {
    let fake = FakeApiServer::start().await;
    fake.create(node("n1", "i-1", "SPOT"));
    fake.create(PodBuilder::new("shop", "web-1", "n1").build());
    let cluster = common::cluster(&fake).await;
    let first = cluster.snapshot().await.unwrap();
    let again = cluster.snapshot().await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "no change, same snapshot");

    fake.create(PodBuilder::new("shop", "web-2", "n1").build());
    let changed = common::eventually(Duration::from_secs(5), || {
        cluster.cache().snapshot().unwrap().pods.len() == 2
    })
    .await;
    assert!(changed, "the new pod reaches the cache");
    let second = cluster.snapshot().await.unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(first.pods.len(), 1, "a snapshot handed out never changes");
    let on_n1: Vec<&str> = second.pods_on("n1").map(|p| p.name.as_str()).collect();
    assert_eq!(on_n1, ["web-1", "web-2"]);
    assert!(Arc::ptr_eq(&second, &cluster.snapshot().await.unwrap()));
}

#[tokio::test]
async fn node_scope_holds_every_node_and_only_its_own_pods() {
    let fake = FakeApiServer::start().await;
    fake.create_all([node("n1", "i-1", "SPOT"), node("n2", "i-2", "SPOT")]);
    fake.create(
        PodBuilder::new("shop", "web-1", "n1")
            .label("app", "web")
            .build(),
    );
    fake.create(
        PodBuilder::new("shop", "web-2", "n2")
            .label("app", "web")
            .build(),
    );
    fake.create(pending("shop", "later"));
    fake.create(pdb_min_available("shop", "web", "web", json!(1)));
    let options = KubeClusterOptions {
        cache_scope: CacheScope::Node { name: "n1".into() },
        ..common::options()
    };
    let cluster = KubeCluster::from_config(fake.config(), options).unwrap();
    tokio::time::timeout(Duration::from_secs(10), cluster.ready())
        .await
        .expect("nodes and pods listed in time")
        .unwrap();

    let snap = cluster.snapshot().await.unwrap();
    let nodes: Vec<&str> = snap.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(nodes, ["n1", "n2"], "every node");
    for n in &snap.nodes {
        assert!(n.labels.is_empty() && n.annotations.is_empty(), "{n:?}");
        assert_eq!(n.capacity_type, CapacityType::Spot, "read from the labels");
    }
    assert_eq!(
        snap.node_for_instance("i-2").map(|n| n.name.as_str()),
        Some("n2")
    );
    let pods: Vec<&str> = snap.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pods, ["web-1"], "only the pods on n1");
    assert!(snap.pdbs.is_empty(), "no PDBs");
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .all(|(_, p, _)| !p.contains("poddisruptionbudgets")),
        "PDBs are not listed nor watched: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .filter(|(_, p, _)| p.starts_with("/api/v1/pods?"))
            .all(|(_, p, _)| p.contains("fieldSelector=spec.nodeName%3Dn1")),
        "every pod list and watch is scoped to n1: {requests:?}"
    );

    // A pod scheduled onto n1 later enters the cache; pods elsewhere never do.
    bind(&fake, "shop", "later", "n1");
    fake.create(PodBuilder::new("shop", "web-3", "n2").build());
    let followed = common::eventually(Duration::from_secs(5), || {
        let snap = cluster.cache().snapshot().unwrap();
        snap.pods.iter().any(|p| p.name == "later")
    })
    .await;
    assert!(followed, "the bound pod reaches the cache");
    fake.modify("", "pods", Some("shop"), "web-1", |p| {
        p["spec"]["nodeName"] = json!("n2");
    });
    let left = common::eventually(Duration::from_secs(5), || {
        let snap = cluster.cache().snapshot().unwrap();
        !snap.pods.iter().any(|p| p.name == "web-1")
    })
    .await;
    assert!(left, "a pod leaving n1 leaves the cache");
    let snap = cluster.snapshot().await.unwrap();
    let pods: Vec<&str> = snap.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pods, ["later"]);
}

#[tokio::test]
async fn fake_lists_in_pages() {
    let fake = FakeApiServer::start().await;
    for i in 0..7 {
        fake.create(PodBuilder::new("shop", &format!("web-{i}"), "n1").build());
    }
    fake.create(PodBuilder::new("other", "elsewhere", "n2").build());
    let pods: Api<KPod> = Api::all(fake.client());
    let mut params = ListParams::default().fields("spec.nodeName=n1").limit(3);
    let mut pages = Vec::new();
    let mut versions = Vec::new();
    loop {
        let page = pods.list(&params).await.unwrap();
        pages.push(page.items.iter().map(|p| p.name_any()).collect::<Vec<_>>());
        versions.push(page.metadata.resource_version.clone().unwrap());
        // A change between pages does not move the list's resourceVersion.
        fake.create(PodBuilder::new("zz", &format!("late-{}", pages.len()), "n3").build());
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(
        pages,
        [
            vec!["web-0", "web-1", "web-2"],
            vec!["web-3", "web-4", "web-5"],
            vec!["web-6"]
        ]
    );
    assert!(versions.iter().all(|v| *v == versions[0]), "{versions:?}");
    let all = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 11);
    assert!(all.metadata.continue_.is_none_or(|t| t.is_empty()));
}

#[tokio::test]
async fn caches_list_in_pages() {
    let fake = FakeApiServer::start().await;
    for i in 0..250 {
        fake.create(node(&format!("n{i:03}"), &format!("i-{i:03}"), "SPOT"));
    }
    let cluster = common::cluster(&fake).await;
    assert_eq!(cluster.snapshot().await.unwrap().nodes.len(), 250);
    let node_lists = fake
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "GET" && p.starts_with("/api/v1/nodes?") && !p.contains("watch="))
        .count();
    assert_eq!(
        node_lists,
        3,
        "250 nodes in pages of {}",
        spotguard_k8s::cache::LIST_PAGE_SIZE
    );
}
