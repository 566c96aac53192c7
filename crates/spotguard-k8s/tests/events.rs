//! Node events: what Spot Guard did shows up as `events.k8s.io/v1` Events on the node, as the
//! real API server of spotguard-testkit-k8s stores them (repeats folded into a series, a
//! warning type for what an operator should look at, the node's UID in the reference).
//!
//! Events of cluster-scoped objects live in the `default` namespace, shared by every test of
//! the binary: each test reads only the events about its own uniquely named nodes.

mod common;

use common::WAIT;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use spotguard_core::config::DrainOptions;
use spotguard_core::model::{Taint, TaintEffect};
use spotguard_core::ports::Cluster;
use spotguard_k8s::NodeEvents;

/// The events in `default` about the node `node`, oldest first.
async fn events_about(node: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(common::control_plane().admin_client(), "default");
    let mut about: Vec<Event> = events
        .list(&Default::default())
        .await
        .expect("listing events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(node))
        .collect();
    about.sort_by_key(|e| {
        (
            e.metadata.creation_timestamp.clone().map(|t| t.0),
            e.event_time.clone().map(|t| t.0),
        )
    });
    about
}

/// The events Spot Guard published about `node` (other controllers publish about nodes too).
async fn spotguard_events(node: &str) -> Vec<Event> {
    events_about(node)
        .await
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("spotguard"))
        .collect()
}

#[tokio::test]
async fn actions_publish_events_on_the_node() {
    let cp = common::control_plane();
    let old = common::Web::start("events", "old", 1).await.node;
    let cluster = common::real_cluster().await;
    let taint = Taint {
        key: "spotguard.dev/draining".into(),
        value: "true".into(),
        effect: TaintEffect::NoSchedule,
    };
    cluster.taint(&old, &taint).await.unwrap();
    cluster.taint(&old, &taint).await.unwrap(); // no change, no event
    let report = cluster
        .drain(
            &old,
            &DrainOptions {
                timeout: WAIT,
                ..DrainOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(report.is_complete(), "{:?}", report.remaining());

    let events = spotguard_events(&old).await;
    let reasons: Vec<&str> = events
        .iter()
        .map(|e| e.reason.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(
        reasons,
        ["SpotGuardTainted", "SpotGuardDrained"],
        "{events:#?}"
    );
    let uid = Api::<Node>::all(cp.admin_client())
        .get(&old)
        .await
        .expect("the node")
        .metadata
        .uid;
    for e in &events {
        let regarding = e.regarding.as_ref().expect("a regarding reference");
        assert_eq!(regarding.kind.as_deref(), Some("Node"));
        assert_eq!(regarding.uid, uid);
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        assert!(e.series.is_none(), "{e:?}");
    }
    assert_eq!(
        events[0].note.as_deref(),
        Some("Added taint spotguard.dev/draining=true:NoSchedule")
    );
    let note = events[1].note.as_deref().unwrap_or_default();
    assert!(note.contains("1 pod(s) evicted"), "{note}");
}

#[tokio::test]
async fn publish_warnings_and_fold_repeats() {
    let node = common::create_node("n1", None).await;
    let events = NodeEvents::new(
        common::control_plane().admin_client(),
        "spotguard",
        Some("spotguard-0".into()),
    );
    for _ in 0..2 {
        events
            .publish(
                &node,
                "SpotGuardNoCapacity",
                "on-demand fallback failed",
                true,
            )
            .await
            .unwrap();
    }
    let stored = spotguard_events(&node).await;
    assert_eq!(stored.len(), 1, "the repeat became a series: {stored:#?}");
    assert_eq!(stored[0].type_.as_deref(), Some("Warning"));
    assert_eq!(stored[0].series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(stored[0].reporting_instance.as_deref(), Some("spotguard-0"));
    assert_eq!(stored[0].note.as_deref(), Some("on-demand fallback failed"));

    // A node that cannot be read still gets its event, without a UID.
    let ghost = common::unique_name("ghost");
    events
        .publish(&ghost, "SpotGuardDrained", "x", false)
        .await
        .unwrap();
    let stored = spotguard_events(&ghost).await;
    assert_eq!(stored.len(), 1, "{stored:#?}");
    let regarding = stored[0].regarding.as_ref().expect("a regarding reference");
    assert_eq!(regarding.uid, None);
    assert_eq!(spotguard_events(&node).await.len(), 1, "still one series");
}
