//! Node writes — taints, cordon, annotations — that are idempotent and never drop another
//! writer's change.
//!
//! Every write reads the node, computes the new value from what it read, and sends a JSON
//! patch whose first operation `test`s `/metadata/resourceVersion`. If anyone changed the
//! node in between, the API server refuses the patch (a bare 422 Invalid for a failed `test`, told from a real error by re-reading the node; 409 for a
//! stale resourceVersion) and the write starts over from a fresh read, up to a bounded number
//! of attempts ([`Error::Conflict`]). A write that would change nothing sends nothing.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint as KTaint};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};
use spotguard_core::model::Taint;

use crate::error::{is_status, object_name, Error};

/// How node writes retry on conflicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritePolicy {
    /// Attempts before [`Error::Conflict`] (default 10).
    pub attempts: u32,
    /// Pause after the first conflict, doubled after each further one (default 20ms).
    pub backoff: Duration,
}

impl Default for WritePolicy {
    fn default() -> Self {
        Self {
            attempts: 10,
            backoff: Duration::from_millis(20),
        }
    }
}

/// Escapes a key for a JSON pointer (RFC 6901).
pub(crate) fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Whether the API server refused a write because the object changed under it.
pub(crate) fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409 || (s.code == 422 && s.message.contains("test")))
}

/// Whether the node's resourceVersion is no longer `version` (a read that fails says no).
async fn moved(api: &Api<Node>, node: &str, version: &str) -> bool {
    matches!(
        api.get_opt(node).await,
        Ok(Some(n)) if n.metadata.resource_version.as_deref() != Some(version)
    )
}

