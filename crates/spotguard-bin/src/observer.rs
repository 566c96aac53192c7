//! The daemon's [`Observer`] of engine events: a structured log line for each, the metrics,
//! and Kubernetes Events on the nodes concerned.
//!
//! `observe` is called inline by the engine and must not block: Kubernetes Events go through a
//! bounded channel to a publishing task, and are dropped (and counted) when it falls behind.
//! Taints, cordons and drains are published as Events by the Kubernetes adapter itself; this
//! observer adds the ones only the engine knows about.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use spotguard_core::events::{Event, Observer};
use spotguard_k8s::NodeEvents;
use tokio::sync::mpsc;

use crate::metrics::{GroupLabel, KindLabel, Metrics, ScaleUpLabels};
use crate::notify::Notifier;
use crate::status_book::StatusBook;

/// A Kubernetes Event to publish on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    /// Node.
    pub node: String,
    /// PascalCase reason.
    pub reason: &'static str,
    /// Message.
    pub message: String,
    /// Warning rather than Normal.
    pub warning: bool,
}

/// The node of each instance whose notice the controller took in (instance → node), so the
/// engine's notice events become Events on that node.
pub type NoticeNodes = Arc<Mutex<HashMap<String, String>>>;

/// Logs, counts and forwards engine events.
pub struct DaemonObserver {
    metrics: Arc<Metrics>,
    events: Option<mpsc::Sender<NodeEvent>>,
    on_demand_groups: HashSet<String>,
    notice_nodes: NoticeNodes,
    status: Option<StatusBook>,
    notifier: Option<Notifier>,
}

impl DaemonObserver {
    /// An observer counting into `metrics`; `on_demand_groups` tells fallback paybacks from
    /// spot pre-scale paybacks.
    pub fn new(metrics: Arc<Metrics>, on_demand_groups: HashSet<String>) -> Self {
        Self {
            metrics,
            events: None,
            on_demand_groups,
            notice_nodes: NoticeNodes::default(),
            status: None,
            notifier: None,
        }
    }

    /// Sends webhook notifications through `notifier`.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Keeps `book` (the monitor's latest verdicts, the recent actions) up to date.
    pub fn with_status(mut self, book: StatusBook) -> Self {
        self.status = Some(book);
        self
    }

    /// Publishes node events through `events` (see [`publish_node_events`]).
    pub fn with_events(mut self, events: mpsc::Sender<NodeEvent>) -> Self {
        self.events = Some(events);
        self
    }

    /// Where the nodes of the notices taken in are recorded (see [`NoticeNodes`]).
    pub fn with_notice_nodes(mut self, nodes: NoticeNodes) -> Self {
        self.notice_nodes = nodes;
        self
    }

    fn node_of(&self, instance: &str) -> Option<String> {
        self.notice_nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(instance)
            .cloned()
    }

    fn forward(&self, node: &str, reason: &'static str, message: String, warning: bool) {
        let Some(events) = &self.events else {
            return;
        };
        let event = NodeEvent {
            node: node.to_string(),
            reason,
            message,
            warning,
        };
        if events.try_send(event).is_err() {
            self.metrics.events_dropped.inc();
        }
    }

    fn count(&self, event: &Event) {
        let m = &self.metrics;
        let scale_up = |group: &str, outcome: &str| {
            m.scale_ups
                .get_or_create(&ScaleUpLabels {
                    group: group.into(),
                    outcome: outcome.into(),
                })
                .inc();
        };
        match event {
            Event::NoticeReceived { kind, .. } => {
                m.notices
                    .get_or_create(&KindLabel { kind: kind.clone() })
                    .inc();
            }
            Event::NoticeCoalesced { .. } => {
                m.notices_coalesced.inc();
            }
            Event::NoticeRejected { .. } => {
                m.notices_rejected.inc();
            }
            Event::NoticeRetrying { .. } => {
                m.notice_retries.inc();
            }
            Event::NoticeAbandoned { .. } => {
                m.notices_abandoned.inc();
            }
            Event::ScalingSkipped { .. } => {
                m.scaling_skipped.inc();
            }
            Event::ScaledUp { group, .. } => scale_up(group, "raised"),
            Event::ScaleUpFailed { group, .. } => scale_up(group, "failed"),
            Event::InstanceReady { group, .. } => scale_up(group, "instance_ready"),
            Event::FallbackRecorded { group, .. } => {
                m.fallbacks
                    .get_or_create(&GroupLabel {
                        group: group.clone(),
                    })
                    .inc();
            }
            Event::NoReplacement { .. } => {
                m.no_replacement.inc();
            }
            Event::PaidBack { group, held, .. } => {
                let label = GroupLabel {
                    group: group.clone(),
                };
                if self.on_demand_groups.contains(group) {
                    m.scale_downs.get_or_create(&label).inc();
                    m.fallback_seconds
                        .get_or_create(&label)
                        .inc_by(held.as_secs_f64());
                } else {
                    m.prescale_paybacks.get_or_create(&label).inc();
                }
            }
            Event::Verdict { check, verdict, .. } => m.count_verdict(*check, verdict),
            Event::Error { .. } => {
                m.engine_errors.inc();
            }
            _ => {}
        }
    }
}

