//! Snapshots: the nodes, pods and PDBs of the real API server of spotguard-testkit-k8s,
//! translated into the core model, read from watch caches (no list per snapshot).
//!
//! The objects are real: pods of a ReplicaSet placed by the scheduler (their overhead set by
//! a RuntimeClass at admission), a Job's finished pod, a mirror pod, a PDB whose status the
//! disruption controller computes, a kwok node and a node no kubelet ever reported for.

mod common;

use common::WAIT;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node as KNode, Pod as KPod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use spotguard_core::model::{CapacityType, OwnerKind, Resources, SelectorOperator, TaintEffect};
use spotguard_core::ports::Cluster;
use spotguard_testkit_k8s::{eventually, ApiFaultProxy, NodeBuilder, KWOK_NODE_ANNOTATION};

/// A RuntimeClass whose pods carry a fixed overhead of 50m CPU (set by admission).
async fn runtime_class() -> String {
    let name = common::unique_name("overhead");
    let class: RuntimeClass = serde_json::from_value(json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": name},
        "handler": "kwok",
        "overhead": {"podFixed": {"cpu": "50m"}},
    }))
    .expect("a RuntimeClass");
    Api::<RuntimeClass>::all(common::control_plane().admin_client())
        .create(&PostParams::default(), &class)
        .await
        .expect("creating the RuntimeClass");
    name
}

/// A node labelled on-demand the Karpenter way that no kubelet manages (kwok leaves it alone):
/// it never becomes Ready.
async fn node_without_kubelet(prefix: &str) -> String {
    let name = common::unique_name(prefix);
    let mut node = NodeBuilder::new(&name)
        .provider_id(&format!("aws:///us-east-1a/i-{name}"))
        .label("karpenter.sh/capacity-type", "on-demand")
        .build();
    if let Some(annotations) = node.metadata.annotations.as_mut() {
        annotations.remove(KWOK_NODE_ANNOTATION.0);
    }
    Api::<KNode>::all(common::control_plane().admin_client())
        .create(&PostParams::default(), &node)
        .await
        .expect("creating the node");
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_translates_every_field() {
    let cp = common::control_plane();
    let ns = cp.create_namespace("snapshot").await;
    let spot = common::unique_name("spot");
    cp.create_node(
        &NodeBuilder::new(&spot)
            .provider_id(&format!("aws:///us-east-1a/i-{spot}"))
            .label("eks.amazonaws.com/capacityType", "SPOT")
            .label("zone", "a")
            .allocatable("cpu", "3920m")
            .allocatable("memory", "15.5Gi")
            .allocatable("pods", "58"),
    )
    .await;
    let od = node_without_kubelet("od").await;
    let class = runtime_class().await;
    let pods: Api<KPod> = Api::namespaced(cp.admin_client(), &ns);

    let _: ReplicaSet = common::control_plane().create_in(
        &ns,
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "runtimeClassName": class,
                        "nodeSelector": {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": spot},
                        "tolerations": [
                            {"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"},
                            {"operator": "Exists"},
                        ],
                        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpressions": [
                                {"key": "zone", "operator": "In", "values": ["a", "b"]},
                            ]}],
                        }}},
                        "initContainers": [{
                            "name": "init", "image": "registry.invalid/init:1",
                            "resources": {"requests": {"cpu": "2", "memory": "10Mi"}},
                        }],
                        "containers": [{
                            "name": "app", "image": "registry.invalid/app:1",
                            "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}},
                            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                        }],
                        "volumes": [{"name": "scratch", "emptyDir": {}}],
                    },
                },
            },
        }),
    )
    .await;
    let web = common::name_of(&common::wait_for_ready_pods(&pods, "web", 1).await[0]);
    let etcd = common::name_of(&common::mirror_pod(&ns, &spot).await);
    let done = common::finished_job_pod(&ns, "nightly", &spot, "Succeeded", false).await;
    common::bare_pod(&ns, "loner", Some(&od)).await;
    common::pdb(&ns, "web-pdb", "web", json!({"minAvailable": 1}), 1).await;
    // Tainted, cordoned and annotated once its pods run.
    Api::<KNode>::all(cp.admin_client())
        .patch(
            &spot,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"note": "x"}},
                "spec": {
                    "unschedulable": true,
                    "taints": [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}],
                },
            })),
        )
        .await
        .expect("tainting the node");

    let cluster = common::real_cluster().await;
    let key = |pod: &str| format!("{ns}/{pod}");
    let snap = eventually(WAIT, "every object in the cache", || async {
        let snap = cluster.snapshot().await.expect("a snapshot");
        let node_done = snap.node(&spot).is_some_and(|n| {
            n.unschedulable
                && n.annotations.contains_key("note")
                && n.taints.iter().any(|t| t.key == "dedicated")
        });
        let pods_done = [&web, &etcd, &done, &"loner".to_string()]
            .iter()
            .all(|p| snap.pods.iter().any(|q| q.key() == key(p)));
        let pdb_done = snap.pdbs.iter().any(|p| p.key() == key("web-pdb"));
        (node_done && pods_done && pdb_done && snap.node(&od).is_some()).then_some(snap)
    })
    .await;

    let node = snap.node(&spot).unwrap();
    assert_eq!(
        node.instance_id.as_deref(),
        Some(format!("i-{spot}").as_str())
    );
    assert_eq!(node.capacity_type, CapacityType::Spot);
    assert!(node.ready);
    assert!(node.unschedulable);
    let dedicated = node.taints.iter().find(|t| t.key == "dedicated").unwrap();
    assert_eq!(dedicated.effect, TaintEffect::NoSchedule);
    assert_eq!(dedicated.value, "batch");
    assert_eq!(node.annotations.get("note").map(String::as_str), Some("x"));
    assert_eq!(node.allocatable, Resources::new(3920, 16_642_998_272, 58));
    let on_demand = snap.node(&od).unwrap();
    assert_eq!(on_demand.capacity_type, CapacityType::OnDemand);
    assert!(!on_demand.ready, "no kubelet ever reported it Ready");
    assert_eq!(snap.node_for_instance(&format!("i-{od}")).unwrap().name, od);

    let find = |name: &str| snap.pods.iter().find(|p| p.key() == key(name)).unwrap();
    let pod = find(&web);
    assert_eq!(pod.owner, OwnerKind::ReplicaSet);
    assert_eq!(pod.node.as_deref(), Some(spot.as_str()));
    assert!(pod.local_storage && !pod.mirror && !pod.terminal);
    // max(250m, 2 of the init container) + 50m of overhead; max(1Gi, 10Mi)
    assert_eq!(pod.requests, Resources::new(2050, 1 << 30, 1));
    assert_eq!(
        pod.node_selector
            .get("kubernetes.io/arch")
            .map(String::as_str),
        Some("amd64")
    );
    assert_eq!(pod.required_affinity.len(), 1);
    assert_eq!(
        pod.required_affinity[0].match_expressions[0].operator,
        SelectorOperator::In
    );
    assert_eq!(pod.tolerations.len(), 2);
    assert!(pod.tolerations[1].key.is_none());
    let mirror = find(&etcd);
    assert!(mirror.mirror);
    assert_eq!(mirror.owner, OwnerKind::Node);
    let finished = find(&done);
    assert!(finished.terminal);
    assert_eq!(finished.owner, OwnerKind::Job);
    assert_eq!(find("loner").owner, OwnerKind::None);

    let pdb = snap
        .pdbs
        .iter()
        .find(|p| p.key() == key("web-pdb"))
        .unwrap();
    assert_eq!(
        pdb.disruptions_allowed, 0,
        "one healthy pod, minAvailable 1"
    );
    assert!(pdb.covers(pod));
}

