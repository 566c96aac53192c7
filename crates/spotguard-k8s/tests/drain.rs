//! Drain through the Eviction API: PDBs respected (never violated, waited for, named when
//! they block), DaemonSet/mirror/finished pods skipped, local-storage and unmanaged pods
//! handled like `kubectl drain`, 5xx retried, grace period override.

mod common;

use std::time::Duration;

use serde_json::json;
use spotguard_core::config::DrainOptions;
use spotguard_core::ports::{Cluster, ClusterError, PodOutcome, SkipReason};
use spotguard_k8s::testing::{
    node, pdb_max_unavailable, pdb_min_available, FakeApiServer, FakeConfig, PodBuilder,
};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdb_blocks_then_allows_and_is_never_violated() {
    let fake = FakeApiServer::start_with(FakeConfig {
        termination_delay: Duration::from_millis(100),
        replacement_ready_delay: Duration::from_millis(400),
        ..FakeConfig::default()
    })
    .await;
    common::three_nodes_with_web(&fake, 3);
    fake.create(pdb_min_available("shop", "web-pdb", "web", json!(2)));
    let cluster = common::cluster(&fake).await;
    fake.track_pdb_low_water();
    cluster.set_unschedulable("old", true).await.unwrap();

    let started = std::time::Instant::now();
    let report = cluster
        .drain("old", &options(Duration::from_secs(20)))
        .await
        .unwrap();
    let elapsed = started.elapsed();

    assert!(report.is_complete(), "{:?}", report.remaining());
    assert_eq!(report.evicted(), 3);
    // Only one disruption at a time is allowed: each eviction after the first waited for a
    // replacement to become Ready (400ms).
    assert!(
        elapsed >= Duration::from_millis(700),
        "drain waited for the budget: {elapsed:?}"
    );
    assert!(fake
        .pods_on("old")
        .iter()
        .all(|p| p["metadata"]["ownerReferences"][0]["kind"] != "ReplicaSet"));
    let moved = fake.list("", "pods", Some("shop"));
    assert_eq!(moved.len(), 3);
    assert!(moved.iter().all(|p| p["spec"]["nodeName"] != "old"));
    assert!(
        fake.pdb_low_water("shop/web-pdb").unwrap() >= 2,
        "at no time fewer healthy pods than minAvailable"
    );
    let rejected = fake
        .requests()
        .iter()
        .filter(|(m, p, c)| m == "POST" && p.contains("/eviction") && *c == 429)
        .count();
    assert!(
        rejected > 0,
        "the budget did refuse evictions while replacements started"
    );
}

#[tokio::test]
async fn blocked_pods_are_reported_with_their_pdb_on_timeout() {
    let fake = FakeApiServer::start().await;
    common::three_nodes_with_web(&fake, 2);
    fake.create(pdb_max_unavailable("shop", "web-pdb", "web", json!(0)));
    let cluster = common::cluster(&fake).await;
    let report = cluster
        .drain("old", &options(Duration::from_millis(600)))
        .await
        .unwrap();
    assert!(!report.is_complete());
    for pod in ["shop/web-0", "shop/web-1"] {
        assert_eq!(
            outcome(&report, pod),
            &PodOutcome::Blocked {
                pdb: Some("shop/web-pdb".into())
            }
        );
    }
    assert_eq!(fake.pods_on("old").len(), 4, "nothing was evicted");
    assert!(report.remaining()[0].contains("blocked by PDB shop/web-pdb"));
}

#[tokio::test]
async fn daemonset_mirror_and_finished_pods_stay() {
    let fake = FakeApiServer::start().await;
    common::three_nodes_with_web(&fake, 1);
    fake.create(
        PodBuilder::new("jobs", "done", "old")
            .owned_by("Job", "nightly")
            .phase("Succeeded")
            .build(),
    );
    fake.create(
        PodBuilder::new("jobs", "failed", "old")
            .owned_by("Job", "nightly")
            .phase("Failed")
            .empty_dir()
            .build(),
    );
    let cluster = common::cluster(&fake).await;
    let report = cluster
        .drain("old", &options(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(report.is_complete());
    assert_eq!(
        outcome(&report, "kube-system/proxy-old"),
        &PodOutcome::Skipped(SkipReason::DaemonSet)
    );
    assert_eq!(
        outcome(&report, "kube-system/etcd-old"),
        &PodOutcome::Skipped(SkipReason::Mirror)
    );
    assert_eq!(
        outcome(&report, "jobs/done"),
        &PodOutcome::Skipped(SkipReason::Terminal)
    );
    assert_eq!(
        outcome(&report, "jobs/failed"),
        &PodOutcome::Skipped(SkipReason::Terminal)
    );
    assert_eq!(outcome(&report, "shop/web-0"), &PodOutcome::Evicted);
    let left: Vec<String> = fake
        .pods_on("old")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 4, "{left:?}");
    let evictions: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "POST" && p.contains("/eviction"))
        .map(|(_, p, _)| p)
        .collect();
    assert_eq!(evictions, ["/api/v1/namespaces/shop/pods/web-0/eviction"]);
}

