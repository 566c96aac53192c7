//! Taints, cordons and annotations: idempotent, and never losing another writer's change.
//! On real kwok nodes of the test kit's control plane: idempotence, the API server's answer to
//! a stale resourceVersion `test`, a writer between read and patch, a writer that never stops
//! (the adapter gives up with a conflict), two writers racing.

mod common;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use spotguard_core::model::{Taint, TaintEffect};
use spotguard_core::ports::{Cluster, ClusterError};

fn taint(key: &str) -> Taint {
    Taint {
        key: key.into(),
        value: "true".into(),
        effect: TaintEffect::NoSchedule,
    }
}

fn nodes() -> Api<Node> {
    Api::all(common::control_plane().admin_client())
}

async fn get_node(name: &str) -> Node {
    nodes().get(name).await.expect("reading the node")
}

async fn taint_keys(name: &str) -> Vec<String> {
    let mut keys: Vec<String> = get_node(name)
        .await
        .spec
        .and_then(|s| s.taints)
        .into_iter()
        .flatten()
        .map(|t| t.key)
        .collect();
    keys.sort();
    keys
}

fn node_path(name: &str) -> String {
    format!("/api/v1/nodes/{name}")
}

/// A kwok node named after `prefix`, with no taint of its own.
async fn plain_node(prefix: &str) -> String {
    common::create_node(prefix, None).await
}

#[tokio::test]
async fn taint_untaint_cordon_annotate_are_idempotent() {
    let name = common::unique_name("n1");
    common::control_plane()
        .create_node(&common::NodeBuilder::new(&name).taint("other", "x", "NoExecute"))
        .await;
    let (cluster, recorder) = common::recording_cluster().await;
    let patches = || recorder.statuses("PATCH", &node_path(&name)).len();

    cluster
        .taint(&name, &taint("spotguard.dev/draining"))
        .await
        .unwrap();
    let after_first = patches();
    assert_eq!(after_first, 1);
    cluster
        .taint(&name, &taint("spotguard.dev/draining"))
        .await
        .unwrap();
    assert_eq!(
        patches(),
        after_first,
        "a second identical taint sends nothing"
    );
    assert_eq!(taint_keys(&name).await, ["other", "spotguard.dev/draining"]);

    // Same key and effect, new value: replaced, not duplicated.
    let mut changed = taint("spotguard.dev/draining");
    changed.value = "v2".into();
    cluster.taint(&name, &changed).await.unwrap();
    let taints = get_node(&name).await.spec.unwrap().taints.unwrap();
    let ours: Vec<_> = taints
        .iter()
        .filter(|t| t.key == "spotguard.dev/draining")
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].value.as_deref(), Some("v2"));
    let other = taints.iter().find(|t| t.key == "other").unwrap();
    assert_eq!(
        (other.value.as_deref(), other.effect.as_str()),
        (Some("x"), "NoExecute")
    );

    cluster
        .untaint(&name, "spotguard.dev/draining")
        .await
        .unwrap();
    let before = patches();
    cluster
        .untaint(&name, "spotguard.dev/draining")
        .await
        .unwrap();
    assert_eq!(patches(), before);
    assert_eq!(taint_keys(&name).await, ["other"]);

    cluster.set_unschedulable(&name, true).await.unwrap();
    let before = patches();
    cluster.set_unschedulable(&name, true).await.unwrap();
    assert_eq!(patches(), before);
    assert_eq!(
        get_node(&name).await.spec.unwrap().unschedulable,
        Some(true)
    );
    cluster.set_unschedulable(&name, false).await.unwrap();
    assert_eq!(get_node(&name).await.spec.unwrap().unschedulable, None);

    let key = "cluster-autoscaler.kubernetes.io/scale-down-disabled";
    cluster
        .annotate(&name, key, Some("true".into()))
        .await
        .unwrap();
    let before = patches();
    cluster
        .annotate(&name, key, Some("true".into()))
        .await
        .unwrap();
    assert_eq!(patches(), before);
    let annotations = get_node(&name).await.metadata.annotations.unwrap();
    assert_eq!(annotations[key], "true");
    assert!(
        annotations.contains_key(spotguard_testkit_k8s::KWOK_NODE_ANNOTATION.0),
        "other annotations kept"
    );
    cluster.annotate(&name, key, None).await.unwrap();
    let before = patches();
    cluster.annotate(&name, key, None).await.unwrap();
    assert_eq!(patches(), before);
    assert!(!get_node(&name)
        .await
        .metadata
        .annotations
        .unwrap()
        .contains_key(key));
    assert!(
        recorder
            .statuses("PATCH", &node_path(&name))
            .iter()
            .all(|c| *c == 200),
        "{:?}",
        recorder.requests()
    );

    let ghost = common::unique_name("ghost");
    assert_eq!(
        cluster.taint(&ghost, &taint("k")).await.unwrap_err(),
        ClusterError::UnknownNode { node: ghost }
    );
}

// ---------------------------------------------------------------------------------------------
// Conflicts. kube-apiserver v1.37.2 answers a JSON patch whose `test` of
// `/metadata/resourceVersion` fails (another writer came between the read and the patch) with
// `422 Invalid` and only the generic message "the server rejected our request due to an error
// in our request", no causes (see
// `the_api_server_answers_a_stale_resource_version_test_with_a_bare_422` below). The adapter
// therefore re-reads the node on a 422 and retries when it moved; the other writers below act
// between its read and its patch through `common::Recorder::set_hook`, or race it for real.
// ---------------------------------------------------------------------------------------------

