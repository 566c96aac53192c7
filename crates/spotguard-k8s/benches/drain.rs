//! Drain of a full node (110 pods) with Spot Guard and with
//! `kubectl drain --ignore-daemonsets --delete-emptydir-data` of the same release, on the real
//! control plane of spotguard-testkit-k8s (etcd, kube-apiserver, controller manager,
//! scheduler; kwok plays the kubelets). Prints both wall times and their ratio, for a cluster
//! without PodDisruptionBudgets and for one where every app has a 25% `maxUnavailable`
//! budget, and checks that neither tool ever took an app below what its budget allows.
//!
//! Each drain gets a fresh, identical set-up: its own namespace, the node to drain holding
//! 100 pods of 10 ReplicaSets (two of them with `emptyDir` storage), 9 DaemonSet pods and a
//! mirror pod, and four empty nodes of the same pool for the replacements. Spot Guard's drain
//! is `Cluster::drain` of `KubeCluster` after a cordon, as the daemon runs it (caches synced
//! beforehand, as in a running controller); kubectl's includes its own start-up, as an
//! operator's does. The two tools alternate, run after run.
//!
//! Run with `cargo bench -p spotguard-k8s --bench drain` (`SPOTGUARD_BENCH_RUNS` sets the
//! runs per tool and scenario, default 3; the median is reported).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::TryStreamExt as _;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams};
use kube::client::ClientBuilder;
use kube::runtime::{reflector, watcher};
use kube::Api;
use serde_json::{json, Value};
use spotguard_core::config::DrainOptions;
use spotguard_core::ports::Cluster;
use spotguard_k8s::{KubeCluster, KubeClusterOptions};
use spotguard_testkit_k8s::{eventually, pod_is_ready, ControlPlane, POD_DELETE_DELAY_ANNOTATION};
use tower::util::MapResponseLayer;

#[path = "../tests/common/mod.rs"]
mod common;
mod report;

use report::{load_average, median};

const APPS: usize = 10;
const PODS_PER_APP: usize = 10;
const DAEMONSETS: usize = 9;
const SPARE_NODES: usize = 4;
/// Pods on the drained node: the apps' pods, the DaemonSet pods and one mirror pod.
const PODS_ON_NODE: usize = APPS * PODS_PER_APP + DAEMONSETS + 1;
/// How long each app pod's containers take to stop once deleted (kwok's delay): a common
/// `preStop` pause that lets load balancers stop sending traffic before the process exits.
const STOP_DELAY: &str = "5s";
/// Bound on the control plane's asynchronous work on a loaded machine.
const WAIT: Duration = Duration::from_secs(180);

// kubectl's defaults that bound its drain, as in its source (k8s.io/kubectl and
// k8s.io/client-go v0.37.2, the release the bench runs):
/// `interval: 1 * time.Second` of `waitForDelete` in `evictPods`
/// (staging/src/k8s.io/kubectl/pkg/drain/drain.go).
const KUBECTL_DELETE_POLL_SECS: f64 = 1.0;
/// `EvictErrorRetryDelay: 5 * time.Second` in `NewDrainCmdOptions`
/// (staging/src/k8s.io/kubectl/pkg/cmd/drain/drain.go): the sleep after a 429.
const KUBECTL_429_WAIT_SECS: f64 = 5.0;
/// `DefaultQPS = 5.0`, `DefaultBurst = 10` (staging/src/k8s.io/client-go/rest/config.go):
/// kubectl sets no QPS of its own for API calls (only discovery gets 50/300), so each API
/// group's client of its clientset gets a token bucket of its own at these rates.
const CLIENT_GO_QPS: f64 = 5.0;
const CLIENT_GO_BURST: f64 = 10.0;

fn app(i: usize) -> String {
    format!("app-{i}")
}

/// The node to drain and its pods, and the spare nodes; everything in a namespace of its own.
struct Setup {
    ns: String,
    old: String,
    nodes: Vec<String>,
    /// `disruptionsAllowed` of each app's PDB before the drain (`None` without PDBs).
    allowed: Option<usize>,
}

async fn pods_on(client: &kube::Client, ns: &str, node: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .expect("listing pods")
        .items
}

