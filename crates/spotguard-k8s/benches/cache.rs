//! The watch cache at scale: 1,000 and 5,000 nodes with 30 pods each, listed from the API
//! server fake through the real `kube::Client`. Measures the first sync, a snapshot while
//! nothing changed (the shared view), a snapshot after one pod changed (the view rebuilt
//! from the cache), and one safety decision on that view — what the monitor pays per tick in
//! a cluster that never stands still.
//!
//! Run with `cargo bench -p spotguard-k8s --bench cache` (`SPOTGUARD_BENCH_CACHE_NODES`, a
//! comma-separated list of sizes, default `1000,5000`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use spotguard_core::config::Config;
use spotguard_core::predicates::safety::SafetyIndex;
use spotguard_k8s::testing::{node, FakeApiServer, PodBuilder};
use spotguard_k8s::{KubeCluster, KubeClusterOptions};

const PODS_PER_NODE: usize = 30;
const APPS: usize = 200;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Row {
    nodes: usize,
    pods: usize,
    sync: Duration,
    unchanged: Duration,
    rebuilt: Duration,
    decision: Duration,
}

async fn measure(nodes: usize) -> Row {
    let fake = FakeApiServer::start().await;
    for i in 0..nodes {
        let name = format!("node-{i}");
        let capacity = if i < 50 { "ON_DEMAND" } else { "SPOT" };
        fake.create(node(&name, &format!("i-{i:08x}"), capacity));
        for p in 0..PODS_PER_NODE {
            let app = format!("app-{}", (i * PODS_PER_NODE + p) % APPS);
            fake.create(
                PodBuilder::new("shop", &format!("{app}-{i}-{p}"), &name)
                    .owned_by("ReplicaSet", &app)
                    .label("app", &app)
                    .requests("100m", "128Mi")
                    .build(),
            );
        }
    }
    let started = Instant::now();
    let cluster = KubeCluster::with_options(
        fake.client(),
        KubeClusterOptions {
            event_reporter: None,
            sync_timeout: Duration::from_secs(600),
            ..KubeClusterOptions::default()
        },
    );
    cluster.ready().await.expect("caches sync");
    let first = cluster.snapshot_now().await.expect("snapshot");
    let sync = started.elapsed();
    assert_eq!(first.pods.len(), nodes * PODS_PER_NODE, "every pod cached");

    let unchanged = {
        let t = Instant::now();
        for _ in 0..1000 {
            black_box(cluster.snapshot_now().await.expect("snapshot"));
        }
        t.elapsed() / 1000
    };

    let config = Config::default();
    let mut rebuilt = Vec::new();
    let mut decision = Vec::new();
    for round in 0..5 {
        let before = cluster.cache().generation();
        let name = format!("app-{round}-0-{round}");
        fake.modify("", "pods", Some("shop"), &name, |pod| {
            pod["metadata"]["labels"]["round"] = round.to_string().into();
        });
        let waited = Instant::now();
        while cluster.cache().generation() == before {
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "the change never reached the cache"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t = Instant::now();
        let view = cluster.snapshot_now().await.expect("snapshot");
        rebuilt.push(t.elapsed());
        let t = Instant::now();
        black_box(SafetyIndex::new(&view, &config).check("i-00000000"));
        decision.push(t.elapsed());
    }
    Row {
        nodes,
        pods: nodes * PODS_PER_NODE,
        sync,
        unchanged,
        rebuilt: median(rebuilt),
        decision: median(decision),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("SPOTGUARD_BENCH_CACHE_NODES")
        .unwrap_or_else(|_| "1000,5000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("SPOTGUARD_BENCH_CACHE_NODES: node counts")
        })
        .collect();
    let mut rows = Vec::new();
    for n in sizes {
        eprintln!("cache bench: {n} nodes");
        rows.push(measure(n).await);
    }
    println!();
    println!("| nodes | pods | first sync (list in pages of 100) | snapshot, nothing changed | snapshot after one pod changed | safety decision on it |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.2} s | {:.1} µs | {:.1} ms | {:.3} ms |",
            r.nodes,
            r.pods,
            r.sync.as_secs_f64(),
            r.unchanged.as_secs_f64() * 1e6,
            ms(r.rebuilt),
            ms(r.decision),
        );
    }
}
