//! Snapshots: translation of nodes, pods and PDBs served by the fake API server into the core
//! model, read from watch caches (no list per snapshot).

mod common;

use std::time::Duration;

use serde_json::json;
use spotguard_core::model::{CapacityType, OwnerKind, Resources, SelectorOperator, TaintEffect};
use spotguard_core::ports::Cluster;
use spotguard_k8s::testing::{node, pdb_min_available, FakeApiServer, PodBuilder};

#[tokio::test]
async fn snapshot_translates_every_field() {
    let fake = FakeApiServer::start().await;
    let mut spot = node("spot-1", "i-0abc", "SPOT");
    spot["spec"]["taints"] =
        json!([{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}]);
    spot["spec"]["unschedulable"] = json!(true);
    spot["metadata"]["annotations"] = json!({"note": "x"});
    spot["status"]["allocatable"] = json!({"cpu": "3920m", "memory": "15.5Gi", "pods": "58"});
    fake.create(spot);
    let mut karpenter = node("od-1", "i-0def", "ignored");
    karpenter["metadata"]["labels"] = json!({"karpenter.sh/capacity-type": "on-demand"});
    karpenter["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    fake.create(karpenter);
    let mut pod = PodBuilder::new("shop", "web-1", "spot-1")
        .owned_by("ReplicaSet", "web-abc")
        .label("app", "web")
        .requests("250m", "1Gi")
        .empty_dir()
        .build();
    pod["spec"]["nodeSelector"] = json!({"kubernetes.io/arch": "amd64"});
    pod["spec"]["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}, {"operator": "Exists"}]);
    pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}
    ]}}});
    pod["spec"]["initContainers"] = json!([{"name": "init", "image": "i", "resources": {"requests": {"cpu": "2", "memory": "10Mi"}}}]);
    pod["spec"]["overhead"] = json!({"cpu": "50m"});
    fake.create(pod);
    fake.create(
        PodBuilder::new("kube-system", "etcd", "spot-1")
            .owned_by("Node", "spot-1")
            .mirror()
            .build(),
    );
    fake.create(
        PodBuilder::new("jobs", "done", "spot-1")
            .owned_by("Job", "nightly")
            .phase("Succeeded")
            .build(),
    );
    fake.create(PodBuilder::new("misc", "loner", "od-1").build());
    fake.create(pdb_min_available("shop", "web-pdb", "web", json!(1)));

    let cluster = common::cluster(&fake).await;
    let snap = cluster.snapshot().await.unwrap();

    let spot = snap.node("spot-1").unwrap();
    assert_eq!(spot.instance_id.as_deref(), Some("i-0abc"));
    assert_eq!(spot.capacity_type, CapacityType::Spot);
    assert!(spot.ready);
    assert!(spot.unschedulable);
    assert_eq!(spot.taints.len(), 1);
    assert_eq!(spot.taints[0].effect, TaintEffect::NoSchedule);
    assert_eq!(spot.taints[0].value, "batch");
    assert_eq!(spot.annotations.get("note").map(String::as_str), Some("x"));
    assert_eq!(spot.allocatable, Resources::new(3920, 16_642_998_272, 58));
    let od = snap.node("od-1").unwrap();
    assert_eq!(od.capacity_type, CapacityType::OnDemand);
    assert!(!od.ready);
    assert_eq!(snap.node_for_instance("i-0def").unwrap().name, "od-1");

    let web = snap.pods.iter().find(|p| p.name == "web-1").unwrap();
    assert_eq!(web.owner, OwnerKind::ReplicaSet);
    assert_eq!(web.node.as_deref(), Some("spot-1"));
    assert!(web.local_storage && !web.mirror && !web.terminal);
    // max(250m, 2 init) + 50m overhead; max(1Gi, 10Mi)
    assert_eq!(web.requests, Resources::new(2050, 1 << 30, 1));
    assert_eq!(
        web.node_selector
            .get("kubernetes.io/arch")
            .map(String::as_str),
        Some("amd64")
    );
    assert_eq!(web.required_affinity.len(), 1);
    assert_eq!(
        web.required_affinity[0].match_expressions[0].operator,
        SelectorOperator::In
    );
    assert_eq!(web.tolerations.len(), 2);
    assert!(web.tolerations[1].key.is_none());
    let etcd = snap.pods.iter().find(|p| p.name == "etcd").unwrap();
    assert!(etcd.mirror);
    assert_eq!(etcd.owner, OwnerKind::Node);
    let done = snap.pods.iter().find(|p| p.name == "done").unwrap();
    assert!(done.terminal);
    assert_eq!(done.owner, OwnerKind::Job);
    assert_eq!(
        snap.pods.iter().find(|p| p.name == "loner").unwrap().owner,
        OwnerKind::None
    );

    assert_eq!(snap.pdbs.len(), 1);
    let pdb = &snap.pdbs[0];
    assert_eq!(pdb.key(), "shop/web-pdb");
    assert_eq!(
        pdb.disruptions_allowed, 0,
        "one healthy pod, minAvailable 1"
    );
    assert!(pdb.covers(web));
}

#[tokio::test]
async fn snapshots_come_from_watches_and_follow_changes() {
    let fake = FakeApiServer::start().await;
    fake.create(node("n1", "i-1", "SPOT"));
    let cluster = common::cluster(&fake).await;
    let lists_before = fake
        .requests()
        .iter()
        .filter(|(m, p, _)| m == "GET" && !p.contains("watch="))
        .count();
    for _ in 0..5 {
        cluster.snapshot().await.unwrap();
    }
    let lists_after = fake
        .requests()
        .iter()
        .filter(|(m, p, _)| m == "GET" && !p.contains("watch="))
        .count();
    assert_eq!(lists_before, lists_after, "snapshots must not list the API");
    let watching = common::eventually(Duration::from_secs(5), || {
        fake.requests()
            .iter()
            .any(|(_, p, _)| p.starts_with("/api/v1/pods?") && p.contains("watch=true"))
    })
    .await;
    assert!(watching, "pods are watched: {:?}", fake.requests());

    fake.create(node("n2", "i-2", "ON_DEMAND"));
    fake.create(PodBuilder::new("default", "p", "n2").build());
    let mut seen = false;
    for _ in 0..100 {
        let snap = cluster.snapshot().await.unwrap();
        if snap.node("n2").is_some() && snap.pods.iter().any(|p| p.name == "p") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "the caches follow additions through the watch");
}

#[tokio::test]
async fn malformed_quantity_fails_the_snapshot_naming_object_and_field() {
    let fake = FakeApiServer::start().await;
    let mut bad = node("n1", "i-1", "SPOT");
    bad["status"]["allocatable"]["memory"] = json!("16 GB");
    fake.create(bad);
    let cluster = common::cluster(&fake).await;
    let err = cluster.snapshot().await.unwrap_err().to_string();
    assert!(err.contains("node/n1"), "{err}");
    assert!(err.contains("status.allocatable.memory"), "{err}");
    assert!(err.contains("16 GB"), "{err}");
}
