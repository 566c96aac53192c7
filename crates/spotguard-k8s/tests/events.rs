//! Node events: what Spot Guard did shows up as `events.k8s.io/v1` Events on the node.

mod common;

use std::time::Duration;

use spotguard_core::config::DrainOptions;
use spotguard_core::model::{Taint, TaintEffect};
use spotguard_core::ports::Cluster;
use spotguard_k8s::testing::{node, FakeApiServer};
use spotguard_k8s::NodeEvents;

#[tokio::test]
async fn actions_publish_events_on_the_node() {
    let fake = FakeApiServer::start().await;
    common::three_nodes_with_web(&fake, 1);
    let cluster = common::cluster(&fake).await;
    let taint = Taint {
        key: "spotguard.dev/draining".into(),
        value: "true".into(),
        effect: TaintEffect::NoSchedule,
    };
    cluster.taint("old", &taint).await.unwrap();
    cluster.taint("old", &taint).await.unwrap(); // no change, no event
    cluster
        .drain(
            "old",
            &DrainOptions {
                timeout: Duration::from_secs(10),
                ..DrainOptions::default()
            },
        )
        .await
        .unwrap();

    let events = fake.list("events.k8s.io", "events", Some("default"));
    let reasons: Vec<&str> = events
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["SpotGuardTainted", "SpotGuardDrained"],
        "{events:?}"
    );
    let old_uid = fake.get("", "nodes", None, "old").unwrap()["metadata"]["uid"].clone();
    for e in &events {
        assert_eq!(e["regarding"]["kind"], "Node");
        assert_eq!(e["regarding"]["name"], "old");
        assert_eq!(e["regarding"]["uid"], old_uid);
        assert_eq!(e["reportingController"], "spotguard");
        assert_eq!(e["type"], "Normal");
    }
    assert!(events[1]["note"]
        .as_str()
        .unwrap()
        .contains("1 pod(s) evicted"));
}

#[tokio::test]
async fn publish_warnings_and_fold_repeats() {
    let fake = FakeApiServer::start().await;
    fake.create(node("n1", "i-1", "SPOT"));
    let events = NodeEvents::new(fake.client(), "spotguard", Some("spotguard-0".into()));
    for _ in 0..2 {
        let published = events.publish(
            "n1",
            "SpotGuardNoCapacity",
            "on-demand fallback failed",
            true,
        );
        published.await.unwrap();
    }
    let stored = fake.list("events.k8s.io", "events", Some("default"));
    assert_eq!(stored.len(), 1, "the repeat became a series: {stored:?}");
    assert_eq!(stored[0]["type"], "Warning");
    assert_eq!(stored[0]["series"]["count"], 2);
    assert_eq!(stored[0]["reportingInstance"], "spotguard-0");
    // A node that cannot be read still gets its event.
    events
        .publish("gone", "SpotGuardDrained", "x", false)
        .await
        .unwrap();
    assert_eq!(
        fake.list("events.k8s.io", "events", Some("default")).len(),
        2
    );
}
