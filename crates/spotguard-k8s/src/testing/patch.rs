//! Applying the patch types clients send: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902) and an approximation of strategic merge patch.

use serde_json::Value;

/// Lists merged element by element under strategic merge patch, by their merge key. Other
/// lists are replaced, as they are for `spec.taints`, which has no patch strategy.
const MERGE_KEYS: &[(&str, &str)] = &[
    ("containers", "name"),
    ("initContainers", "name"),
    ("volumes", "name"),
    ("env", "name"),
    ("conditions", "type"),
    ("ownerReferences", "uid"),
];

/// Strategic merge patch: a merge patch, except that the lists in [`MERGE_KEYS`] are merged
/// element by element and `$patch: delete` removes an element. Directives kubectl sends for
/// other purposes (`$setElementOrder/...`, `$retainKeys`) are ignored.
pub fn strategic_merge(doc: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Default::default());
    }
    let doc_map = doc.as_object_mut().expect("object");
    for (key, value) in patch_map {
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            doc_map.remove(key);
            continue;
        }
        let merge_key = MERGE_KEYS.iter().find(|(k, _)| k == key).map(|(_, m)| *m);
        match (merge_key, value, doc_map.get_mut(key)) {
            (Some(mk), Value::Array(items), Some(Value::Array(existing))) => {
                for item in items {
                    let id = &item[mk];
                    let position = existing.iter().position(|e| &e[mk] == id);
                    let delete = item["$patch"].as_str() == Some("delete");
                    match (position, delete) {
                        (Some(i), true) => {
                            existing.remove(i);
                        }
                        (Some(i), false) => strategic_merge(&mut existing[i], item),
                        (None, false) => existing.push(item.clone()),
                        (None, true) => {}
                    }
                }
            }
            (_, Value::Object(_), Some(target)) if target.is_object() => {
                strategic_merge(target, value)
            }
            _ => {
                let mut fresh = Value::Null;
                strategic_merge_into_new(&mut fresh, value);
                doc_map.insert(key.clone(), fresh);
            }
        }
    }
}

/// A patch value placed where nothing was: nulls dropped, directives removed.
fn strategic_merge_into_new(target: &mut Value, value: &Value) {
    match value {
        Value::Object(_) => {
            *target = Value::Object(Default::default());
            strategic_merge(target, value);
        }
        other => *target = other.clone(),
    }
}

/// Applies a JSON patch. A failed operation is described the way the API server does, so a
/// failed `test` reads `testing value <path> failed: test failed`.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(doc, &ops).map_err(|e| {
        let op = patch[e.operation]["op"].as_str().unwrap_or_default();
        if op == "test" {
            format!("testing value {} failed: test failed", e.path)
        } else {
            e.to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_like_kubectl_cordon() {
        let mut node = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}});
        strategic_merge(&mut node, &json!({"spec": {"unschedulable": true}}));
        assert_eq!(node["spec"]["unschedulable"], json!(true));
        assert_eq!(node["spec"]["taints"][0]["key"], "a");
        strategic_merge(&mut node, &json!({"spec": {"unschedulable": null}}));
        assert!(node["spec"].get("unschedulable").is_none());
    }

    #[test]
    fn strategic_merge_merges_conditions_by_type() {
        let mut pod = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]}});
        strategic_merge(
            &mut pod,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        );
        assert_eq!(pod["status"]["conditions"].as_array().unwrap().len(), 2);
        assert_eq!(pod["status"]["conditions"][0]["status"], "True");
    }

    #[test]
    fn failed_test_reads_like_the_api_server() {
        let mut doc = json!({"metadata": {"resourceVersion": "5"}});
        let err = json_patch(
            &mut doc,
            &json!([{"op": "test", "path": "/metadata/resourceVersion", "value": "4"}]),
        )
        .unwrap_err();
        assert!(err.contains("test failed"), "{err}");
    }
}
