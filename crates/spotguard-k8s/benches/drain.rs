//! Drain of a full node (110 pods) with Spot Guard and with
//! `kubectl drain --ignore-daemonsets --delete-emptydir-data`, each against a fresh fake API
//! server holding the identical cluster. Prints both wall times and their ratio, for a
//! cluster without PodDisruptionBudgets and for one where every app has a 25%
//! `maxUnavailable` budget.
//!
//! Run with `cargo bench -p spotguard-k8s --bench drain` (`SPOTGUARD_BENCH_RUNS` sets the
//! repetitions, default 3; the median is reported).

use std::time::{Duration, Instant};

use serde_json::json;
use spotguard_core::config::DrainOptions;
use spotguard_core::ports::Cluster;
use spotguard_k8s::testing::{
    daemonset_pod, node, pdb_max_unavailable, FakeApiServer, FakeConfig, PodBuilder,
};
use spotguard_k8s::{KubeCluster, KubeClusterOptions};

const APPS: usize = 10;
const PODS_PER_APP: usize = 10;

fn config() -> FakeConfig {
    FakeConfig {
        // The kubelet's shutdown of a pod, and a replacement's start, shortened.
        termination_delay: Duration::from_millis(200),
        replacement_ready_delay: Duration::from_millis(300),
        ..FakeConfig::default()
    }
}

/// 110 pods on `old`: 100 ReplicaSet pods of 10 apps (every fifth with an emptyDir), 9 more
/// DaemonSet pods and one mirror pod; four empty nodes to move to.
async fn cluster(budgets: bool) -> FakeApiServer {
    let fake = FakeApiServer::start_with(config()).await;
    fake.create(node("old", "i-old", "SPOT"));
    for i in 0..4 {
        fake.create(node(&format!("new-{i}"), &format!("i-new-{i}"), "SPOT"));
    }
    for ds in 0..9 {
        let name = format!("agent-{ds}");
        fake.create(json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "namespace": "kube-system"}, "spec": {}}));
        fake.create(daemonset_pod("kube-system", &name, "old"));
    }
    fake.create(
        PodBuilder::new("kube-system", "static-old", "old")
            .owned_by("Node", "old")
            .mirror()
            .build(),
    );
    for app in 0..APPS {
        let name = format!("app-{app}");
        if budgets {
            fake.create(pdb_max_unavailable(
                "shop",
                &format!("{name}-pdb"),
                &name,
                json!("25%"),
            ));
        }
        for i in 0..PODS_PER_APP {
            let mut pod = PodBuilder::new("shop", &format!("{name}-{i}"), "old")
                .owned_by("ReplicaSet", &name)
                .label("app", &name);
            if i % 5 == 0 {
                pod = pod.empty_dir();
            }
            fake.create(pod.build());
        }
    }
    assert_eq!(fake.pods_on("old").len(), 110);
    fake
}

async fn spotguard(budgets: bool) -> Duration {
    let fake = cluster(budgets).await;
    let options = KubeClusterOptions {
        event_reporter: None,
        ..KubeClusterOptions::default()
    };
    let adapter = KubeCluster::from_config(fake.config(), options).expect("clients");
    adapter.ready().await.expect("caches sync");
    let drain = DrainOptions {
        timeout: Duration::from_secs(300),
        ..DrainOptions::default()
    };
    let started = Instant::now();
    adapter
        .set_unschedulable("old", true)
        .await
        .expect("cordon");
    let report = adapter.drain("old", &drain).await.expect("drain");
    let elapsed = started.elapsed();
    assert!(report.is_complete(), "{:?}", report.remaining());
    assert_eq!(report.evicted(), 100);
    assert_eq!(fake.pods_on("old").len(), 10);
    elapsed
}

async fn kubectl(budgets: bool) -> Duration {
    let fake = cluster(budgets).await;
    let kubectl = fake.kubectl();
    // Warm kubectl's discovery cache, as on an operator's machine.
    assert!(kubectl.run(&["get", "nodes"]).await.status.success());
    let started = Instant::now();
    let out = kubectl
        .run(&[
            "drain",
            "old",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=300s",
        ])
        .await;
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fake.pods_on("old").len(), 10);
    elapsed
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let runs: usize = std::env::var("SPOTGUARD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    runtime.block_on(async {
        for budgets in [false, true] {
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            for _ in 0..runs {
                ours.push(spotguard(budgets).await);
                theirs.push(kubectl(budgets).await);
            }
            let (ours, theirs) = (median(ours), median(theirs));
            println!(
                "drain of 110 pods ({}): spotguard {:>8.3}s  kubectl {:>8.3}s  kubectl/spotguard {:.2}x",
                if budgets { "25% maxUnavailable PDBs" } else { "no PDBs" },
                ours.as_secs_f64(),
                theirs.as_secs_f64(),
                theirs.as_secs_f64() / ours.as_secs_f64()
            );
            assert!(ours <= theirs, "Spot Guard must drain at least as fast as kubectl");
        }
    });
}
