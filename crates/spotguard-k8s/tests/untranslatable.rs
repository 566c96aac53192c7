//! An object the API server accepts but Spot Guard cannot read (a node whose allocatable CPU
//! does not fit in 64 bits of millicores) fails every snapshot, naming the object, the field
//! and the value, until it is fixed.
//!
//! On the real control plane of spotguard-testkit-k8s, in a test binary of its own: such a
//! node fails the snapshots of every cache watching the cluster, so it must not share the
//! control plane with other tests.

mod common;

use common::WAIT;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use spotguard_core::ports::Cluster;
use spotguard_testkit_k8s::{eventually, NodeBuilder};

#[tokio::test]
async fn an_unreadable_quantity_fails_snapshots_naming_object_and_field_until_fixed() {
    let cp = common::control_plane();
    let name = common::unique_name("huge");
    // The API server keeps quantities up to 2^63 - 1: as millicores, more than 64 bits.
    cp.create_node(&NodeBuilder::new(&name).allocatable("cpu", "100E"))
        .await;
    let nodes: Api<Node> = Api::all(cp.admin_client());
    let stored = nodes.get(&name).await.expect("the node").status.unwrap();
    let cpu = stored.allocatable.unwrap()["cpu"].0.clone();
    let cluster = common::real_cluster().await;

    let err = cluster.snapshot().await.unwrap_err().to_string();
    assert!(err.contains(&format!("node/{name}")), "{err}");
    assert!(err.contains("status.allocatable.cpu"), "{err}");
    assert!(err.contains(&cpu), "the value as stored, {cpu}: {err}");

    nodes
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocatable": {"cpu": "3500m"}}})),
        )
        .await
        .expect("fixing the node");
    let snap = eventually(WAIT, "a snapshot again once the node is fixed", || async {
        cluster.snapshot().await.ok()
    })
    .await;
    assert_eq!(
        snap.node(&name).map(|n| n.allocatable.cpu_millis),
        Some(3500)
    );
}
