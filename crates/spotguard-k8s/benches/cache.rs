//! The watch cache at scale, on the real control plane of spotguard-testkit-k8s (etcd,
//! kube-apiserver, controller manager, scheduler; kwok plays the kubelets): 1,000 and 5,000
//! kwok nodes with 30 pods each, listed and watched through the real `KubeCluster`. Measures
//! the first sync, a snapshot while nothing changed (the shared view), a snapshot after one pod
//! changed (the view rebuilt from the cache), and one safety decision on that view — what the
//! monitor pays per tick in a cluster that never stands still.
//!
//! The cluster is built first and its creation timed: nodes, then pods bound with
//! `spec.nodeName` (so the scheduler has nothing to do), posted many at a time, until kwok has
//! made every pod Running; then one ReplicaSet per 150 pods adopts them (the pods are created
//! before their ReplicaSets, so no ReplicaSet ever creates one of its own). A larger size grows
//! the same cluster, and is only attempted when the rate measured so far says it takes less
//! than `SPOTGUARD_BENCH_CACHE_LIMIT_MINUTES` (default 15); otherwise the bench prints how
//! long it would take. The API server's and etcd's memory (from /proc) is printed with it.
//!
//! Run with `cargo bench -p spotguard-k8s --bench cache` (`SPOTGUARD_BENCH_CACHE_NODES`, a
//! comma-separated list of sizes, default `1000,5000`).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use spotguard_core::config::Config;
use spotguard_core::predicates::safety::SafetyIndex;
use spotguard_k8s::{KubeCluster, KubeClusterOptions};
use spotguard_testkit_k8s::{node_is_ready, ControlPlane, NodeBuilder};

mod report;

use report::{load_average, median};

const PODS_PER_NODE: usize = 30;
/// Pods per app (one ReplicaSet each): 200 apps at 1,000 nodes.
const PODS_PER_APP: usize = 150;
/// The first nodes are on-demand (the safety decision judges the first), the rest spot.
const ON_DEMAND_NODES: usize = 50;
/// Creation requests in flight at once.
const IN_FLIGHT: usize = 48;
/// Bound on any one wait for the control plane (kwok, the controllers) while it catches up.
const CATCH_UP: Duration = Duration::from_secs(1800);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{} min {} s", s / 60, s % 60)
}