/// The API server's answer to a JSON patch whose resourceVersion `test` is stale: the answer
/// the adapter's node writes must treat as a conflict.
#[tokio::test]
async fn the_api_server_answers_a_stale_resource_version_test_with_a_bare_422() {
    let name = plain_node("stale").await;
    let read = get_node(&name).await;
    let stale = read
        .metadata
        .resource_version
        .clone()
        .expect("a resourceVersion");
    nodes()
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"other-writer": "was-here"}}})),
        )
        .await
        .expect("another writer");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": stale},
        {"op": "add", "path": "/spec/unschedulable", "value": true},
    ]))
    .expect("a JSON patch");
    match nodes()
        .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert_eq!(status.reason, "Invalid", "{status:?}");
            eprintln!("a stale resourceVersion test is answered {status:?}");
        }
        other => panic!("a stale resourceVersion test was answered {other:?}"),
    }
    let node = get_node(&name).await;
    assert_eq!(
        node.spec.unwrap().unschedulable,
        None,
        "the patch changed nothing"
    );
    assert_eq!(node.metadata.labels.unwrap()["other-writer"], "was-here");
}

/// Another controller adds its taint right after each of the adapter's next two reads of
/// the node (the answer to the read is held back while it writes): the stale patch is refused
/// by the real API server, and the write that finally lands keeps both other taints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_between_read_and_patch_is_retried_and_kept() {
    let name = plain_node("interfere").await;
    let (cluster, recorder) = common::recording_cluster().await;
    let path = node_path(&name);
    let mut left = 2u32;
    let (hook_name, hook_path) = (name.clone(), path.clone());
    recorder.set_hook(Box::new(move |method, p, status| {
        if method != "GET" || p != hook_path || status != 200 || left == 0 {
            return None;
        }
        left -= 1;
        let (name, i) = (hook_name.clone(), left);
        Some(Box::pin(async move {
            let node = get_node(&name).await;
            let mut taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
            taints.push(k8s_openapi::api::core::v1::Taint {
                key: format!("other-{i}"),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
            nodes()
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"taints": taints}})),
                )
                .await
                .expect("the other writer");
        }))
    }));
    cluster
        .taint(&name, &taint("spotguard.dev/draining"))
        .await
        .unwrap();
    assert_eq!(
        taint_keys(&name).await,
        ["other-0", "other-1", "spotguard.dev/draining"]
    );
    // The first patch is stale and refused; the adapter re-reads (the second interference may
    // land on the read that checks whether the node moved) and its last patch lands.
    let patches = recorder.statuses("PATCH", &path);
    assert_eq!(patches.first(), Some(&422), "{patches:?}");
    assert_eq!(patches.last(), Some(&200), "{patches:?}");
}

/// Another writer that never stops: it changes the node right after each of the adapter's
/// reads (the answer to the read is held back while it writes), so every patch is stale. The
/// adapter gives up after its bounded attempts with a conflict, and its change is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_interference_gives_up_with_conflict() {
    let name = plain_node("churn").await;
    let (cluster, recorder) = common::recording_cluster().await;
    let path = node_path(&name);
    let (hook_name, hook_path) = (name.clone(), path.clone());
    let mut writes = 0u32;
    recorder.set_hook(Box::new(move |method, p, status| {
        if method != "GET" || p != hook_path || status != 200 {
            return None;
        }
        writes += 1;
        let (name, n) = (hook_name.clone(), writes);
        Some(Box::pin(async move {
            nodes()
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"churn": n.to_string()}}})),
                )
                .await
                .expect("the other writer");
        }))
    }));
    let err = cluster.set_unschedulable(&name, true).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::Conflict { ref node, attempts } if *node == name && attempts == 10),
        "{err:?}"
    );
    assert_eq!(get_node(&name).await.spec.unwrap().unschedulable, None);
    let patches = recorder.statuses("PATCH", &path);
    assert_eq!(patches.len(), 10, "one patch per attempt: {patches:?}");
    assert!(patches.iter().all(|c| *c == 422), "{patches:?}");
}

/// Two processes writing taints on one real node at once: the API server refuses every stale
/// patch (a bare 422 for the failed resourceVersion `test`), each write starts over from a
/// fresh read, and no writer's taint is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_racing_lose_no_taint() {
    let name = plain_node("race").await;
    let (a, recorder) = common::recording_cluster().await;
    let a = Arc::new(a);
    let b = Arc::new(common::real_cluster().await);
    let mut tasks = Vec::new();
    for (writer, cluster) in [("a", a.clone()), ("b", b.clone())] {
        for i in 0..6 {
            let (cluster, name) = (cluster.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                cluster.taint(&name, &taint(&format!("{writer}-{i}"))).await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let keys = taint_keys(&name).await;
    assert_eq!(
        keys.len(),
        12,
        "every taint of both writers is there: {keys:?}"
    );
    // Remove one writer's taints while the other re-adds its own: still nothing lost.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (a, b, name_a, name_b) = (a.clone(), b.clone(), name.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            a.untaint(&name_a, &format!("a-{i}")).await
        }));
        tasks.push(tokio::spawn(async move {
            b.taint(&name_b, &taint(&format!("b-{i}"))).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let expected: Vec<String> = (0..6).map(|i| format!("b-{i}")).collect();
    assert_eq!(taint_keys(&name).await, expected);
    assert!(
        recorder.statuses("PATCH", &node_path(&name)).contains(&422),
        "the writers did collide: {:?}",
        recorder.requests()
    );
}