impl Observer for DaemonObserver {
    fn observe(&self, at: SystemTime, event: &Event) {
        self.count(event);
        if let Some(book) = &self.status {
            book.observe(at, event);
        }
        if let Some(notifier) = &self.notifier {
            notifier.notify(at, event);
        }
        let kind = event.name();
        let s = event.subjects();
        let (instance, node, group, entry) = (
            s.instance.unwrap_or_default(),
            s.node.unwrap_or_default(),
            s.group.unwrap_or_default(),
            s.entry.unwrap_or_default(),
        );
        macro_rules! log {
            ($level:ident) => {
                tracing::$level!(event = kind, instance, node, group, entry, "{event}")
            };
        }
        match event {
            Event::Verdict { verdict, .. } if verdict.is_go() => log!(debug),
            _ if event.is_warning() => log!(warn),
            _ => log!(info),
        }

        match event {
            Event::NoticeReceived { instance, kind } => {
                if let Some(node) = self.node_of(instance) {
                    let message = format!("{kind} notice for instance {instance}");
                    self.forward(&node, "SpotGuardNotice", message, true);
                }
            }
            Event::NoticeRejected { instance, reason } => {
                if let Some(node) = self.node_of(instance) {
                    let message = format!("Notice not acted on: {reason}");
                    self.forward(&node, "SpotGuardNoticeRejected", message, true);
                }
            }
            Event::NoticeAbandoned {
                instance,
                attempts,
                reason,
            } => {
                if let Some(node) = self.node_of(instance) {
                    let message = format!("Notice given up after {attempts} attempts: {reason}");
                    self.forward(&node, "SpotGuardNoticeAbandoned", message, true);
                }
            }
            Event::NoReplacement { node, reason } => {
                let message = format!("No replacement capacity: {reason}");
                self.forward(node, "SpotGuardNoReplacement", message, true);
            }
            Event::ScaleDownStarted { entry, node } => {
                let message = format!("Removing on-demand fallback node ({entry})");
                self.forward(node, "SpotGuardScaleDown", message, false);
            }
            _ => {}
        }
    }
}

/// Publishes forwarded node events until every sender is dropped.
pub async fn publish_node_events(events: NodeEvents, mut queue: mpsc::Receiver<NodeEvent>) {
    while let Some(e) = queue.recv().await {
        if let Err(error) = events
            .publish(&e.node, e.reason, &e.message, e.warning)
            .await
        {
            tracing::warn!(node = %e.node, reason = e.reason, error = %error, "could not publish a Kubernetes Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paybacks_are_told_apart_and_events_never_block() {
        let metrics = Metrics::new("all", false);
        let (tx, mut rx) = mpsc::channel(1);
        let nodes = NoticeNodes::default();
        nodes.lock().unwrap().insert("i-1".into(), "node-1".into());
        let observer = DaemonObserver::new(metrics.clone(), HashSet::from(["od".to_string()]))
            .with_events(tx)
            .with_notice_nodes(nodes);
        let now = SystemTime::now();
        for group in ["od", "spot"] {
            observer.observe(
                now,
                &Event::PaidBack {
                    entry: "e".into(),
                    group: group.into(),
                    how: "terminated".into(),
                    held: std::time::Duration::from_secs(3600),
                },
            );
        }
        for _ in 0..3 {
            observer.observe(
                now,
                &Event::NoticeReceived {
                    instance: "i-1".into(),
                    kind: "rebalance".into(),
                },
            );
        }
        let text = metrics.encode();
        assert!(
            text.contains("spotguard_scale_downs_total{group=\"od\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("spotguard_prescale_paybacks_total{group=\"spot\"} 1"),
            "{text}"
        );
        assert!(text.contains("spotguard_events_dropped_total 2"), "{text}");
        let first = rx.try_recv().unwrap();
        assert_eq!(first.node, "node-1");
        assert_eq!(first.reason, "SpotGuardNotice");
    }
}
