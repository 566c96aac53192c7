//! Shared setup of the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};
use spotguard_k8s::testing::{daemonset_pod, node, FakeApiServer, PodBuilder};
use spotguard_k8s::{KubeCluster, KubeClusterOptions};

/// Options for tests: quick sync timeout, events on.
pub fn options() -> KubeClusterOptions {
    KubeClusterOptions {
        sync_timeout: Duration::from_secs(10),
        ..KubeClusterOptions::default()
    }
}

/// A cluster adapter on the fake, caches synced.
pub async fn cluster(fake: &FakeApiServer) -> KubeCluster {
    let cluster = KubeCluster::from_config(fake.config(), options()).expect("clients");
    tokio::time::timeout(Duration::from_secs(10), cluster.ready())
        .await
        .expect("caches sync in time")
        .expect("caches sync");
    cluster
}

/// The DaemonSet object a DaemonSet pod points at (kubectl drain reads it).
pub fn daemonset(namespace: &str, name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "namespace": namespace}, "spec": {}})
}

/// Three spot nodes; `old` holds `replicas` pods of ReplicaSet `web` (app=web), a DaemonSet
/// pod and a mirror pod; the others are empty.
pub fn three_nodes_with_web(fake: &FakeApiServer, replicas: usize) {
    fake.create_all([
        node("old", "i-old", "SPOT"),
        node("new-a", "i-a", "SPOT"),
        node("new-b", "i-b", "SPOT"),
    ]);
    fake.create(daemonset("kube-system", "proxy"));
    fake.create(daemonset_pod("kube-system", "proxy", "old"));
    fake.create(
        PodBuilder::new("kube-system", "etcd-old", "old")
            .owned_by("Node", "old")
            .mirror()
            .build(),
    );
    for i in 0..replicas {
        fake.create(
            PodBuilder::new("shop", &format!("web-{i}"), "old")
                .owned_by("ReplicaSet", "web")
                .label("app", "web")
                .build(),
        );
    }
}

/// Waits until `check` holds, polling every 20ms, for at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}
