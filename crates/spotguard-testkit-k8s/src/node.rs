//! Fake nodes whose kubelet kwok plays.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::PostParams;
use kube::Api;
use serde_json::{json, Value};

use crate::KWOK_NODE_ANNOTATION;

/// The taint that admission puts on every new node until the node-lifecycle controller sees
/// it Ready.
const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

/// How long [`NodeBuilder::create`] waits for the node to be Ready and schedulable.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A kwok-managed Node: annotated for kwok, with the labels, taints, provider ID and capacity
/// a test gives it. kwok keeps the capacity (and the allocatable, which defaults to the
/// capacity) and makes the node Ready.
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    taints: Vec<Value>,
    provider_id: Option<String>,
    capacity: BTreeMap<String, String>,
    allocatable: BTreeMap<String, String>,
    internal_ip: Option<String>,
    unschedulable: bool,
}

impl NodeBuilder {
    /// A node named `name` with 4 CPUs, 16 GiB of memory and room for 110 pods, and the
    /// well-known labels `kubernetes.io/hostname` (its name), `kubernetes.io/os` (`linux`) and
    /// `kubernetes.io/arch` (`amd64`).
    pub fn new(name: &str) -> Self {
        let labels = [
            ("kubernetes.io/hostname", name),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let annotations = [(KWOK_NODE_ANNOTATION.0, KWOK_NODE_ANNOTATION.1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let capacity = [("cpu", "4"), ("memory", "16Gi"), ("pods", "110")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self {
            name: name.to_string(),
            labels,
            annotations,
            taints: Vec::new(),
            provider_id: None,
            capacity,
            allocatable: BTreeMap::new(),
            internal_ip: None,
            unschedulable: false,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds (or replaces) a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds (or replaces) an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds a taint; `effect` is `NoSchedule`, `PreferNoSchedule` or `NoExecute`; an empty
    /// `value` leaves the taint without one.
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        let mut taint = json!({"key": key, "effect": effect});
        if !value.is_empty() {
            taint["value"] = json!(value);
        }
        self.taints.push(taint);
        self
    }

    /// Sets `spec.providerID`, for example `aws:///us-east-1a/i-0123456789abcdef0`.
    pub fn provider_id(mut self, provider_id: &str) -> Self {
        self.provider_id = Some(provider_id.to_string());
        self
    }

    /// Sets the CPU capacity (a quantity: `"4"`, `"3500m"`).
    pub fn cpu(self, quantity: &str) -> Self {
        self.capacity("cpu", quantity)
    }

    /// Sets the memory capacity (a quantity: `"16Gi"`).
    pub fn memory(self, quantity: &str) -> Self {
        self.capacity("memory", quantity)
    }

    /// Sets how many pods fit.
    pub fn pods(self, count: u32) -> Self {
        self.capacity("pods", &count.to_string())
    }

    /// Sets the capacity of any resource.
    pub fn capacity(mut self, resource: &str, quantity: &str) -> Self {
        self.capacity
            .insert(resource.to_string(), quantity.to_string());
        self
    }

    /// Sets the allocatable amount of a resource (otherwise it is its capacity).
    pub fn allocatable(mut self, resource: &str, quantity: &str) -> Self {
        self.allocatable
            .insert(resource.to_string(), quantity.to_string());
        self
    }

    /// Sets the node's `InternalIP` address (otherwise kwok's node IP, the same for all).
    pub fn internal_ip(mut self, ip: &str) -> Self {
        self.internal_ip = Some(ip.to_string());
        self
    }

    /// Creates the node cordoned (`spec.unschedulable`).
    pub fn unschedulable(mut self, unschedulable: bool) -> Self {
        self.unschedulable = unschedulable;
        self
    }

    /// The Node object.
    pub fn build(&self) -> Node {
        let mut allocatable = self.capacity.clone();
        allocatable.extend(self.allocatable.clone());
        let mut spec = json!({});
        if let Some(id) = &self.provider_id {
            spec["providerID"] = json!(id);
        }
        if !self.taints.is_empty() {
            spec["taints"] = json!(self.taints);
        }
        if self.unschedulable {
            spec["unschedulable"] = json!(true);
        }
        let mut status = json!({"capacity": self.capacity, "allocatable": allocatable});
        if let Some(ip) = &self.internal_ip {
            status["addresses"] = json!([
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": self.name},
            ]);
        }
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": self.labels,
                "annotations": self.annotations,
            },
            "spec": spec,
            "status": status,
        }))
        .expect("a valid Node")
    }

    /// Creates the node and waits (at most [`NODE_READY_TIMEOUT`]) until kwok made it Ready
    /// and the node-lifecycle controller took its `not-ready` taint off.
    ///
    /// # Panics
    /// When the API refuses the node or it does not become Ready in time.
    pub async fn create(&self, client: &kube::Client) -> Node {
        self.create_checked(client, Instant::now() + NODE_READY_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) async fn create_checked(
        &self,
        client: &kube::Client,
        deadline: Instant,
    ) -> Result<Node, String> {
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .create(&PostParams::default(), &self.build())
            .await
            .map_err(|e| format!("creating node {}: {e}", self.name))?;
        loop {
            let node = nodes
                .get(&self.name)
                .await
                .map_err(|e| format!("reading node {}: {e}", self.name))?;
            if node_is_ready(&node) {
                return Ok(node);
            }
            if Instant::now() >= deadline {
                let status = serde_json::to_string(&node).unwrap_or_default();
                return Err(format!(
                    "node {} did not become Ready and schedulable (is kwok running?): {status}",
                    self.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether the node's `Ready` condition is `True` and it carries no `not-ready` taint.
pub fn node_is_ready(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == NOT_READY_TAINT));
    ready && !tainted
}

/// Whether the pod is bound, `Running` and its `Ready` condition is `True`.
pub fn pod_is_ready(pod: &Pod) -> bool {
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some();
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    bound && running && ready && pod.metadata.deletion_timestamp.is_none()
}