/// Posts `objects` to `api`, [`IN_FLIGHT`] at a time; a failed request is tried again (an
/// `AlreadyExists` on a retry means the first attempt went through).
async fn create_all<K>(api: &Api<K>, objects: impl Iterator<Item = K>, what: &str)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let started = Instant::now();
    let mut done = 0usize;
    let mut last_report = Instant::now();
    let mut results = futures::stream::iter(objects.map(|object| async move {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => return,
                Err(kube::Error::Api(e)) if e.code == 409 && attempt > 1 => return,
                Err(e) if attempt < 5 => {
                    eprintln!("cache bench: creating {what} (attempt {attempt}): {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("creating {what}: {e}"),
            }
        }
    }))
    .buffer_unordered(IN_FLIGHT);
    while results.next().await.is_some() {
        done += 1;
        if last_report.elapsed() > Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "cache bench: {done} {what} created in {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Memory of a control-plane component, from `/proc/<pid>/status`.
struct Memory {
    rss_mib: f64,
    peak_mib: f64,
}

fn memory(cp: &ControlPlane, component: &str) -> Option<Memory> {
    // The test kit's wrapper writes each component's pid to `<dir>/pids/<name>`.
    let pid = std::fs::read_to_string(cp.dir().join("pids").join(component)).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Some(Memory {
        rss_mib: field("VmRSS:")?,
        peak_mib: field("VmHWM:")?,
    })
}

fn memory_cell(cp: &ControlPlane, component: &str) -> String {
    match memory(cp, component) {
        Some(m) => format!("{:.0} MiB (peak {:.0})", m.rss_mib, m.peak_mib),
        None => "unknown".into(),
    }
}

fn etcd_db_mib(cp: &ControlPlane) -> f64 {
    let db = cp.dir().join("etcd/member/snap/db");
    std::fs::metadata(Path::new(&db))
        .map(|m| m.len() as f64 / 1_048_576.0)
        .unwrap_or(0.0)
}

/// The cluster as built so far, and how it grows.
struct Cluster {
    client: kube::Client,
    ns: String,
    nodes: usize,
    apps: usize,
}

/// How long one growth took, by phase.
struct Creation {
    nodes: usize,
    pods: usize,
    apps: usize,
    /// Nodes posted and Ready (kwok).
    nodes_ready: Duration,
    /// Pods posted.
    pods_posted: Duration,
    /// Every pod Running (kwok), from the first pod posted.
    pods_running: Duration,
    /// Every ReplicaSet created and owning its pods, all Ready.
    adopted: Duration,
    total: Duration,
}

impl Cluster {
    async fn new() -> Self {
        let cp = ControlPlane::shared();
        Self {
            client: cp.admin_client(),
            ns: cp.create_namespace("shop").await,
            nodes: 0,
            apps: 0,
        }
    }

    /// Adds nodes up to `to`, 30 pods on each, and ReplicaSets owning the new pods.
    async fn grow(&mut self, to: usize) -> Creation {
        let started = Instant::now();
        let (from, first_app) = (self.nodes, self.apps);
        let new_pods = (to - from) * PODS_PER_NODE;
        let new_apps = new_pods.div_ceil(PODS_PER_APP);

        let nodes: Api<Node> = Api::all(self.client.clone());
        let builders = (from..to).map(|i| {
            let capacity = if i < ON_DEMAND_NODES {
                "ON_DEMAND"
            } else {
                "SPOT"
            };
            NodeBuilder::new(&format!("node-{i}"))
                .provider_id(&format!("aws:///us-east-1a/i-{i:08x}"))
                .label("eks.amazonaws.com/capacityType", capacity)
                .cpu("4")
                .memory("16Gi")
                .pods(110)
                .build()
        });
        create_all(&nodes, builders, "nodes").await;
        self.wait_nodes_ready(to).await;
        let nodes_ready = started.elapsed();

        // Pod k of the new ones goes to app k % new_apps: every app spread over many nodes.
        let app_of = |i: usize, p: usize| first_app + ((i - from) * PODS_PER_NODE + p) % new_apps;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let specs = (from..to).flat_map(|i| (0..PODS_PER_NODE).map(move |p| (i, p)));
        let objects = specs.map(|(i, p)| {
            let app = format!("app-{}", app_of(i, p));
            serde_json::from_value::<Pod>(json!({
                "metadata": {"name": format!("{app}-{i}-{p}"), "labels": {"app": app}},
                "spec": {
                    "nodeName": format!("node-{i}"),
                    "containers": [{
                        "name": "app",
                        "image": "registry.invalid/app:1",
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    }],
                },
            }))
            .expect("a pod")
        });
        let pods_started = Instant::now();
        create_all(&pods, objects, "pods").await;
        let pods_posted = pods_started.elapsed();
        self.wait_pods_running().await;
        let pods_running = pods_started.elapsed();

        let mut replicas: BTreeMap<usize, usize> = BTreeMap::new();
        for i in from..to {
            for p in 0..PODS_PER_NODE {
                *replicas.entry(app_of(i, p)).or_default() += 1;
            }
        }
        let adoption_started = Instant::now();
        let sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns);
        let objects = replicas
            .iter()
            .map(|(app, count)| replica_set(&format!("app-{app}"), *count));
        create_all(&sets, objects, "ReplicaSets").await;
        self.wait_adopted(&replicas).await;
        let adopted = adoption_started.elapsed();

        self.nodes = to;
        self.apps = first_app + new_apps;
        Creation {
            nodes: to - from,
            pods: new_pods,
            apps: new_apps,
            nodes_ready,
            pods_posted,
            pods_running,
            adopted,
            total: started.elapsed(),
        }
    }

    async fn wait_nodes_ready(&self, count: usize) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let waited = Instant::now();
        loop {
            let list = nodes.list(&ListParams::default()).await.expect("nodes");
            let ready = list
                .items
                .iter()
                .filter(|n| {
                    n.metadata
                        .name
                        .as_deref()
                        .is_some_and(|name| name.starts_with("node-"))
                })
                .filter(|n| node_is_ready(n))
                .count();
            if ready >= count {
                return;
            }
            assert!(
                waited.elapsed() < CATCH_UP,
                "only {ready} of {count} nodes Ready"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Waits until no pod of the namespace is other than Running.
    async fn wait_pods_running(&self) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let waited = Instant::now();
        let not_running = ListParams::default()
            .fields("status.phase!=Running")
            .limit(1);
        loop {
            let page = pods.list(&not_running).await.expect("pods");
            let more = page
                .metadata
                .continue_
                .as_deref()
                .is_some_and(|c| !c.is_empty());
            if page.items.is_empty() && !more {
                return;
            }
            assert!(
                waited.elapsed() < CATCH_UP,
                "pods still not Running, e.g. {:?}",
                page.items.first().map(|p| &p.metadata.name)
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Waits until every ReplicaSet owns exactly its pods and all are Ready.
    async fn wait_adopted(&self, replicas: &BTreeMap<usize, usize>) {
        let sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns);
        let waited = Instant::now();
        loop {
            let list = sets
                .list(&ListParams::default())
                .await
                .expect("ReplicaSets");
            let settled = list
                .items
                .iter()
                .filter(|rs| {
                    let Some(app) = rs
                        .metadata
                        .name
                        .as_deref()
                        .and_then(|n| n.strip_prefix("app-"))
                        .and_then(|n| n.parse::<usize>().ok())
                    else {
                        return false;
                    };
                    let Some(&want) = replicas.get(&app) else {
                        return false;
                    };
                    let want = Some(want as i32);
                    rs.status.as_ref().is_some_and(|s| {
                        s.observed_generation == rs.metadata.generation
                            && Some(s.replicas) == want
                            && s.ready_replicas == want
                    })
                })
                .count();
            if settled == replicas.len() {
                return;
            }
            assert!(
                waited.elapsed() < CATCH_UP,
                "{settled} of {} ReplicaSets own their Ready pods",
                replicas.len()
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// A ReplicaSet of `replicas` pods of `app`, created after its pods (which it adopts).
fn replica_set(app: &str, replicas: usize) -> ReplicaSet {
    let object: Value = json!({
        "metadata": {"name": app},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "registry.invalid/app:1",
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                }]},
            },
        },
    });
    serde_json::from_value(object).expect("a ReplicaSet")
}

/// CPU time (user and system) this process has used, from `/proc/self/stat`, in the
/// kernel's 10 ms clock ticks: what the controller itself spent, as against the wall time on a
/// machine whose cores the control plane and other work share.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses: utime and stime are the 12th
    // and 13th (fields 14 and 15 of proc(5)).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

struct Row {
    nodes: usize,
    pods: usize,
    sync: Duration,
    sync_cpu: Duration,
    unchanged: Duration,
    rebuilt: Duration,
    rebuilt_cpu: Duration,
    decision: Duration,
}

async fn measure(cluster: &Cluster) -> Row {
    let cp = ControlPlane::shared();
    let (started, cpu) = (Instant::now(), cpu_time());
    let adapter = KubeCluster::from_config(
        cp.admin_config(),
        KubeClusterOptions {
            event_reporter: None,
            sync_timeout: Duration::from_secs(600),
            ..KubeClusterOptions::default()
        },
    )
    .expect("clients");
    adapter.ready().await.expect("caches sync");
    let first = adapter.snapshot_now().await.expect("snapshot");
    let (sync, sync_cpu) = (started.elapsed(), cpu_time().saturating_sub(cpu));
    let pods = cluster.nodes * PODS_PER_NODE;
    assert_eq!(first.pods.len(), pods, "every pod cached, no other");

    // kwok's node heartbeats change the cluster now and then: a measurement a change fell
    // into is taken again.
    let mut unchanged = None;
    for _ in 0..20 {
        let before = adapter.cache().generation();
        let t = Instant::now();
        for _ in 0..1000 {
            black_box(adapter.snapshot_now().await.expect("snapshot"));
        }
        let took = t.elapsed() / 1000;
        if adapter.cache().generation() == before {
            unchanged = Some(took);
            break;
        }
    }
    let unchanged = unchanged.expect("1,000 snapshots without a change in 20 tries");

    let config = Config::default();
    let pods_api: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.ns);
    let mut rebuilt = Vec::new();
    let mut rebuilt_cpu = Vec::new();
    let mut decision = Vec::new();
    for round in 0..5 {
        let before = adapter.cache().generation();
        let name = format!("app-{round}-0-{round}");
        pods_api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {
                    "round": format!("{}-{round}", cluster.nodes),
                }}})),
            )
            .await
            .expect("changing a pod");
        let waited = Instant::now();
        while adapter.cache().generation() == before {
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "the change never reached the cache"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (t, cpu) = (Instant::now(), cpu_time());
        let view = adapter.snapshot_now().await.expect("snapshot");
        rebuilt.push(t.elapsed());
        rebuilt_cpu.push(cpu_time().saturating_sub(cpu));
        let t = Instant::now();
        black_box(SafetyIndex::new(&view, &config).check("i-00000000"));
        decision.push(t.elapsed());
    }
    Row {
        nodes: cluster.nodes,
        pods,
        sync,
        sync_cpu,
        unchanged,
        rebuilt: median(rebuilt),
        rebuilt_cpu: median(rebuilt_cpu),
        decision: median(decision),
    }
}

