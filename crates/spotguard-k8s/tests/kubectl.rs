//! Spot Guard side by side with the real `kubectl` of the same release, on the real control
//! plane of spotguard-testkit-k8s: both see the other's cordons, `kubectl drain
//! --ignore-daemonsets --delete-emptydir-data` and Spot Guard's cordon + drain leave the same
//! end state on identical workloads (never going below the PDB's `minAvailable` Ready pods),
//! and both refuse alike, evicting nothing, without `--delete-emptydir-data`.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{name_of, node_of, pod_is_ready, ReadyWatch, WAIT};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::Api;
use serde_json::json;
use spotguard_core::config::DrainOptions;
use spotguard_core::ports::{Cluster, PodOutcome};
use spotguard_testkit_k8s::eventually;

/// Runs the control plane's `kubectl` with `args`.
async fn kubectl(args: &[&str]) -> Output {
    let mut command = common::control_plane().kubectl();
    command.args(args);
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the kubectl task")
        .expect("running kubectl")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl get node <node>`'s STATUS column.
async fn kubectl_node_status(node: &str) -> String {
    let out = kubectl(&["get", "node", node, "--no-headers"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("a STATUS column in {stdout:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_and_spotguard_see_each_others_cordons() {
    let common::Web { ns, node, .. } = common::Web::start("kubectl-cordon", "n1", 2).await;
    let (cluster, recorder) = common::recording_cluster().await;
    let unschedulable = || async {
        let snap = cluster.snapshot().await.expect("a snapshot");
        snap.node(&node).map(|n| n.unschedulable)
    };

    // Spot Guard cordons; kubectl shows it.
    cluster.set_unschedulable(&node, true).await.unwrap();
    assert_eq!(kubectl_node_status(&node).await, "Ready,SchedulingDisabled");
    // kubectl uncordons; Spot Guard's snapshot follows.
    let out = kubectl(&["uncordon", &node]).await;
    assert!(out.status.success(), "{}", text(&out));
    eventually(WAIT, "the uncordon in the snapshot", || async {
        (unschedulable().await == Some(false)).then_some(())
    })
    .await;
    // kubectl cordons; Spot Guard sees it and has nothing to write.
    let out = kubectl(&["cordon", &node]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("node/{node} cordoned")),
        "{}",
        text(&out)
    );
    eventually(WAIT, "the cordon in the snapshot", || async {
        (unschedulable().await == Some(true)).then_some(())
    })
    .await;
    let path = format!("/api/v1/nodes/{node}");
    let patches = recorder.statuses("PATCH", &path).len();
    cluster.set_unschedulable(&node, true).await.unwrap();
    assert_eq!(
        recorder.statuses("PATCH", &path).len(),
        patches,
        "already cordoned: no write"
    );
    // Spot Guard uncordons; kubectl shows it.
    cluster.set_unschedulable(&node, false).await.unwrap();
    assert_eq!(kubectl_node_status(&node).await, "Ready");

    // Both list the same pods.
    let out = kubectl(&["get", "pods", "-n", &ns, "-o", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut by_kubectl: Vec<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            format!(
                "{ns}/{}",
                p["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    by_kubectl.sort();
    let snap = cluster.snapshot().await.unwrap();
    let by_spotguard: Vec<String> = snap
        .pods_on(&node)
        .filter(|p| p.namespace == ns)
        .map(|p| p.key())
        .collect();
    assert_eq!(by_spotguard, by_kubectl);
    assert_eq!(by_kubectl.len(), 2);
}

/// The workloads both drains start from, in a namespace and on nodes of their own: on `old`,
/// three pods of ReplicaSet `web` under a PDB of `minAvailable: 2`, a pod of ReplicaSet
/// `cache` with an `emptyDir` volume, a DaemonSet pod and a mirror pod; two empty nodes of
/// the same pool for the replacements.
struct Workloads {
    ns: String,
    old: String,
    new: [String; 2],
    pods: Api<Pod>,
}

impl Workloads {
    async fn start(prefix: &str) -> Self {
        let common::Web {
            ns,
            node: old,
            pods,
        } = common::Web::start(prefix, "old", 3).await;
        let mut cache = common::replica_set("cache", &ns, 1);
        cache["spec"]["template"]["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
        let _: ReplicaSet = common::control_plane().create_in(&ns, cache).await;
        common::daemon_set_on(&ns, "proxy", &old).await;
        common::mirror_pod(&ns, &old).await;
        for (app, count) in [("cache", 1), ("proxy", 1)] {
            common::wait_for_ready_pods(&pods, app, count).await;
        }
        common::pdb(&ns, "web-pdb", "web", json!({"minAvailable": 2}), 3).await;
        let new = [
            common::create_node("new-a", Some(&ns)).await,
            common::create_node("new-b", Some(&ns)).await,
        ];
        Self { ns, old, new, pods }
    }

    /// Waits until the ReplicaSets' pods all run Ready on the new nodes.
    async fn wait_until_moved(&self) {
        for (app, count) in [("web", 3), ("cache", 1)] {
            eventually(WAIT, &format!("{app} Ready on the new nodes"), || async {
                let pods = common::app_pods(&self.pods, app).await;
                let moved = pods.len() == count
                    && pods.iter().all(|p| {
                        pod_is_ready(p) && node_of(p).is_some_and(|n| self.new.contains(&n))
                    });
                moved.then_some(())
            })
            .await;
        }
    }

    /// The state of the old node and of the namespace's pods, one line each, sorted, with node
    /// names replaced by `old` and `new` (which new node a replacement lands on depends on the
    /// order of the evictions) and pods named by their controller.
    async fn summary(&self) -> Vec<String> {
        let role = |line: String| {
            let line = line.replace(&self.old, "old");
            self.new
                .iter()
                .fold(line, |line, new| line.replace(new.as_str(), "new"))
        };
        let node = Api::<Node>::all(common::control_plane().admin_client())
            .get(&self.old)
            .await
            .expect("the old node");
        let spec = node.spec.unwrap_or_default();
        let mut taints: Vec<String> = spec
            .taints
            .unwrap_or_default()
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        taints.sort();
        let mut lines = vec![role(format!(
            "node {} unschedulable={} taints={taints:?}",
            self.old,
            spec.unschedulable.unwrap_or(false)
        ))];
        for pod in self
            .pods
            .list(&ListParams::default())
            .await
            .expect("listing pods")
            .items
        {
            let owner = pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .map(|r| format!("{}/{}", r.kind, r.name))
                .unwrap_or_else(|| format!("pod/{}", name_of(&pod)));
            lines.push(role(format!(
                "pod {owner} node={} ready={} terminating={}",
                node_of(&pod).unwrap_or_default(),
                pod_is_ready(&pod),
                pod.metadata.deletion_timestamp.is_some()
            )));
        }
        lines.sort();
        lines
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_and_spotguard_drain_leave_the_same_state() {
    let (by_kubectl, by_spotguard) = tokio::join!(
        Workloads::start("by-kubectl"),
        Workloads::start("by-spotguard")
    );
    let kubectl_watch = ReadyWatch::start(&by_kubectl.pods, "web").await;
    let spotguard_watch = ReadyWatch::start(&by_spotguard.pods, "web").await;
    let cluster = common::real_cluster().await;

    let args = [
        "drain",
        &by_kubectl.old,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=300s",
    ];
    let drain_by_kubectl = kubectl(&args);
    let drain_by_spotguard = async {
        cluster
            .set_unschedulable(&by_spotguard.old, true)
            .await
            .unwrap();
        cluster
            .drain(
                &by_spotguard.old,
                &DrainOptions {
                    timeout: Duration::from_secs(300),
                    ..DrainOptions::default()
                },
            )
            .await
            .unwrap()
    };
    let (out, report) = tokio::join!(drain_by_kubectl, drain_by_spotguard);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("node/{} drained", by_kubectl.old)),
        "{stdout}"
    );
    assert!(report.is_complete(), "{:?}", report.remaining());
    assert_eq!(report.evicted(), 4, "{report:?}");

    tokio::join!(
        by_kubectl.wait_until_moved(),
        by_spotguard.wait_until_moved()
    );
    // The controllers finish their part (the node's unschedulable taint) in their own time.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (expected, got) = loop {
        let (expected, got) = tokio::join!(by_kubectl.summary(), by_spotguard.summary());
        if expected == got || tokio::time::Instant::now() >= deadline {
            break (expected, got);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(got, expected);
    assert!(
        expected[0].starts_with("node old unschedulable=true"),
        "{expected:#?}"
    );
    assert_eq!(
        expected.iter().filter(|l| l.contains("node=old")).count(),
        2,
        "DaemonSet and mirror pods stay: {expected:#?}"
    );
    for (by, watch) in [("kubectl", kubectl_watch), ("Spot Guard", spotguard_watch)] {
        let (low_water, _) = watch.stop();
        assert!(
            low_water >= 2,
            "{by}: at no time fewer Ready web pods than minAvailable: {low_water}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_and_spotguard_refuse_alike_without_delete_emptydir_data() {
    let workloads = Workloads::start("refuse").await;
    let old = &workloads.old;
    let cache = name_of(&common::app_pods(&workloads.pods, "cache").await[0]);
    let before = common::pods_on_node(old).await;
    assert_eq!(before.len(), 6, "{before:?}");

    let out = kubectl(&["drain", old, "--ignore-daemonsets", "--timeout=30s"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("local storage"), "{}", text(&out));
    assert!(
        stderr.contains(&format!("{}/{cache}", workloads.ns)),
        "{}",
        text(&out)
    );
    assert_eq!(
        common::pods_on_node(old).await,
        before,
        "kubectl evicted nothing"
    );

    let (cluster, recorder) = common::recording_cluster().await;
    let report = cluster
        .drain(
            old,
            &DrainOptions {
                delete_emptydir_data: false,
                timeout: Duration::from_secs(30),
                ..DrainOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(!report.is_complete());
    let outcome = report
        .pods
        .iter()
        .find(|p| p.pod == format!("{}/{cache}", workloads.ns))
        .map(|p| &p.outcome);
    assert!(
        matches!(outcome, Some(PodOutcome::Failed { message }) if message.contains("emptyDir")),
        "{report:?}"
    );
    assert_eq!(
        common::pods_on_node(old).await,
        before,
        "Spot Guard evicted nothing either"
    );
    assert!(
        !recorder
            .requests()
            .iter()
            .any(|(_, p, _)| p.ends_with("/eviction")),
        "{:?}",
        recorder.requests()
    );
}