impl Setup {
    async fn start(budgets: bool) -> Self {
        let cp = ControlPlane::shared();
        let client = cp.admin_client();
        let ns = cp.create_namespace("bench-drain").await;
        let old = common::create_node("old", Some(&ns)).await;

        // A mirror pod (of a static pod) and DaemonSet pods: both tools leave them.
        common::mirror_pod(&ns, &old).await;
        for d in 0..DAEMONSETS {
            common::daemon_set_on(&ns, &format!("agent-{d}"), &old).await;
        }
        for a in 0..APPS {
            let _: ReplicaSet = cp
                .create_in(&ns, replica_set(&app(a), &ns, a % 5 == 0))
                .await;
        }
        eventually(WAIT, "110 Ready pods on the node to drain", || async {
            let pods = pods_on(&client, &ns, &old).await;
            (pods.len() == PODS_ON_NODE && pods.iter().all(pod_is_ready)).then_some(())
        })
        .await;

        let allowed = if budgets {
            for a in 0..APPS {
                let budget = json!({"maxUnavailable": "25%"});
                let name = format!("{}-pdb", app(a));
                common::pdb(&ns, &name, &app(a), budget, PODS_PER_APP as i32).await;
            }
            Some(budgets_allowed(&client, &ns).await)
        } else {
            None
        };

        let spares = (0..SPARE_NODES).map(|_| common::create_node("spare", Some(&ns)));
        let spares: Vec<String> = join_all(spares).await;
        let mut nodes = spares;
        nodes.push(old.clone());
        Self {
            ns,
            old,
            nodes,
            allowed,
        }
    }

    /// Deletes the namespace and the nodes, and waits until the namespace is gone, so the
    /// next measurement runs on a quiet control plane.
    async fn remove(self) {
        let client = ControlPlane::shared().admin_client();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .delete(&self.ns, &DeleteParams::default())
            .await
            .expect("deleting the namespace");
        let (api, ns) = (&namespaces, &self.ns);
        eventually(WAIT, "the namespace to be deleted", || async move {
            api.get_opt(ns)
                .await
                .expect("reading the namespace")
                .is_none()
                .then_some(())
        })
        .await;
        let nodes: Api<Node> = Api::all(client);
        for node in &self.nodes {
            nodes
                .delete(node, &DeleteParams::default())
                .await
                .expect("deleting a node");
        }
    }
}

