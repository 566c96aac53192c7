//! The ledger in a ConfigMap: created when absent, optimistic concurrency on
//! resourceVersion, malformed data named (invariant 3). On the real API server, each test in a
//! namespace of its own.

mod common;

use std::time::SystemTime;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use spotguard_core::ledger::{EntryKind, Intent, Ledger};
use spotguard_core::ports::{LedgerStore, StoreError};
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
    let cp = common::control_plane();
    let ns = cp.create_namespace("ledger").await;
    let store = ConfigMapLedgerStore::new(cp.admin_client(), &ns, "spotguard-ledger");
    let empty = store.load().await.unwrap();
    assert_eq!(empty.value, Ledger::default());
    assert_eq!(empty.version, None);

    let v1 = store.save(&ledger_with(1), None).await.unwrap();
    // A second process (its own client) that also saw "nothing stored" loses.
    let other = ConfigMapLedgerStore::new(cp.admin_client(), &ns, "spotguard-ledger");
    assert_eq!(
        other.save(&ledger_with(5), None).await.unwrap_err(),
        StoreError::Conflict { expected: None }
    );

    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.value, ledger_with(1));
    assert_eq!(loaded.version.as_deref(), Some(v1.as_str()));

    let v2 = store.save(&ledger_with(2), Some(v1.clone())).await.unwrap();
    assert_ne!(v1, v2);
    // Saving on the stale version is refused (409 from the API server) and changes nothing.
    assert_eq!(
        other
            .save(&ledger_with(9), Some(v1.clone()))
            .await
            .unwrap_err(),
        StoreError::Conflict { expected: Some(v1) }
    );
    let loaded = other.load().await.unwrap();
    assert_eq!(loaded.value, ledger_with(2));
    assert_eq!(loaded.version, Some(v2.clone()));

    // Other keys and labels on the ConfigMap survive saves; another writer's change moves the
    // version, so a save on the version before it is refused too.
    let maps: Api<ConfigMap> = Api::namespaced(cp.admin_client(), &ns);
    maps.patch(
        "spotguard-ledger",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"notes": "kept"}})),
    )
    .await
    .unwrap();
    assert_eq!(
        store
            .save(&ledger_with(3), Some(v2.clone()))
            .await
            .unwrap_err(),
        StoreError::Conflict { expected: Some(v2) }
    );
    let current = store.load().await.unwrap();
    assert_eq!(current.value, ledger_with(2));
    store.save(&ledger_with(3), current.version).await.unwrap();
    let cm = maps.get("spotguard-ledger").await.unwrap();
    assert_eq!(cm.data.as_ref().unwrap()["notes"], "kept");
    assert_eq!(
        cm.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "spotguard"
    );
    assert_eq!(store.load().await.unwrap().value, ledger_with(3));
}

#[tokio::test]
async fn malformed_ledger_names_the_configmap() {
    let cp = common::control_plane();
    let ns = cp.create_namespace("ops").await;
    let _: ConfigMap = common::control_plane()
        .create_in(
            &ns,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "spotguard-ledger"},
                "data": {"ledger.json": "{not json"}
            }),
        )
        .await;
    let store = ConfigMapLedgerStore::new(cp.admin_client(), &ns, "spotguard-ledger");
    match store.load().await.unwrap_err() {
        StoreError::Malformed { location, message } => {
            assert_eq!(
                location,
                format!("configmap {ns}/spotguard-ledger key ledger.json")
            );
            assert!(!message.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // A ConfigMap without the key holds an empty ledger at its version.
    let _: ConfigMap = common::control_plane()
        .create_in(
            &ns,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "blank"}}),
        )
        .await;
    let blank = ConfigMapLedgerStore::new(cp.admin_client(), &ns, "blank")
        .load()
        .await
        .unwrap();
    assert_eq!(blank.value, Ledger::default());
    assert!(blank.version.is_some());
}

#[tokio::test]
async fn deleted_configmap_is_a_conflict_not_a_silent_recreate() {
    let cp = common::control_plane();
    let ns = cp.create_namespace("ledger-deleted").await;
    let store = ConfigMapLedgerStore::new(cp.admin_client(), &ns, "l");
    let v = store.save(&ledger_with(1), None).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(cp.admin_client(), &ns);
    api.delete("l", &Default::default()).await.unwrap();
    assert_eq!(
        store
            .save(&ledger_with(2), Some(v.clone()))
            .await
            .unwrap_err(),
        StoreError::Conflict { expected: Some(v) }
    );
    assert!(
        api.get_opt("l").await.unwrap().is_none(),
        "not recreated by the save"
    );
}