/// Reads the node, lets `change` compute JSON patch operations from it (`None`: nothing to
/// do), and applies them guarded by the resourceVersion read, retrying on conflicts.
pub(crate) async fn update_node<F>(
    api: &Api<Node>,
    node: &str,
    policy: WritePolicy,
    operation: &str,
    mut change: F,
) -> Result<bool, Error>
where
    F: FnMut(&Node) -> Option<Vec<Value>>,
{
    let object = object_name("node", None, node);
    let mut pause = policy.backoff;
    for attempt in 1..=policy.attempts.max(1) {
        let current = api
            .get_opt(node)
            .await
            .map_err(|e| Error::api("get", &object, e))?
            .ok_or_else(|| Error::NotFound {
                object: object.clone(),
            })?;
        let Some(ops) = change(&current) else {
            return Ok(false);
        };
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let mut patch =
            vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": version})];
        patch.extend(ops);
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(patch)).map_err(|e| Error::Invalid {
                object: object.clone(),
                field: "patch".into(),
                message: e.to_string(),
            })?;
        match api
            .patch(node, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => return Ok(true),
            // kube-apiserver answers a failed `test` with a bare 422 Invalid that does not
            // say which operation failed: it is a conflict when the node moved on meanwhile.
            Err(e)
                if is_conflict(&e) || (is_status(&e, 422) && moved(api, node, &version).await) =>
            {
                tracing::debug!(
                    node,
                    operation,
                    attempt,
                    "node changed concurrently; retrying"
                );
                if attempt < policy.attempts {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
            Err(e) if is_status(&e, 404) => {
                return Err(Error::NotFound { object });
            }
            Err(e) => return Err(Error::api(operation, &object, e)),
        }
    }
    Err(Error::Conflict {
        object,
        attempts: policy.attempts.max(1),
    })
}

fn taints_of(node: &Node) -> Vec<KTaint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

fn set_taints_op(taints: &[KTaint]) -> Value {
    if taints.is_empty() {
        json!({"op": "remove", "path": "/spec/taints"})
    } else {
        json!({"op": "add", "path": "/spec/taints", "value": taints})
    }
}

/// Ensures `taint` is on the node: a taint with the same key and effect is replaced when its
/// value differs; other taints are kept as they are. Returns whether the node changed.
pub async fn add_taint(
    api: &Api<Node>,
    node: &str,
    taint: &Taint,
    policy: WritePolicy,
) -> Result<bool, Error> {
    update_node(api, node, policy, "taint", |current| {
        taint_ops(current, taint)
    })
    .await
}

/// The JSON patch operations putting `taint` on `current` (see [`add_taint`]); `None` when it
/// is there already.
pub(crate) fn taint_ops(current: &Node, taint: &Taint) -> Option<Vec<Value>> {
    {
        let mut taints = taints_of(current);
        let effect = taint.effect.as_str();
        let wanted = Some(taint.value.clone()).filter(|v| !v.is_empty());
        if taints.iter().any(|t| {
            t.key == taint.key
                && t.effect == effect
                && t.value.clone().filter(|v| !v.is_empty()) == wanted
        }) {
            return None;
        }
        taints.retain(|t| !(t.key == taint.key && t.effect == effect));
        taints.push(KTaint {
            key: taint.key.clone(),
            value: wanted,
            effect: effect.to_string(),
            time_added: None,
        });
        Some(vec![if current.spec.is_none() {
            json!({"op": "add", "path": "/spec", "value": {"taints": taints}})
        } else {
            set_taints_op(&taints)
        }])
    }
}

/// Removes every taint with this key. Returns whether the node changed.
pub async fn remove_taint(
    api: &Api<Node>,
    node: &str,
    key: &str,
    policy: WritePolicy,
) -> Result<bool, Error> {
    update_node(api, node, policy, "untaint", |current| {
        let mut taints = taints_of(current);
        let before = taints.len();
        taints.retain(|t| t.key != key);
        (taints.len() != before).then(|| vec![set_taints_op(&taints)])
    })
    .await
}

/// Cordons (`true`) or uncordons (`false`) the node. Returns whether the node changed.
pub async fn set_unschedulable(
    api: &Api<Node>,
    node: &str,
    unschedulable: bool,
    policy: WritePolicy,
) -> Result<bool, Error> {
    update_node(api, node, policy, "cordon", |current| {
        let spec = current.spec.clone().unwrap_or_default();
        if spec.unschedulable.unwrap_or(false) == unschedulable {
            return None;
        }
        Some(if unschedulable {
            if current.spec.is_none() {
                vec![json!({"op": "add", "path": "/spec", "value": {"unschedulable": true}})]
            } else {
                vec![json!({"op": "add", "path": "/spec/unschedulable", "value": true})]
            }
        } else {
            vec![json!({"op": "remove", "path": "/spec/unschedulable"})]
        })
    })
    .await
}

/// Sets (`Some`) or removes (`None`) a node annotation. Returns whether the node changed.
pub async fn set_annotation(
    api: &Api<Node>,
    node: &str,
    key: &str,
    value: Option<&str>,
    policy: WritePolicy,
) -> Result<bool, Error> {
    update_node(api, node, policy, "annotate", |current| {
        annotation_ops(current, key, value)
    })
    .await
}

/// The JSON patch operations setting (`Some`) or removing (`None`) annotation `key` on
/// `current` (see [`set_annotation`]); `None` when it already is so.
pub(crate) fn annotation_ops(current: &Node, key: &str, value: Option<&str>) -> Option<Vec<Value>> {
    let annotations = current.metadata.annotations.as_ref();
    let existing = annotations.and_then(|a| a.get(key)).map(String::as_str);
    if existing == value {
        return None;
    }
    let path = format!("/metadata/annotations/{}", pointer_escape(key));
    Some(match value {
        None => vec![json!({"op": "remove", "path": path})],
        Some(v) if annotations.is_none() => {
            vec![json!({"op": "add", "path": "/metadata/annotations", "value": {key: v}})]
        }
        Some(v) => vec![json!({"op": "add", "path": path, "value": v})],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_escaping() {
        assert_eq!(
            pointer_escape("cluster-autoscaler.kubernetes.io/scale-down-disabled"),
            "cluster-autoscaler.kubernetes.io~1scale-down-disabled"
        );
        assert_eq!(pointer_escape("a~b/c"), "a~0b~1c");
    }
}
