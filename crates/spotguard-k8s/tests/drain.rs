//! Drain through the Eviction API: PDBs respected (never violated, waited for, named when
//! they block), DaemonSet/mirror/finished pods skipped, local-storage and unmanaged pods
//! handled like `kubectl drain`, 5xx retried, grace period override, a bound on evictions in
//! flight.
//!
//! On the real control plane of spotguard-testkit-k8s: the eviction API answers from the
//! PodDisruptionBudgets' status as the disruption controller computes it, ReplicaSets replace
//! evicted pods, the scheduler places the replacements, and kwok (playing the kubelets of the
//! tests' nodes) makes pods Ready and completes graceful deletions. Server errors and slow
//! eviction answers come from the fault proxy in front of the API server. Each test works in
//! namespaces and on nodes of its own.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{name_of, node_of, pod_is_ready, Recorder, WAIT};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::json;
use spotguard_core::config::DrainOptions;
use spotguard_core::ports::{Cluster, ClusterError, PodOutcome, SkipReason};
use spotguard_k8s::KubeCluster;
use spotguard_testkit_k8s::eventually;

fn options(timeout: Duration) -> DrainOptions {
    DrainOptions {
        timeout,
        ..DrainOptions::default()
    }
}

fn outcome<'a>(report: &'a spotguard_core::ports::DrainReport, pod: &str) -> &'a PodOutcome {
    &report
        .pods
        .iter()
        .find(|p| p.pod == pod)
        .unwrap_or_else(|| panic!("{pod} in {report:?}"))
        .outcome
}

/// A node to drain ("old") holding `web` pods of a ReplicaSet, a DaemonSet pod and a mirror
/// pod, and a second node of the same pool for the replacements, created once the web pods
/// run on the old one.
struct Fixture {
    ns: String,
    old: String,
    new: String,
    pods: Api<Pod>,
    cluster: KubeCluster,
    recorder: Arc<Recorder>,
}

impl Fixture {
    async fn start(prefix: &str, replicas: i32) -> Self {
        let cp = common::control_plane();
        let ns = cp.create_namespace(prefix).await;
        let pool = ns.clone();
        let old = common::create_node("old", Some(&pool)).await;
        let pods: Api<Pod> = Api::namespaced(cp.admin_client(), &ns);

        common::daemon_set_on(&ns, "proxy", &old).await;
        common::mirror_pod(&ns, &old).await;
        if replicas > 0 {
            let _: ReplicaSet = common::control_plane()
                .create_in(&ns, common::replica_set("web", &pool, replicas))
                .await;
            let web = common::wait_for_ready_pods(&pods, "web", replicas as usize).await;
            assert!(web
                .iter()
                .all(|p| node_of(p).as_deref() == Some(old.as_str())));
        }
        common::wait_for_ready_pods(&pods, "proxy", 1).await;
        let new = common::create_node("new", Some(&pool)).await;
        let (cluster, recorder) = common::recording_cluster().await;
        Self {
            ns,
            old,
            new,
            pods,
            cluster,
            recorder,
        }
    }

    fn key(&self, pod: &str) -> String {
        format!("{}/{pod}", self.ns)
    }

    /// The pods now bound to the old node: `name → uid`.
    async fn on_old(&self) -> BTreeMap<String, String> {
        common::pods_on_node(&self.old).await
    }

    async fn web_names(&self) -> Vec<String> {
        common::app_pods(&self.pods, "web")
            .await
            .iter()
            .map(name_of)
            .collect()
    }