/// A ReplicaSet of [`PODS_PER_APP`] pods of `name` on the nodes of `pool`, whose containers
/// take [`STOP_DELAY`] to stop (within their 30 s grace period).
fn replica_set(name: &str, pool: &str, empty_dir: bool) -> Value {
    let mut set = common::replica_set(name, pool, PODS_PER_APP as i32);
    let template = &mut set["spec"]["template"];
    template["metadata"]["annotations"] = json!({POD_DELETE_DELAY_ANNOTATION: STOP_DELAY});
    if empty_dir {
        template["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
        template["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "scratch", "mountPath": "/scratch"}]);
    }
    set
}

/// The disruptions each app's PDB allows, as the disruption controller computed them (the
/// same for all: 3 of 10 for 25%).
async fn budgets_allowed(client: &kube::Client, ns: &str) -> usize {
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let allowed: BTreeSet<i32> = budgets
        .list(&ListParams::default())
        .await
        .expect("listing the PDBs")
        .items
        .iter()
        .map(|pdb| {
            pdb.status
                .as_ref()
                .and_then(|s| s.disruptions_allowed)
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(allowed.len(), 1, "the PDBs allow alike: {allowed:?}");
    allowed.into_iter().next().unwrap_or(0) as usize
}

/// What a [`ReadyWatch`] saw: the fewest Ready pods of each app, and when the last app pod
/// began terminating (its eviction was accepted).
#[derive(Default)]
struct Seen {
    low_water: BTreeMap<String, usize>,
    last_eviction: Option<Instant>,
}

/// Watches the apps' pods (a reflector's store) and records, after each change the API
/// server's watch reports, the fewest Ready pods any app had and when the last one began
/// terminating.
struct ReadyWatch {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatch {
    async fn start(ns: &str) -> Self {
        let pods: Api<Pod> = Api::namespaced(ControlPlane::shared().admin_client(), ns);
        let apps: Vec<String> = (0..APPS).map(app).collect();
        let selector = format!("app in ({})", apps.join(","));
        let (store, writer) = reflector::store();
        let events = reflector(
            writer,
            watcher(pods, watcher::Config::default().labels(&selector)),
        );
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (shared, view) = (seen.clone(), store.clone());
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            let mut listed = false;
            let mut terminating = BTreeSet::new();
            while let Ok(Some(event)) = events.try_next().await {
                let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
                // An eviction shows as the pod's first change with a deletion timestamp, or
                // as its deletion when it had none.
                let evicted = match &event {
                    watcher::Event::InitDone => {
                        listed = true;
                        false
                    }
                    watcher::Event::Apply(p) if p.metadata.deletion_timestamp.is_some() => {
                        terminating.insert(name(p))
                    }
                    watcher::Event::Delete(p) => terminating.insert(name(p)),
                    _ => false,
                };
                if !listed {
                    continue;
                }
                let mut ready: BTreeMap<&str, usize> =
                    apps.iter().map(|a| (a.as_str(), 0)).collect();
                for pod in view.state().iter().filter(|p| pod_is_ready(p)) {
                    let app = pod.metadata.labels.as_ref().and_then(|l| l.get("app"));
                    if let Some(count) = app.and_then(|a| ready.get_mut(a.as_str())) {
                        *count += 1;
                    }
                }
                let mut seen = shared.lock().unwrap();
                if evicted {
                    seen.last_eviction = Some(Instant::now());
                }
                for (app, count) in ready {
                    let low = seen.low_water.entry(app.to_string()).or_insert(count);
                    *low = (*low).min(count);
                }
            }
        });
        tokio::time::timeout(WAIT, store.wait_until_ready())
            .await
            .expect("the watch lists the pods in time")
            .expect("the watch lists the pods");
        Self { seen, task }
    }

    /// The fewest Ready pods of any app, and how long after `started` the last app pod began
    /// terminating.
    fn stop(self, started: Instant) -> (usize, Duration) {
        self.task.abort();
        let seen = self.seen.lock().unwrap();
        assert_eq!(seen.low_water.len(), APPS, "every app watched");
        let low = seen.low_water.values().copied().min().unwrap_or(0);
        let last = seen
            .last_eviction
            .expect("the watch saw evictions")
            .saturating_duration_since(started);
        (low, last)
    }
}

/// One drain: its wall time, the fewest Ready pods of any app during it, and how many
/// evictions the API server refused with 429.
struct Drained {
    time: Duration,
    /// When the last app pod began terminating, from the start of the drain.
    last_eviction: Duration,
    low_water: usize,
    refused: usize,
}

async fn spotguard(setup: &Setup) -> Drained {
    let cp = ControlPlane::shared();
    // `KubeCluster::from_config`'s two clients (evictions without kube's retry layer), with a
    // counter of the 429 answers to evictions.
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    let count_429 = MapResponseLayer::new(move |response: http::Response<_>| {
        if response.status() == http::StatusCode::TOO_MANY_REQUESTS {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        response
    });
    let config = cp.admin_config();
    let mut eviction_config = config.clone();
    eviction_config.default_retry = false;
    let evictions = ClientBuilder::try_from(eviction_config)
        .expect("a client builder")
        .with_layer(&count_429)
        .build();
    let client = kube::Client::try_from(config).expect("a client");
    let options = KubeClusterOptions {
        sync_timeout: WAIT,
        ..KubeClusterOptions::default()
    };
    let cluster = KubeCluster::with_clients(client, evictions, options);
    cluster.ready().await.expect("caches sync");
    let drain = DrainOptions {
        timeout: Duration::from_secs(300),
        ..DrainOptions::default()
    };
    let watch = ReadyWatch::start(&setup.ns).await;

    let started = Instant::now();
    cluster
        .set_unschedulable(&setup.old, true)
        .await
        .expect("cordon");
    let report = cluster.drain(&setup.old, &drain).await.expect("drain");
    let time = started.elapsed();

    let (low_water, last_eviction) = watch.stop(started);
    assert!(report.is_complete(), "{:?}", report.remaining());
    assert_eq!(report.evicted(), APPS * PODS_PER_APP);
    Drained {
        time,
        last_eviction,
        low_water,
        refused: refused.load(Ordering::Relaxed),
    }
}

async fn kubectl(setup: &Setup) -> Drained {
    let cp = ControlPlane::shared();
    // Warm kubectl's discovery cache, as on an operator's machine.
    let mut warm = tokio::process::Command::from(cp.kubectl());
    warm.args(["get", "node", &setup.old]);
    assert!(warm.output().await.expect("kubectl").status.success());
    let watch = ReadyWatch::start(&setup.ns).await;

    let mut drain = tokio::process::Command::from(cp.kubectl());
    drain.args([
        "drain",
        &setup.old,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=300s",
    ]);
    let started = Instant::now();
    let out = drain.output().await.expect("kubectl drain");
    let time = started.elapsed();

    let (low_water, last_eviction) = watch.stop(started);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl drain failed: {stderr}");
    Drained {
        time,
        last_eviction,
        low_water,
        // "error when evicting pods/… (will retry after 5s): …" for each 429 (drain.go).
        refused: stderr.matches("will retry after").count(),
    }
}

/// Checks the drained node kept only its DaemonSet and mirror pods and every app is back to
/// all its pods Ready elsewhere.
async fn check_moved(setup: &Setup) {
    let client = ControlPlane::shared().admin_client();
    let left = pods_on(&client, &setup.ns, &setup.old).await;
    assert_eq!(left.len(), DAEMONSETS + 1, "DaemonSet and mirror pods stay");
    let pods: Api<Pod> = Api::namespaced(client, &setup.ns);
    let selector = format!(
        "app in ({})",
        (0..APPS).map(app).collect::<Vec<_>>().join(",")
    );
    eventually(
        WAIT,
        "every app's pods Ready on the spare nodes",
        || async {
            let all = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?
                .items;
            (all.len() == APPS * PODS_PER_APP && all.iter().all(pod_is_ready)).then_some(())
        },
    )
    .await;
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn list(runs: &[Duration]) -> String {
    runs.iter()
        .map(|d| format!("{:.1}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Scenario {
    budgets: bool,
    allowed: Option<usize>,
    ours: Vec<Drained>,
    theirs: Vec<Drained>,
}

impl Scenario {
    fn name(&self) -> &'static str {
        if self.budgets {
            "110 pods, 25% maxUnavailable PDB per app"
        } else {
            "110 pods, no PDBs"
        }
    }

    fn times(runs: &[Drained]) -> Vec<Duration> {
        runs.iter().map(|d| d.time).collect()
    }

    fn low_water(runs: &[Drained]) -> usize {
        runs.iter().map(|d| d.low_water).min().unwrap_or(0)
    }

    fn floor(&self) -> String {
        match self.allowed {
            Some(allowed) => format!("≥ {}", PODS_PER_APP - allowed),
            None => "none".into(),
        }
    }
}

async fn measure(budgets: bool, runs: usize) -> Scenario {
    let mut scenario = Scenario {
        budgets,
        allowed: None,
        ours: Vec::new(),
        theirs: Vec::new(),
    };
    for run in 1..=runs {
        for tool in ["spotguard", "kubectl"] {
            let setup = Setup::start(budgets).await;
            scenario.allowed = setup.allowed;
            let drained = if tool == "spotguard" {
                spotguard(&setup).await
            } else {
                kubectl(&setup).await
            };
            eprintln!(
                "drain bench: {} run {run}/{runs}: {tool} {:.2} s, fewest Ready pods of an app {}, {} evictions refused with 429",
                scenario.name(),
                drained.time.as_secs_f64(),
                drained.low_water,
                drained.refused,
            );
            if let Some(allowed) = setup.allowed {
                assert!(
                    drained.low_water >= PODS_PER_APP - allowed,
                    "{tool} took an app down to {} Ready pods; its PDB allows {allowed} of {PODS_PER_APP} down",
                    drained.low_water
                );
            }
            check_moved(&setup).await;
            setup.remove().await;
            if tool == "spotguard" {
                scenario.ours.push(drained);
            } else {
                scenario.theirs.push(drained);
            }
        }
    }
    scenario
}

fn report(scenarios: &[Scenario], runs: usize) {
    println!("| scenario | Spot Guard (median of {runs}) | kubectl drain (median of {runs}) | kubectl / Spot Guard | fewest Ready pods of an app, Spot Guard / kubectl (PDB floor) |");
    println!("|---|---:|---:|---:|---:|");
    for s in scenarios {
        let (ours, theirs) = (
            median(Scenario::times(&s.ours)),
            median(Scenario::times(&s.theirs)),
        );
        println!(
            "| {} | {} | {} | {:.1}x | {} / {} of {PODS_PER_APP} ({}) |",
            s.name(),
            secs(ours),
            secs(theirs),
            theirs.as_secs_f64() / ours.as_secs_f64(),
            Scenario::low_water(&s.ours),
            Scenario::low_water(&s.theirs),
            s.floor(),
        );
    }
    println!();
    let stop: f64 = STOP_DELAY.trim_end_matches('s').parse().expect("seconds");
    let evictions = (APPS * PODS_PER_APP) as f64;
    let rate_floor = (evictions - CLIENT_GO_BURST) / CLIENT_GO_QPS;
    let refused = |runs: &[Drained]| runs.iter().map(|d| d.refused).collect::<Vec<_>>();
    let counts = |n: &[usize]| {
        n.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let last = |runs: &[Drained]| median(runs.iter().map(|d| d.last_eviction).collect());
    let tail = |runs: &[Drained]| {
        median(
            runs.iter()
                .map(|d| d.time.saturating_sub(d.last_eviction))
                .collect(),
        )
    };
    for s in scenarios {
        println!(
            "- {}: each run, Spot Guard {} s, kubectl {} s. The last app pod began terminating (its eviction accepted) {} into Spot Guard's drain and {} into kubectl's, and the drains ended {} and {} after that (medians). Evictions refused with 429, each run: Spot Guard {}, kubectl {}.",
            s.name(),
            list(&Scenario::times(&s.ours)),
            list(&Scenario::times(&s.theirs)),
            secs(last(&s.ours)),
            secs(last(&s.theirs)),
            secs(tail(&s.ours)),
            secs(tail(&s.theirs)),
            counts(&refused(&s.ours)),
            counts(&refused(&s.theirs)),
        );
    }
    println!(
        "- Every app pod takes {stop:.0} s to stop once evicted (kwok's pod-delete delay), so no drain ends before the last eviction plus {stop:.0} s. Spot Guard sends 8 evictions at a time with no client-side rate limit, so its time is that wait, its evictions, and up to 500 ms of its poll of the node's pods (every 50 ms, backing off to 500 ms)."
    );
    println!(
        "- kubectl sends its {evictions:.0} evictions through client-go's client-side rate limit: {CLIENT_GO_QPS:.0} requests/s with a burst of {CLIENT_GO_BURST:.0} (`DefaultQPS = 5.0`, `DefaultBurst = 10` in staging/src/k8s.io/client-go/rest/config.go; kubectl raises them for discovery only, to 50/300 in staging/src/k8s.io/kubectl/pkg/cmd/cmd.go, and its clientset gives each API group a bucket of its own, so the evictions do not share theirs with the pod reads). The last eviction cannot leave before ({evictions:.0} − {CLIENT_GO_BURST:.0}) / {CLIENT_GO_QPS:.0} = {rate_floor:.0} s; then come the {stop:.0} s stop and up to {KUBECTL_DELETE_POLL_SECS:.0} s more, as kubectl checks each evicted pod's deletion once a second (`interval: 1 * time.Second` of `waitForDelete` in `evictPods`, staging/src/k8s.io/kubectl/pkg/drain/drain.go): at least {:.0} s, whatever the cluster. Those deletion checks go through the core group's bucket, also {CLIENT_GO_QPS:.0}/s, shared by every pod waited on, each asking once a second: a deleted pod is noticed late, so kubectl ends more than {stop:.0} s after its last eviction.",
        rate_floor + stop
    );
    let kubectl_refused: usize = scenarios
        .iter()
        .flat_map(|s| s.theirs.iter().map(|d| d.refused))
        .sum();
    let wait = format!(
        "every eviction a budget refuses with 429 costs kubectl a fixed {KUBECTL_429_WAIT_SECS:.0} s sleep before it tries that pod again (`EvictErrorRetryDelay: 5 * time.Second` in `NewDrainCmdOptions`, staging/src/k8s.io/kubectl/pkg/cmd/drain/drain.go), however soon the budget allows the next disruption, where Spot Guard retries after 200 ms, backing off to 2 s"
    );
    println!(
        "- With PDBs, {wait}. The budgets refused kubectl {kubectl_refused} time(s) in these runs: its rate limit spreads its evictions over the 10 apps at {CLIENT_GO_QPS:.0} per second, about one per app every 2 s, which mostly stays under what a budget allows once the app's replacements are Ready, and a 5 s sleep that starts more than 5 s before its last eviction hides behind the rate limit. Spot Guard, 8 evictions at a time, runs into the budgets and waits for them (its 429s above): that wait is why its time grows with PDBs and kubectl's hardly does. With fewer pods per budget or slower-starting replacements, kubectl meets more 429s, each costing that pod 5 s."
    );
    println!("- {}", load_average());
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
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
    let cp = ControlPlane::shared();
    eprintln!(
        "drain bench: control plane up in {:.1} s",
        cp.startup_time().as_secs_f64()
    );
    let scenarios = runtime.block_on(async {
        let mut scenarios = Vec::new();
        for budgets in [false, true] {
            scenarios.push(measure(budgets, runs).await);
        }
        scenarios
    });
    report(&scenarios, runs);
}