#[tokio::test]
async fn snapshots_come_from_watches_and_follow_changes() {
    let cp = common::control_plane();
    let proxy = ApiFaultProxy::start(cp).await;
    let cluster = common::proxied_cluster(&proxy, common::options()).await;
    let lists = || {
        proxy
            .requests()
            .iter()
            .filter(|(m, p, _)| m == "GET" && !p.contains("watch="))
            .count()
    };
    let before = lists();
    for _ in 0..5 {
        cluster.snapshot().await.unwrap();
    }
    assert_eq!(lists(), before, "snapshots do not list the API");
    eventually(WAIT, "the pods watched", || async {
        proxy
            .requests()
            .iter()
            .any(|(_, p, _)| p.starts_with("/api/v1/pods?") && p.contains("watch=true"))
            .then_some(())
    })
    .await;

    let ns = cp.create_namespace("snapshot-watch").await;
    let node = common::create_node("n2", None).await;
    common::bare_pod(&ns, "p", Some(&node)).await;
    eventually(WAIT, "the new node and pod in the snapshot", || async {
        let snap = cluster.snapshot().await.expect("a snapshot");
        let pod = format!("{ns}/p");
        (snap.node(&node).is_some() && snap.pods.iter().any(|p| p.key() == pod)).then_some(())
    })
    .await;
    assert_eq!(lists(), before, "the caches followed through their watches");
}