    /// The eviction requests sent so far: `(pod, status)`.
    fn evictions(&self) -> Vec<(String, u16)> {
        let prefix = format!("/api/v1/namespaces/{}/pods/", self.ns);
        self.recorder
            .requests()
            .into_iter()
            .filter(|(m, p, _)| m == "POST" && p.ends_with("/eviction"))
            .filter_map(|(_, p, c)| {
                let pod = p.strip_prefix(&prefix)?.strip_suffix("/eviction")?;
                Some((pod.to_string(), c))
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdb_blocks_then_allows_and_is_never_violated() {
    let fx = Fixture::start("drain-pdb", 3).await;
    common::pdb(&fx.ns, "web-pdb", "web", json!({"minAvailable": 2}), 3).await;
    fx.cluster.set_unschedulable(&fx.old, true).await.unwrap();
    let watch = common::ReadyWatch::start(&fx.pods, "web").await;
    let before = fx.web_names().await;

    let report = fx
        .cluster
        .drain(&fx.old, &options(Duration::from_secs(180)))
        .await
        .unwrap();

    assert!(report.is_complete(), "{:?}", report.remaining());
    assert_eq!(report.evicted(), 3);
    for pod in &before {
        assert_eq!(outcome(&report, &fx.key(pod)), &PodOutcome::Evicted);
    }
    // The replacements run on the new node, Ready.
    let moved = common::wait_for_ready_pods(&fx.pods, "web", 3).await;
    assert!(
        moved
            .iter()
            .all(|p| node_of(p).as_deref() == Some(fx.new.as_str())),
        "{:?}",
        moved.iter().map(node_of).collect::<Vec<_>>()
    );
    let (low_water, before_each) = watch.stop();
    assert!(
        low_water >= 2,
        "at no time fewer Ready pods than minAvailable: {low_water}"
    );
    // Only one disruption at a time is allowed: each eviction waited until the previous
    // pod's replacement was Ready.
    assert_eq!(before_each, [3, 3, 3], "Ready pods before each eviction");
    let evictions = fx.evictions();
    // Evictions the budget forbade were answered 429 and retried by the drain. (Whether any
    // 429 shows depends on timing: the API server itself retries an eviction whose update of
    // the PDB's status conflicted with a concurrent one, pausing 500 ms each time, and may
    // then find the replacement Ready and answer 201. The Ready counts above are the proof.)
    let accepted: Vec<&String> = evictions
        .iter()
        .filter(|(_, c)| *c == 201)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(accepted.len(), 3, "{evictions:?}");
    assert!(
        evictions.iter().all(|(_, c)| *c == 201 || *c == 429),
        "{evictions:?}"
    );
}

#[tokio::test]
async fn blocked_pods_are_reported_with_their_pdb_on_timeout() {
    let fx = Fixture::start("drain-blocked", 2).await;
    common::pdb(&fx.ns, "web-pdb", "web", json!({"maxUnavailable": 0}), 2).await;
    let on_old = fx.on_old().await;
    let report = fx
        .cluster
        .drain(&fx.old, &options(Duration::from_secs(3)))
        .await
        .unwrap();
    assert!(!report.is_complete());
    let pdb = format!("{}/web-pdb", fx.ns);
    for pod in fx.web_names().await {
        assert_eq!(
            outcome(&report, &fx.key(&pod)),
            &PodOutcome::Blocked {
                pdb: Some(pdb.clone())
            }
        );
    }
    assert_eq!(fx.on_old().await, on_old, "nothing was evicted");
    assert!(
        report.remaining()[0].contains(&format!("blocked by PDB {pdb}")),
        "{:?}",
        report.remaining()
    );
    let evictions = fx.evictions();
    assert!(!evictions.is_empty());
    assert!(evictions.iter().all(|(_, c)| *c == 429), "{evictions:?}");
}

#[tokio::test]
async fn daemonset_mirror_and_finished_pods_stay() {
    let fx = Fixture::start("drain-skip", 1).await;
    let done = common::finished_job_pod(&fx.ns, "nightly-done", &fx.old, "Succeeded", false).await;
    let failed = common::finished_job_pod(&fx.ns, "nightly-failed", &fx.old, "Failed", true).await;
    fx.cluster.set_unschedulable(&fx.old, true).await.unwrap();
    let web = fx.web_names().await.remove(0);
    let proxy = name_of(&common::app_pods(&fx.pods, "proxy").await[0]);
    let mirror = format!("etcd-{}", fx.old);
    let before = fx.on_old().await;

    let report = fx
        .cluster
        .drain(&fx.old, &options(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(report.is_complete(), "{:?}", report.remaining());
    assert_eq!(
        outcome(&report, &fx.key(&proxy)),
        &PodOutcome::Skipped(SkipReason::DaemonSet)
    );
    assert_eq!(
        outcome(&report, &fx.key(&mirror)),
        &PodOutcome::Skipped(SkipReason::Mirror)
    );
    assert_eq!(
        outcome(&report, &fx.key(&done)),
        &PodOutcome::Skipped(SkipReason::Terminal)
    );
    assert_eq!(
        outcome(&report, &fx.key(&failed)),
        &PodOutcome::Skipped(SkipReason::Terminal)
    );
    assert_eq!(outcome(&report, &fx.key(&web)), &PodOutcome::Evicted);
    let mut expected = before.clone();
    expected.remove(&web);
    assert_eq!(
        fx.on_old().await,
        expected,
        "the skipped pods stay, the same pods (UIDs)"
    );
    assert_eq!(fx.evictions(), [(web, 201)], "one eviction, of the web pod");
}

#[tokio::test]
async fn local_storage_and_unmanaged_pods_refuse_the_whole_drain_unless_allowed() {
    let fx = Fixture::start("drain-refuse", 2).await;
    let cp = common::control_plane();
    let pool = fx.ns.clone();
    let mut cache = common::replica_set("cache", &pool, 1);
    cache["spec"]["template"]["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": fx.old});
    cache["spec"]["template"]["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let _: ReplicaSet = common::control_plane().create_in(&fx.ns, cache).await;
    let cache = name_of(&common::wait_for_ready_pods(&fx.pods, "cache", 1).await[0]);
    // (The cache's replacement, pinned to the old node, stays Pending once it is cordoned: the
    // drain waits only for the evicted pod to go.)
    let misc = cp.create_namespace("misc").await;
    let loner: Pod = common::control_plane().create_in(
        &misc,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "loner", "labels": {"app": "loner"}},
            "spec": {"nodeName": fx.old, "containers": [{"name": "loner", "image": "registry.invalid/loner:1"}]},
        }),
    )
    .await;
    let misc_pods: Api<Pod> = Api::namespaced(cp.admin_client(), &misc);
    common::wait_for_ready_pods(&misc_pods, "loner", 1).await;
    let loner_key = format!("{misc}/{}", name_of(&loner));
    fx.cluster.set_unschedulable(&fx.old, true).await.unwrap();
    let web = fx.web_names().await;
    let before = fx.on_old().await;
    assert_eq!(before.len(), 6, "{before:?}");

    let strict = DrainOptions {
        delete_emptydir_data: false,
        force: false,
        ..options(Duration::from_secs(60))
    };
    let report = fx.cluster.drain(&fx.old, &strict).await.unwrap();
    assert!(!report.is_complete());
    assert!(
        matches!(outcome(&report, &fx.key(&cache)), PodOutcome::Failed { message } if message.contains("emptyDir"))
    );
    assert!(
        matches!(outcome(&report, &loner_key), PodOutcome::Failed { message } if message.contains("controller"))
    );
    assert!(
        matches!(outcome(&report, &fx.key(&web[0])), PodOutcome::Failed { message } if message.contains("refused"))
    );
    assert_eq!(fx.on_old().await, before, "nothing was evicted");
    assert!(fx.evictions().is_empty());

    // emptyDir allowed but not force: still refused because of the unmanaged pod.
    let report = fx
        .cluster
        .drain(
            &fx.old,
            &DrainOptions {
                delete_emptydir_data: true,
                ..strict.clone()
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(outcome(&report, &fx.key(&cache)), PodOutcome::Failed { message } if message.contains("refused"))
    );
    assert!(
        matches!(outcome(&report, &loner_key), PodOutcome::Failed { message } if message.contains("controller"))
    );
    assert_eq!(fx.on_old().await, before);
    assert!(fx.evictions().is_empty());

    let report = fx
        .cluster
        .drain(
            &fx.old,
            &DrainOptions {
                delete_emptydir_data: true,
                force: true,
                ..strict
            },
        )
        .await
        .unwrap();
    assert!(report.is_complete(), "{:?}", report.remaining());
    assert_eq!(report.evicted(), 4);
    let left: Vec<String> = fx.on_old().await.into_keys().collect();
    let mut stay = vec![
        format!("etcd-{}", fx.old),
        name_of(&common::app_pods(&fx.pods, "proxy").await[0]),
    ];
    stay.sort();
    assert_eq!(left, stay, "only the DaemonSet and mirror pods stay");
    assert!(
        misc_pods.get_opt("loner").await.unwrap().is_none(),
        "the unmanaged pod is gone for good"
    );
}

/// A pod of a ReplicaSet on the old node whose containers take `delay` to stop once deleted
/// (kwok's delete delay), with a 90 s termination grace period.
async fn slow_pod(fx: &Fixture, delay: &str) -> Pod {
    let mut rs = common::replica_set("slow", &fx.ns, 1);
    rs["spec"]["template"]["metadata"]["annotations"] =
        json!({common::POD_DELETE_DELAY_ANNOTATION: delay});
    rs["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(90);
    rs["spec"]["template"]["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": fx.old});
    let _: ReplicaSet = common::control_plane().create_in(&fx.ns, rs).await;
    common::wait_for_ready_pods(&fx.pods, "slow", 1)
        .await
        .remove(0)
}

#[tokio::test]
async fn the_grace_period_override_reaches_the_api_server() {
    let fx = Fixture::start("drain-grace", 0).await;
    let pod = slow_pod(&fx, "80s").await;
    let name = name_of(&pod);
    fx.cluster.set_unschedulable(&fx.old, true).await.unwrap();
    // A 7 s override of the pod's 90 s: the pod is deleted with 7 s of grace (its containers
    // would take 80 s: still terminating when this short drain ends).
    let drain = DrainOptions {
        grace_period: Some(Duration::from_secs(7)),
        ..options(Duration::from_secs(2))
    };
    let report = fx.cluster.drain(&fx.old, &drain).await.unwrap();
    assert!(
        matches!(outcome(&report, &fx.key(&name)), PodOutcome::Failed { message } if message.contains("terminating")),
        "{report:?}"
    );
    let pod = fx.pods.get(&name).await.expect("still terminating");
    assert!(pod.metadata.deletion_timestamp.is_some());
    assert_eq!(pod.metadata.deletion_grace_period_seconds, Some(7));
    assert_eq!(fx.evictions(), [(name.clone(), 201)]);

    // Zero grace: the API server deletes the pod at once, whatever its containers would take.
    let second = slow_pod_after(&fx, &name).await;
    let drain = DrainOptions {
        grace_period: Some(Duration::ZERO),
        ..options(Duration::from_secs(60))
    };
    let report = fx.cluster.drain(&fx.old, &drain).await.unwrap();
    assert!(report.is_complete(), "{:?}", report.remaining());
    assert_eq!(outcome(&report, &fx.key(&second)), &PodOutcome::Evicted);
    assert!(fx.pods.get_opt(&second).await.unwrap().is_none());
}

/// Waits for the `slow` ReplicaSet's replacement of `replaced` (on the old node, uncordoned
/// for it) and returns its name.
async fn slow_pod_after(fx: &Fixture, replaced: &str) -> String {
    fx.cluster.set_unschedulable(&fx.old, false).await.unwrap();
    let pod = eventually(WAIT, "the slow pod's replacement, Ready", || async {
        common::app_pods(&fx.pods, "slow")
            .await
            .into_iter()
            .find(|p| name_of(p) != replaced && pod_is_ready(p))
    })
    .await;
    fx.cluster.set_unschedulable(&fx.old, true).await.unwrap();
    name_of(&pod)
}

#[tokio::test]
async fn evicted_pods_still_terminating_at_timeout_are_reported() {
    let fx = Fixture::start("drain-slow", 0).await;
    let name = name_of(&slow_pod(&fx, "80s").await);
    fx.cluster.set_unschedulable(&fx.old, true).await.unwrap();
    let report = fx
        .cluster
        .drain(&fx.old, &options(Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(
        matches!(outcome(&report, &fx.key(&name)), PodOutcome::Failed { message } if message.contains("terminating")),
        "{report:?}"
    );
    let pod = fx.pods.get(&name).await.expect("still terminating");
    assert!(pod.metadata.deletion_timestamp.is_some());
    assert_eq!(pod.metadata.deletion_grace_period_seconds, Some(90));
}

#[tokio::test]
async fn an_unknown_node_is_an_error() {
    let cluster = common::real_cluster().await;
    let ghost = common::unique_name("ghost");
    assert_eq!(
        cluster
            .drain(&ghost, &options(Duration::from_secs(10)))
            .await
            .unwrap_err(),
        ClusterError::UnknownNode { node: ghost }
    );
}

/// Evictions answered 503 (through the fault proxy in front of the real API server) are
/// retried, and the pod is evicted once the API server answers.
#[tokio::test]
async fn server_errors_are_retried() {
    let cp = common::control_plane();
    let proxy = spotguard_testkit_k8s::ApiFaultProxy::start(cp).await;
    let namespace = cp.create_namespace("drain-5xx").await;
    let node = common::create_node("old", None).await;
    let _: Pod = common::control_plane()
        .create_in(
            &namespace,
            json!({
                "metadata": {"name": "app", "namespace": namespace},
                "spec": {
                    "nodeName": node,
                    "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
                },
            }),
        )
        .await;
    let pods: Api<Pod> = Api::namespaced(cp.admin_client(), &namespace);
    eventually(WAIT, "the pod Ready", || async {
        pods.get("app").await.ok().filter(pod_is_ready)
    })
    .await;
    proxy.inject(
        "POST",
        "/pods/app/eviction",
        spotguard_testkit_k8s::StatusReply::service_unavailable(),
        2,
    );
    let cluster =
        KubeCluster::from_config(proxy.admin_config(), common::options()).expect("clients");
    common::wait_ready(&cluster).await;
    let drain = DrainOptions {
        // The pod has no controller: evicted only with force, as with kubectl drain.
        force: true,
        grace_period: Some(Duration::ZERO),
        ..options(WAIT)
    };
    let report = cluster.drain(&node, &drain).await.unwrap();
    assert!(report.is_complete(), "{:?}", report.remaining());
    let codes: Vec<u16> = proxy
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "POST" && p.contains("/pods/app/eviction"))
        .map(|(_, _, c)| c)
        .collect();
    assert_eq!(codes, [503, 503, 201], "{:?}", proxy.requests());
    assert_eq!(proxy.injected("POST", "/pods/app/eviction"), 2);
}

/// At most `concurrency` evictions are in flight at once, and the drain keeps that many
/// going: counted at the fault proxy, which holds every eviction a while before the API
/// server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bounds_evictions_in_flight() {
    let common::Web { ns, node: old, .. } = common::Web::start("drain-in-flight", "old", 12).await;
    let proxy = spotguard_testkit_k8s::ApiFaultProxy::start(common::control_plane()).await;
    let cluster = common::proxied_cluster(&proxy, common::options()).await;
    // Cordoned, and no other node in the pool: the replacements stay Pending.
    cluster.set_unschedulable(&old, true).await.unwrap();
    let evictions = format!("/api/v1/namespaces/{ns}/pods/");
    proxy.add(spotguard_testkit_k8s::ApiRule::delay(
        "POST",
        &evictions,
        Duration::from_secs(1),
    ));

    let report = cluster
        .drain(
            &old,
            &DrainOptions {
                concurrency: 3,
                ..options(WAIT)
            },
        )
        .await
        .unwrap();
    assert!(report.is_complete(), "{:?}", report.remaining());
    assert_eq!(report.evicted(), 12);
    assert!(common::pods_on_node(&old).await.is_empty());
    let sent = proxy
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "POST" && p.starts_with(&evictions) && p.ends_with("/eviction"))
        .count();
    assert_eq!(sent, 12, "one eviction per pod: {:?}", proxy.requests());
    assert_eq!(
        proxy.max_in_flight("POST", &evictions),
        3,
        "three evictions at a time, no more, no fewer"
    );
}
