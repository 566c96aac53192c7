//! The monitor's latest verdicts and the recent actions ([`StatusRecord`]) in a ConfigMap
//! beside the ledger, where `spotguard status` (and `kubectl get configmap -o json`) reads
//! them.
//!
//! Only the leading controller writes it, and it is informational: a save overwrites what is
//! stored (a merge patch of one data key, creating the ConfigMap the first time) with no
//! version check, and nothing Spot Guard decides ever reads it back.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use spotguard_core::status::StatusRecord;

use crate::error::{is_status, object_name, Error};

/// Data key of the record.
pub const STATUS_KEY: &str = "status.json";

/// A [`StatusRecord`] in ConfigMap `namespace/name`, under [`STATUS_KEY`].
#[derive(Clone)]
pub struct ConfigMapStatusStore {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
}

impl ConfigMapStatusStore {
    /// The record in ConfigMap `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// `configmap ns/name`, for messages.
    pub fn object(&self) -> String {
        object_name("configmap", Some(&self.namespace), &self.name)
    }

    /// The stored record; `None` when the ConfigMap or its key does not exist yet.
    pub async fn load(&self) -> Result<Option<StatusRecord>, Error> {
        let found = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| Error::api("get", self.object(), e))?;
        let Some(text) = found
            .and_then(|m| m.data)
            .and_then(|mut d| d.remove(STATUS_KEY))
        else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Malformed {
                object: format!("{} key {STATUS_KEY}", self.object()),
                message: e.to_string(),
            })
    }

    /// Stores `record`, replacing what was there.
    pub async fn save(&self, record: &StatusRecord) -> Result<(), Error> {
        let text = serde_json::to_string(record).map_err(|e| Error::Malformed {
            object: self.object(),
            message: e.to_string(),
        })?;
        let patch = json!({ "data": { STATUS_KEY: text } });
        // Patched when it exists (the usual case), created otherwise; a create that loses a
        // race to another writer patches what that writer created.
        for _ in 0..2 {
            match self
                .api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(Error::api("patch", self.object(), e)),
            }
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
                data: Some(BTreeMap::from([(STATUS_KEY.to_string(), text.clone())])),
                ..ConfigMap::default()
            };
            match self.api.create(&PostParams::default(), &map).await {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(Error::api("create", self.object(), e)),
            }
        }
        Err(Error::Conflict {
            object: self.object(),
            attempts: 2,
        })
    }
}
