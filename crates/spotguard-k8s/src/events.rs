//! Kubernetes Events on nodes, so `kubectl describe node` and `kubectl get events` show what
//! Spot Guard did and why.

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};

use crate::error::{object_name, Error};

/// Publishes `events.k8s.io/v1` Events about nodes (in the `default` namespace, where
/// Kubernetes keeps events of cluster-scoped objects). Repeats of the same reason on the same
/// node are folded into one Event series by the recorder.
#[derive(Clone)]
pub struct NodeEvents {
    recorder: Recorder,
    nodes: Api<Node>,
}

impl NodeEvents {
    /// A publisher reporting as `controller` (e.g. `spotguard`), with `instance` (e.g. the pod
    /// name) telling replicas apart.
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: controller.to_string(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            nodes: Api::all(client),
        }
    }

    /// Publishes an event on `node`: `reason` in PascalCase (`SpotGuardDrained`), a
    /// human-readable `message`, and `warning` for things an operator should look at.
    pub async fn publish(
        &self,
        node: &str,
        reason: &str,
        message: &str,
        warning: bool,
    ) -> Result<(), Error> {
        let object = object_name("node", None, node);
        // The UID ties the event to this incarnation of the node; events still publish if
        // the node cannot be read.
        let uid = match self.nodes.get_opt(node).await {
            Ok(found) => found.and_then(|n| n.metadata.uid),
            Err(_) => None,
        };
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            uid,
            ..ObjectReference::default()
        };
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(message.chars().take(1024).collect()),
            action: reason.to_string(),
            secondary: None,
        };
        self.recorder
            .publish(&event, &reference)
            .await
            .map_err(|e| Error::api("publish event on", object, e))
    }
}
