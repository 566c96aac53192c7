//! Taints, cordons and annotations: idempotent, and never losing another writer's change.

mod common;

use std::sync::Arc;

use serde_json::{json, Value};
use spotguard_core::model::{Taint, TaintEffect};
use spotguard_core::ports::{Cluster, ClusterError};
use spotguard_k8s::testing::{node, FakeApiServer};

fn taint(key: &str) -> Taint {
    Taint {
        key: key.into(),
        value: "true".into(),
        effect: TaintEffect::NoSchedule,
    }
}

fn taint_keys(fake: &FakeApiServer, name: &str) -> Vec<String> {
    let n = fake.get("", "nodes", None, name).unwrap();
    let mut keys: Vec<String> = n["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    keys
}

fn patches(fake: &FakeApiServer) -> usize {
    fake.requests()
        .iter()
        .filter(|(m, _, _)| m == "PATCH")
        .count()
}

#[tokio::test]
async fn taint_untaint_cordon_annotate_are_idempotent() {
    let fake = FakeApiServer::start().await;
    let mut n = node("n1", "i-1", "SPOT");
    n["spec"]["taints"] = json!([{"key": "other", "value": "x", "effect": "NoExecute"}]);
    fake.create(n);
    let cluster = common::cluster(&fake).await;

    cluster
        .taint("n1", &taint("spotguard.dev/draining"))
        .await
        .unwrap();
    let after_first = patches(&fake);
    cluster
        .taint("n1", &taint("spotguard.dev/draining"))
        .await
        .unwrap();
    assert_eq!(
        patches(&fake),
        after_first,
        "a second identical taint sends nothing"
    );
    assert_eq!(taint_keys(&fake, "n1"), ["other", "spotguard.dev/draining"]);

    // Same key and effect, new value: replaced, not duplicated.
    let mut changed = taint("spotguard.dev/draining");
    changed.value = "v2".into();
    cluster.taint("n1", &changed).await.unwrap();
    let n = fake.get("", "nodes", None, "n1").unwrap();
    let ours: Vec<&Value> = n["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["key"] == "spotguard.dev/draining")
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0]["value"], "v2");

    cluster
        .untaint("n1", "spotguard.dev/draining")
        .await
        .unwrap();
    cluster
        .untaint("n1", "spotguard.dev/draining")
        .await
        .unwrap();
    assert_eq!(taint_keys(&fake, "n1"), ["other"]);

    cluster.set_unschedulable("n1", true).await.unwrap();
    let before = patches(&fake);
    cluster.set_unschedulable("n1", true).await.unwrap();
    assert_eq!(patches(&fake), before);
    assert_eq!(
        fake.get("", "nodes", None, "n1").unwrap()["spec"]["unschedulable"],
        json!(true)
    );
    cluster.set_unschedulable("n1", false).await.unwrap();
    assert!(fake.get("", "nodes", None, "n1").unwrap()["spec"]
        .get("unschedulable")
        .is_none());

    let key = "cluster-autoscaler.kubernetes.io/scale-down-disabled";
    cluster
        .annotate("n1", key, Some("true".into()))
        .await
        .unwrap();
    let before = patches(&fake);
    cluster
        .annotate("n1", key, Some("true".into()))
        .await
        .unwrap();
    assert_eq!(patches(&fake), before);
    assert_eq!(
        fake.get("", "nodes", None, "n1").unwrap()["metadata"]["annotations"][key],
        "true"
    );
    cluster.annotate("n1", key, None).await.unwrap();
    cluster.annotate("n1", key, None).await.unwrap();
    assert!(
        fake.get("", "nodes", None, "n1").unwrap()["metadata"]["annotations"]
            .get(key)
            .is_none()
    );

    assert_eq!(
        cluster.taint("ghost", &taint("k")).await.unwrap_err(),
        ClusterError::UnknownNode {
            node: "ghost".into()
        }
    );
}

#[tokio::test]
async fn a_write_between_read_and_patch_is_retried_and_kept() {
    let fake = FakeApiServer::start().await;
    fake.create(node("n1", "i-1", "SPOT"));
    let cluster = common::cluster(&fake).await;
    // Another controller adds its taint right after each of our next two reads.
    let counter = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = counter.clone();
    fake.interfere_after_reads("", "nodes", None, "n1", 2, move |n| {
        let i = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let taints = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
        let mut taints = taints;
        taints.push(json!({"key": format!("other-{i}"), "effect": "NoSchedule"}));
        n["spec"]["taints"] = json!(taints);
    });
    cluster
        .taint("n1", &taint("spotguard.dev/draining"))
        .await
        .unwrap();
    assert_eq!(
        taint_keys(&fake, "n1"),
        ["other-0", "other-1", "spotguard.dev/draining"]
    );
    let refused = fake
        .requests()
        .iter()
        .filter(|(m, _, code)| m == "PATCH" && *code == 422)
        .count();
    assert_eq!(
        refused, 2,
        "both stale patches were refused by the resourceVersion test"
    );
}

#[tokio::test]
async fn endless_interference_gives_up_with_conflict() {
    let fake = FakeApiServer::start().await;
    fake.create(node("n1", "i-1", "SPOT"));
    let cluster = common::cluster(&fake).await;
    fake.interfere_after_reads("", "nodes", None, "n1", u32::MAX, |n| {
        n["metadata"]["labels"]["churn"] = json!(n["metadata"]["resourceVersion"].clone());
    });
    let err = cluster.set_unschedulable("n1", true).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::Conflict { ref node, attempts } if node == "n1" && attempts == 10),
        "{err:?}"
    );
    assert!(fake.get("", "nodes", None, "n1").unwrap()["spec"]
        .get("unschedulable")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_racing_lose_no_taint() {
    let fake = FakeApiServer::start().await;
    fake.create(node("n1", "i-1", "SPOT"));
    let a = Arc::new(common::cluster(&fake).await);
    let b = Arc::new(common::cluster(&fake).await);
    let mut tasks = Vec::new();
    for (writer, cluster) in [("a", a.clone()), ("b", b.clone())] {
        for i in 0..12 {
            let cluster = cluster.clone();
            tasks.push(tokio::spawn(async move {
                cluster.taint("n1", &taint(&format!("{writer}-{i}"))).await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let keys = taint_keys(&fake, "n1");
    assert_eq!(
        keys.len(),
        24,
        "every taint of both writers is there: {keys:?}"
    );
    // Remove half concurrently while the other half is re-added: still nothing lost.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            a.untaint("n1", &format!("a-{i}")).await
        }));
        tasks.push(tokio::spawn(async move {
            b.taint("n1", &taint(&format!("b-{i}"))).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let keys = taint_keys(&fake, "n1");
    assert_eq!(
        keys,
        (0..12)
            .map(|i| format!("b-{i}"))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
}