/// A creation table row: the cluster's size, how it was built, and the control plane's
/// memory then.
struct Built {
    nodes: usize,
    pods: usize,
    apps: usize,
    creation: Creation,
    apiserver: String,
    etcd: String,
    etcd_db_mib: f64,
}

fn main() {
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
    let limit_minutes: f64 = std::env::var("SPOTGUARD_BENCH_CACHE_LIMIT_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15.0);
    let limit = Duration::from_secs_f64(limit_minutes * 60.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cp = ControlPlane::shared();
    eprintln!(
        "cache bench: control plane up in {:.1} s",
        cp.startup_time().as_secs_f64()
    );

    let mut rows = Vec::new();
    let mut built = Vec::new();
    let mut skipped = Vec::new();
    runtime.block_on(async {
        let mut cluster = Cluster::new().await;
        // Time per node (with its 30 pods) measured so far.
        let mut per_node: Option<Duration> = None;
        for n in sizes {
            if n <= cluster.nodes {
                continue;
            }
            if let Some(per_node) = per_node {
                let estimate = per_node * (n - cluster.nodes) as u32;
                if estimate > limit {
                    eprintln!(
                        "cache bench: {n} nodes not attempted: {} estimated",
                        minutes(estimate)
                    );
                    skipped.push((n, cluster.nodes, estimate));
                    continue;
                }
            }
            eprintln!("cache bench: growing to {n} nodes");
            let creation = cluster.grow(n).await;
            per_node = Some(creation.total / creation.nodes as u32);
            eprintln!(
                "cache bench: {n} nodes, {} pods in {}",
                n * PODS_PER_NODE,
                minutes(creation.total)
            );
            let row = measure(&cluster).await;
            built.push(Built {
                nodes: cluster.nodes,
                pods: cluster.nodes * PODS_PER_NODE,
                apps: cluster.apps,
                creation,
                apiserver: memory_cell(cp, "kube-apiserver"),
                etcd: memory_cell(cp, "etcd"),
                etcd_db_mib: etcd_db_mib(cp),
            });
            rows.push(row);
        }
    });

    println!("| nodes | pods | first sync (list in pages of 100) | snapshot, nothing changed | snapshot after one pod changed | safety decision on it |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} s (CPU {:.2} s) | {:.1} µs | {:.1} ms (CPU {:.0} ms) | {:.3} ms |",
            r.nodes,
            r.pods,
            r.sync.as_secs_f64(),
            r.sync_cpu.as_secs_f64(),
            r.unchanged.as_secs_f64() * 1e6,
            ms(r.rebuilt),
            ms(r.rebuilt_cpu),
            ms(r.decision),
        );
    }
    println!();
    println!("| cluster | built from | creation took | pods per second | kube-apiserver RSS | etcd RSS | etcd database |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut from = 0;
    let mut phases = Vec::new();
    for b in &built {
        let c = &b.creation;
        println!(
            "| {} nodes, {} pods, {} ReplicaSets | {} | {} | {:.0} | {} | {} | {:.0} MiB |",
            b.nodes,
            b.pods,
            b.apps,
            if from == 0 {
                "nothing".to_string()
            } else {
                format!("{from} nodes")
            },
            minutes(c.total),
            c.pods as f64 / c.total.as_secs_f64(),
            b.apiserver,
            b.etcd,
            b.etcd_db_mib,
        );
        phases.push(format!(
            "- Growing to {} nodes: {} nodes posted and Ready (kwok) in {:.0} s; {} pods posted ({IN_FLIGHT} requests in flight) in {:.0} s, all Running {:.0} s after the first was posted; {} ReplicaSets created and owning their Ready pods {:.0} s later.",
            b.nodes,
            c.nodes,
            c.nodes_ready.as_secs_f64(),
            c.pods,
            c.pods_posted.as_secs_f64(),
            c.pods_running.as_secs_f64(),
            c.apps,
            c.adopted.as_secs_f64(),
        ));
        from = b.nodes;
    }
    for (n, from, estimate) in &skipped {
        println!(
            "| {n} nodes, {} pods | {from} nodes | not attempted: about {} at the rate measured (limit {limit_minutes:.0} min) | | | | |",
            n * PODS_PER_NODE,
            minutes(*estimate),
        );
    }
    println!();
    for line in phases {
        println!("{line}");
    }
    if let (Some(last), Some((n, _, _))) = (built.last(), skipped.first()) {
        if let Some(m) = memory(cp, "kube-apiserver") {
            let scale = (*n * PODS_PER_NODE) as f64 / last.pods as f64;
            println!(
                "- {n} nodes not attempted: at the rate measured at {} nodes the growth would take longer than the {limit_minutes:.0} min limit. The API server held {:.1} GiB at {} pods; scaled linearly, {} pods would want about {:.0} GiB.",
                last.nodes,
                m.rss_mib / 1024.0,
                last.pods,
                n * PODS_PER_NODE,
                m.rss_mib * scale / 1024.0,
            );
        }
    }
    println!("- CPU is this process's user and system time over the same span (in 10 ms ticks, its watch tasks included): what the controller itself computed, where the wall time also holds the waits for the API server and for a core the control plane or other work was using.");
    println!("- {}", load_average());
}
