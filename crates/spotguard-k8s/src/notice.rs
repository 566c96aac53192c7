//! The hand-over of a notice from an agent to the controller, through the agent's own Node.
//!
//! An agent holds no cloud credentials and may write only the Node it runs on. When IMDS
//! announces a rebalance recommendation or an interruption, it taints its node and records
//! the notice in the [`NOTICE_ANNOTATION`] annotation — one write ([`mark_node`]). The
//! controller's node watch sees the annotation ([`pending_notices`]) and runs phase 1; when
//! the node is kept it clears the record ([`clear_notice`]).
//!
//! The controller trusts the node, not the record: the instance a notice is about is the one
//! in the node's `spec.providerID`, which an agent cannot change, so an agent that lies can
//! only make Spot Guard act on its own node. A record naming another instance is refused.
//!
//! The record is JSON:
//!
//! ```json
//! {"instance": "i-0abc", "kind": "interruption", "action": "terminate",
//!  "deadline": "2026-12-02T10:02:00Z", "noticeTime": "2026-12-02T10:00:00Z"}
//! ```

use std::time::SystemTime;

use k8s_openapi::api::core::v1::Node as KNode;
use kube::Api;
use serde::{Deserialize, Serialize};
use spotguard_core::model::{InstanceId, Node, Taint};
use spotguard_core::notice::{Notice, NoticeKind};

use crate::error::{object_name, Error};
use crate::node_writes::{annotation_ops, taint_ops, update_node, WritePolicy};

/// The Node annotation in which an agent records the notice about its instance.
pub const NOTICE_ANNOTATION: &str = "spotguard.dev/notice";

/// What EC2 announced, as recorded on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RecordKind {
    /// A rebalance recommendation.
    Rebalance,
    /// An interruption notice.
    Interruption,
}

/// A notice as an agent records it in [`NOTICE_ANNOTATION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NoticeRecord {
    /// The instance IMDS named (checked against the node's `spec.providerID`).
    pub instance: InstanceId,
    /// Rebalance recommendation or interruption.
    pub kind: RecordKind,
    /// `terminate`, `stop` or `hibernate` (interruptions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// When EC2 will act (interruptions).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub deadline: Option<SystemTime>,
    /// `noticeTime` of a rebalance recommendation, or when the interruption was seen.
    #[serde(with = "humantime_serde")]
    pub notice_time: SystemTime,
}

impl From<&Notice> for NoticeRecord {
    fn from(notice: &Notice) -> Self {
        let (kind, action, deadline) = match &notice.kind {
            NoticeKind::Rebalance => (RecordKind::Rebalance, None, None),
            NoticeKind::Interruption { action, deadline } => (
                RecordKind::Interruption,
                Some(action.clone()),
                Some(*deadline),
            ),
        };
        Self {
            instance: notice.instance_id.clone(),
            kind,
            action,
            deadline,
            notice_time: notice.notice_time,
        }
    }
}

impl NoticeRecord {
    /// Parses an annotation value; the error names the node and the annotation.
    pub fn parse(node: &str, value: &str) -> Result<Self, Error> {
        serde_json::from_str(value).map_err(|e| invalid(node, e.to_string()))
    }

    /// The annotation value.
    pub fn to_value(&self) -> String {
        serde_json::to_string(self).expect("a notice record serializes")
    }

    /// The notice about `node`'s instance (its `spec.providerID`), refused when the record
    /// names another instance or lacks what its kind needs.
    pub fn to_notice(&self, node: &Node) -> Result<Notice, Error> {
        let Some(instance) = node.instance_id.as_ref() else {
            return Err(invalid(
                &node.name,
                "the node has no EC2 instance in spec.providerID".into(),
            ));
        };
        if *instance != self.instance {
            return Err(invalid(
                &node.name,
                format!(
                    "the record names instance {} but the node is instance {instance}",
                    self.instance
                ),
            ));
        }
        let kind = match (self.kind, &self.action, self.deadline) {
            (RecordKind::Rebalance, _, _) => NoticeKind::Rebalance,
            (RecordKind::Interruption, Some(action), Some(deadline)) => NoticeKind::Interruption {
                action: action.clone(),
                deadline,
            },
            (RecordKind::Interruption, _, _) => {
                return Err(invalid(
                    &node.name,
                    "an interruption record needs an action and a deadline".into(),
                ))
            }
        };
        Ok(Notice {
            instance_id: instance.clone(),
            kind,
            notice_time: self.notice_time,
        })
    }

    /// Whether this record may replace `existing` on a node (and an agent's notice one it
    /// has not recorded yet): an interruption is never replaced by a rebalance
    /// recommendation, which says less.
    pub fn supersedes(&self, existing: &NoticeRecord) -> bool {
        self != existing
            && !(existing.kind == RecordKind::Interruption && self.kind == RecordKind::Rebalance)
    }
}

fn invalid(node: &str, message: String) -> Error {
    Error::Invalid {
        object: object_name("node", None, node),
        field: format!("metadata.annotations[{NOTICE_ANNOTATION}]"),
        message,
    }
}

fn record_of(node: &KNode) -> Option<&str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(NOTICE_ANNOTATION)
        .map(String::as_str)
}

