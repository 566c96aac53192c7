//! The ledger in a ConfigMap: created when absent, optimistic concurrency on
//! resourceVersion, malformed data named (invariant 3).

use std::time::SystemTime;

use serde_json::json;
use spotguard_core::ledger::{EntryKind, Intent, Ledger};
use spotguard_core::ports::{LedgerStore, StoreError};
use spotguard_k8s::testing::FakeApiServer;
use spotguard_k8s::ConfigMapLedgerStore;

fn ledger_with(n: usize) -> Ledger {
    let mut ledger = Ledger::default();
    for i in 0..n {
        ledger.record_intent(
            Intent::new(
                EntryKind::Fallback,
                "web-od",
                "web-spot",
                &format!("i-{i}"),
                2,
            ),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        );
    }
    ledger
}

#[tokio::test]
async fn round_trip_and_conflicts() {
    let fake = FakeApiServer::start().await;
    let store = ConfigMapLedgerStore::new(fake.client(), "default", "spotguard-ledger");
    let empty = store.load().await.unwrap();
    assert_eq!(empty.value, Ledger::default());
    assert_eq!(empty.version, None);

    let v1 = store.save(&ledger_with(1), None).await.unwrap();
    // A second process that also saw "nothing stored" loses.
    let other = ConfigMapLedgerStore::new(fake.client(), "default", "spotguard-ledger");
    assert_eq!(
        other.save(&ledger_with(5), None).await.unwrap_err(),
        StoreError::Conflict { expected: None }
    );

    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.value, ledger_with(1));
    assert_eq!(loaded.version.as_deref(), Some(v1.as_str()));

    let v2 = store.save(&ledger_with(2), Some(v1.clone())).await.unwrap();
    assert_ne!(v1, v2);
    // Saving on the stale version is refused and changes nothing.
    assert_eq!(
        other
            .save(&ledger_with(9), Some(v1.clone()))
            .await
            .unwrap_err(),
        StoreError::Conflict { expected: Some(v1) }
    );
    let loaded = other.load().await.unwrap();
    assert_eq!(loaded.value, ledger_with(2));
    assert_eq!(loaded.version, Some(v2));

    // Other keys and labels on the ConfigMap survive saves.
    fake.modify(
        "",
        "configmaps",
        Some("default"),
        "spotguard-ledger",
        |cm| {
            cm["data"]["notes"] = json!("kept");
        },
    );
    let current = store.load().await.unwrap();
    store.save(&ledger_with(3), current.version).await.unwrap();
    let cm = fake
        .get("", "configmaps", Some("default"), "spotguard-ledger")
        .unwrap();
    assert_eq!(cm["data"]["notes"], "kept");
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "spotguard"
    );
    assert_eq!(store.load().await.unwrap().value, ledger_with(3));
}

#[tokio::test]
async fn malformed_ledger_names_the_configmap() {
    let fake = FakeApiServer::start().await;
    fake.create(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "spotguard-ledger", "namespace": "ops"},
        "data": {"ledger.json": "{not json"}
    }));
    let store = ConfigMapLedgerStore::new(fake.client(), "ops", "spotguard-ledger");
    match store.load().await.unwrap_err() {
        StoreError::Malformed { location, message } => {
            assert_eq!(location, "configmap ops/spotguard-ledger key ledger.json");
            assert!(!message.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // A ConfigMap without the key holds an empty ledger at its version.
    fake.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "blank", "namespace": "ops"}}));
    let blank = ConfigMapLedgerStore::new(fake.client(), "ops", "blank")
        .load()
        .await
        .unwrap();
    assert_eq!(blank.value, Ledger::default());
    assert!(blank.version.is_some());
}

#[tokio::test]
async fn deleted_configmap_is_a_conflict_not_a_silent_recreate() {
    let fake = FakeApiServer::start().await;
    let store = ConfigMapLedgerStore::new(fake.client(), "default", "l");
    let v = store.save(&ledger_with(1), None).await.unwrap();
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(fake.client(), "default");
    api.delete("l", &Default::default()).await.unwrap();
    assert_eq!(
        store
            .save(&ledger_with(2), Some(v.clone()))
            .await
            .unwrap_err(),
        StoreError::Conflict { expected: Some(v) }
    );
}
