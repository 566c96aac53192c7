//! The fallback ledger stored in a ConfigMap (invariant 3: it survives restarts).
//!
//! The ledger is JSON under one data key. Its version is the ConfigMap's resourceVersion: a
//! save creates the ConfigMap when nothing is stored yet (a concurrent create makes it a
//! conflict), and otherwise sends a merge patch carrying the expected resourceVersion, which
//! the API server refuses with 409 if anyone saved in between. Other data keys, labels and
//! annotations on the ConfigMap are left alone. A ConfigMap holds at most 1 MiB; released
//! entries are cleaned up by the engine long before that matters.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use spotguard_core::ledger::Ledger;
use spotguard_core::ports::{LedgerStore, StoreError, Versioned};

use crate::error::{is_status, object_name, Error};

/// Default data key of the ledger.
pub const DEFAULT_KEY: &str = "ledger.json";

/// [`LedgerStore`] on a ConfigMap.
#[derive(Clone)]
pub struct ConfigMapLedgerStore {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    key: String,
}

impl ConfigMapLedgerStore {
    /// The ledger in ConfigMap `namespace/name`, under [`DEFAULT_KEY`].
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            key: DEFAULT_KEY.to_string(),
        }
    }

    /// Uses another data key.
    pub fn with_key(mut self, key: &str) -> Self {
        self.key = key.to_string();
        self
    }

    fn object(&self) -> String {
        object_name("configmap", Some(&self.namespace), &self.name)
    }

    /// Where the ledger lives, for messages: `configmap ns/name key ledger.json`.
    pub fn location(&self) -> String {
        format!("{} key {}", self.object(), self.key)
    }

    /// Loads the ledger; see [`LedgerStore::load`].
    pub async fn load_ledger(&self) -> Result<Versioned<Ledger>, Error> {
        let found = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| Error::api("get", self.object(), e))?;
        let Some(map) = found else {
            return Ok(Versioned::default());
        };
        let version = map.metadata.resource_version.clone();
        let value = match map.data.as_ref().and_then(|d| d.get(&self.key)) {
            None => Ledger::default(),
            Some(text) => serde_json::from_str(text).map_err(|e| Error::Malformed {
                object: self.location(),
                message: e.to_string(),
            })?,
        };
        Ok(Versioned { value, version })
    }

    /// Saves the ledger if the stored version is still `expected`; see [`LedgerStore::save`].
    pub async fn save_ledger(
        &self,
        ledger: &Ledger,
        expected: Option<&str>,
    ) -> Result<String, Error> {
        let text = serde_json::to_string(ledger).map_err(|e| Error::Malformed {
            object: self.location(),
            message: e.to_string(),
        })?;
        let conflict = || Error::Conflict {
            object: self.object(),
            attempts: 1,
        };
        let saved = match expected {
            None => {
                let map = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_string(),
                            "spotguard".to_string(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([(self.key.clone(), text)])),
                    ..ConfigMap::default()
                };
                match self.api.create(&PostParams::default(), &map).await {
                    Err(e) if is_status(&e, 409) => return Err(conflict()),
                    other => other.map_err(|e| Error::api("create", self.object(), e))?,
                }
            }
            Some(version) => {
                let patch = json!({
                    "metadata": {"resourceVersion": version},
                    "data": {self.key.clone(): text},
                });
                match self
                    .api
                    .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    // 404: deleted since it was loaded — the stored version changed too.
                    Err(e) if is_status(&e, 409) || is_status(&e, 404) => return Err(conflict()),
                    other => other.map_err(|e| Error::api("patch", self.object(), e))?,
                }
            }
        };
        saved
            .metadata
            .resource_version
            .ok_or_else(|| Error::Malformed {
                object: self.object(),
                message: "the API server returned no resourceVersion".into(),
            })
    }
}

#[async_trait]
impl LedgerStore for ConfigMapLedgerStore {
    async fn load(&self) -> Result<Versioned<Ledger>, StoreError> {
        self.load_ledger()
            .await
            .map_err(|e| e.into_store_error(None))
    }

    async fn save(&self, ledger: &Ledger, expected: Option<String>) -> Result<String, StoreError> {
        self.save_ledger(ledger, expected.as_deref())
            .await
            .map_err(|e| e.into_store_error(expected))
    }
}