#[tokio::test]
async fn local_storage_and_unmanaged_pods_refuse_the_whole_drain_unless_allowed() {
    let fake = FakeApiServer::start().await;
    common::three_nodes_with_web(&fake, 2);
    fake.create(
        PodBuilder::new("shop", "cache", "old")
            .owned_by("ReplicaSet", "cache")
            .label("app", "cache")
            .empty_dir()
            .build(),
    );
    fake.create(PodBuilder::new("misc", "loner", "old").build());
    let cluster = common::cluster(&fake).await;

    let strict = DrainOptions {
        delete_emptydir_data: false,
        force: false,
        ..options(Duration::from_secs(10))
    };
    let report = cluster.drain("old", &strict).await.unwrap();
    assert!(!report.is_complete());
    assert!(
        matches!(outcome(&report, "shop/cache"), PodOutcome::Failed { message } if message.contains("emptyDir"))
    );
    assert!(
        matches!(outcome(&report, "misc/loner"), PodOutcome::Failed { message } if message.contains("controller"))
    );
    assert!(
        matches!(outcome(&report, "shop/web-0"), PodOutcome::Failed { message } if message.contains("refused"))
    );
    assert_eq!(fake.pods_on("old").len(), 6, "nothing was evicted");
    assert!(!fake
        .requests()
        .iter()
        .any(|(_, p, _)| p.contains("/eviction")));

    // emptyDir allowed but not force: still refused because of the unmanaged pod.
    let report = cluster
        .drain(
            "old",
            &DrainOptions {
                delete_emptydir_data: true,
                ..strict.clone()
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(outcome(&report, "shop/cache"), PodOutcome::Failed { message } if message.contains("refused"))
    );
    assert!(
        matches!(outcome(&report, "misc/loner"), PodOutcome::Failed { message } if message.contains("controller"))
    );
    assert_eq!(fake.pods_on("old").len(), 6);

    let report = cluster
        .drain(
            "old",
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
    assert_eq!(
        fake.pods_on("old").len(),
        2,
        "only the DaemonSet and mirror pods stay"
    );
}

#[tokio::test]
async fn server_errors_are_retried_and_grace_period_is_passed() {
    let fake = FakeApiServer::start_with(FakeConfig {
        termination_delay: Duration::from_secs(30),
        ..FakeConfig::default()
    })
    .await;
    common::three_nodes_with_web(&fake, 1);
    fake.inject_failures("/pods/web-0/eviction", 503, 2);
    let cluster = common::cluster(&fake).await;
    let drain = DrainOptions {
        // Zero grace: the fake removes the pod at once instead of after 30s.
        grace_period: Some(Duration::ZERO),
        ..options(Duration::from_secs(10))
    };
    let started = std::time::Instant::now();
    let report = cluster.drain("old", &drain).await.unwrap();
    assert!(report.is_complete(), "{:?}", report.remaining());
    assert!(started.elapsed() < Duration::from_secs(5));
    let codes: Vec<u16> = fake
        .requests()
        .into_iter()
        .filter(|(_, p, _)| p.contains("web-0/eviction"))
        .map(|(_, _, c)| c)
        .collect();
    assert_eq!(codes, [503, 503, 201]);
}

#[tokio::test]
async fn evicted_pods_still_terminating_at_timeout_are_reported() {
    let fake = FakeApiServer::start_with(FakeConfig {
        termination_delay: Duration::from_secs(30),
        ..FakeConfig::default()
    })
    .await;
    common::three_nodes_with_web(&fake, 1);
    let cluster = common::cluster(&fake).await;
    let report = cluster
        .drain("old", &options(Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(
        matches!(outcome(&report, "shop/web-0"), PodOutcome::Failed { message } if message.contains("terminating"))
    );
    let pod = fake.get("", "pods", Some("shop"), "web-0").unwrap();
    assert!(!pod["metadata"]["deletionTimestamp"].is_null());
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], json!(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bounds_evictions_in_flight_and_unknown_node_is_an_error() {
    let fake = FakeApiServer::start_with(FakeConfig {
        eviction_latency: Duration::from_millis(50),
        ..FakeConfig::default()
    })
    .await;
    fake.create(node("old", "i-old", "SPOT"));
    for i in 0..20 {
        fake.create(
            PodBuilder::new("shop", &format!("p-{i}"), "old")
                .owned_by("ReplicaSet", "web")
                .label("app", "web")
                .build(),
        );
    }
    let cluster = common::cluster(&fake).await;
    cluster.set_unschedulable("old", true).await.unwrap();
    let report = cluster
        .drain(
            "old",
            &DrainOptions {
                concurrency: 3,
                ..options(Duration::from_secs(10))
            },
        )
        .await
        .unwrap();
    assert_eq!(report.evicted(), 20);
    assert!(fake.pods_on("old").is_empty());
    assert_eq!(
        fake.max_evictions_in_flight(),
        3,
        "three evictions at a time, no more, no fewer"
    );
    assert_eq!(
        cluster
            .drain("ghost", &options(Duration::from_secs(1)))
            .await
            .unwrap_err(),
        ClusterError::UnknownNode {
            node: "ghost".into()
        }
    );
}