/// The agent's one write on a notice: `taint` on its node and the notice recorded in
/// [`NOTICE_ANNOTATION`], in a single patch guarded by the node's resourceVersion. A record
/// already there is replaced only by one that says more (an interruption replaces a
/// rebalance recommendation, never the reverse). Returns whether the node changed.
pub async fn mark_node(
    api: &Api<KNode>,
    node: &str,
    taint: &Taint,
    notice: &Notice,
    policy: WritePolicy,
) -> Result<bool, Error> {
    let record = NoticeRecord::from(notice);
    let value = record.to_value();
    update_node(api, node, policy, "mark", |current| {
        let mut ops = taint_ops(current, taint).unwrap_or_default();
        let keep = record_of(current)
            .and_then(|v| NoticeRecord::parse(node, v).ok())
            .is_some_and(|existing| !record.supersedes(&existing));
        if !keep {
            ops.extend(
                annotation_ops(current, NOTICE_ANNOTATION, Some(&value)).unwrap_or_default(),
            );
        }
        (!ops.is_empty()).then_some(ops)
    })
    .await
}

/// Removes the notice record `record` from the node (the controller, once it has handled
/// it). A different record there (the agent recorded a newer notice meanwhile) is kept.
/// Returns whether the node changed; a node already gone is not an error.
pub async fn clear_notice(
    api: &Api<KNode>,
    node: &str,
    record: &str,
    policy: WritePolicy,
) -> Result<bool, Error> {
    match update_node(api, node, policy, "clear notice", |current| {
        if record_of(current) == Some(record) {
            annotation_ops(current, NOTICE_ANNOTATION, None)
        } else {
            None
        }
    })
    .await
    {
        Err(Error::NotFound { .. }) => Ok(false),
        other => other,
    }
}

/// A notice recorded on a node, as the controller reads it.
#[derive(Debug)]
pub struct PendingNotice {
    /// The node.
    pub node: String,
    /// The annotation as written (what tells one record from the next).
    pub record: String,
    /// The notice about the node's instance, or why the record is refused.
    pub notice: Result<Notice, Error>,
}

/// Every notice recorded on `nodes` (see [`crate::SnapshotCache::nodes_with_annotation`]).
pub fn pending_notices<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<PendingNotice> {
    nodes
        .into_iter()
        .filter_map(|node| {
            let record = node.annotations.get(NOTICE_ANNOTATION)?;
            Some(PendingNotice {
                node: node.name.clone(),
                record: record.clone(),
                notice: NoticeRecord::parse(&node.name, record).and_then(|r| r.to_notice(node)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use spotguard_core::model::{CapacityType, Resources};

    use super::*;

    fn node(instance: &str) -> Node {
        Node {
            name: "node-a".into(),
            instance_id: Some(instance.into()),
            capacity_type: CapacityType::Spot,
            ready: true,
            unschedulable: false,
            taints: vec![],
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            allocatable: Resources::new(1000, 1 << 30, 10),
        }
    }

    fn interruption() -> Notice {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Notice {
            instance_id: "i-a".into(),
            kind: NoticeKind::Interruption {
                action: "terminate".into(),
                deadline: t + Duration::from_secs(120),
            },
            notice_time: t,
        }
    }

    #[test]
    fn a_record_round_trips_to_the_notice_of_the_nodes_instance() {
        let notice = interruption();
        let value = NoticeRecord::from(&notice).to_value();
        assert_eq!(
            value,
            r#"{"instance":"i-a","kind":"interruption","action":"terminate","deadline":"2027-01-15T08:02:00Z","noticeTime":"2027-01-15T08:00:00Z"}"#
        );
        let parsed = NoticeRecord::parse("node-a", &value).unwrap();
        assert_eq!(parsed.to_notice(&node("i-a")).unwrap(), notice);
    }

    #[test]
    fn a_record_about_another_instance_or_malformed_is_refused_naming_the_node() {
        let value = NoticeRecord::from(&interruption()).to_value();
        let e = NoticeRecord::parse("node-a", &value)
            .unwrap()
            .to_notice(&node("i-b"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node/node-a")
                && e.contains("names instance i-a but the node is instance i-b"),
            "{e}"
        );
        let e = NoticeRecord::parse("node-a", "{\"kind\":\"eviction\"}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node/node-a") && e.contains(NOTICE_ANNOTATION),
            "{e}"
        );
        let e = NoticeRecord::parse(
            "node-a",
            r#"{"instance":"i-a","kind":"interruption","noticeTime":"2027-01-15T08:00:00Z"}"#,
        )
        .unwrap()
        .to_notice(&node("i-a"))
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs an action and a deadline"), "{e}");
    }

    #[test]
    fn an_interruption_is_never_replaced_by_a_rebalance_recommendation() {
        let interruption = NoticeRecord::from(&interruption());
        let rebalance = NoticeRecord {
            kind: RecordKind::Rebalance,
            action: None,
            deadline: None,
            ..interruption.clone()
        };
        assert!(interruption.supersedes(&rebalance));
        assert!(!rebalance.supersedes(&interruption));
        assert!(!interruption.supersedes(&interruption));
    }
}
