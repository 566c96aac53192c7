//! Builders of the objects tests put into the fake.

use serde_json::{json, Value};

/// A Ready node backed by EC2 instance `instance`, with `capacity` as its
/// `eks.amazonaws.com/capacityType` label (`SPOT` or `ON_DEMAND`), 4 CPUs, 16Gi and 110 pods
/// allocatable.
pub fn node(name: &str, instance: &str, capacity: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "eks.amazonaws.com/capacityType": capacity,
                "topology.kubernetes.io/zone": "eu-west-1a",
            },
        },
        "spec": {"providerID": format!("aws:///eu-west-1a/{instance}")},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
        },
    })
}

/// A PodDisruptionBudget selecting `app=<app>` with `minAvailable`.
pub fn pdb_min_available(namespace: &str, name: &str, app: &str, min_available: Value) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
    })
}

/// A PodDisruptionBudget selecting `app=<app>` with `maxUnavailable`.
pub fn pdb_max_unavailable(
    namespace: &str,
    name: &str,
    app: &str,
    max_unavailable: Value,
) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"maxUnavailable": max_unavailable, "selector": {"matchLabels": {"app": app}}},
    })
}

/// A running pod owned by DaemonSet `daemonset` on `node`.
pub fn daemonset_pod(namespace: &str, daemonset: &str, node: &str) -> Value {
    PodBuilder::new(namespace, &format!("{daemonset}-{node}"), node)
        .owned_by("DaemonSet", daemonset)
        .label("app", daemonset)
        .build()
}

/// A running, Ready pod, built step by step.
#[derive(Debug, Clone)]
pub struct PodBuilder {
    pod: Value,
}

impl PodBuilder {
    /// A Running, Ready pod with one container requesting 100m and 128Mi, bound to `node`
    /// (empty: unbound), with no owner.
    pub fn new(namespace: &str, name: &str, node: &str) -> Self {
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {}},
            "spec": {
                "containers": [{"name": "app", "image": "app:1", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
                "terminationGracePeriodSeconds": 30,
            },
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True"},
                    {"type": "ContainersReady", "status": "True"},
                ],
            },
        });
        if !node.is_empty() {
            pod["spec"]["nodeName"] = json!(node);
        }
        Self { pod }
    }

    /// Controlled by `kind/name` (`ReplicaSet`, `DaemonSet`, `StatefulSet`, `Job`, `Node`).
    pub fn owned_by(mut self, kind: &str, name: &str) -> Self {
        let api_version = match kind {
            "ReplicaSet" | "DaemonSet" | "StatefulSet" => "apps/v1",
            "Job" => "batch/v1",
            _ => "v1",
        };
        self.pod["metadata"]["ownerReferences"] = json!([{
            "apiVersion": api_version, "kind": kind, "name": name,
            "uid": format!("uid-{kind}-{name}"), "controller": true, "blockOwnerDeletion": true,
        }]);
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.pod["metadata"]["labels"][key] = json!(value);
        self
    }

    /// Sets the container's requests.
    pub fn requests(mut self, cpu: &str, memory: &str) -> Self {
        self.pod["spec"]["containers"][0]["resources"]["requests"] =
            json!({"cpu": cpu, "memory": memory});
        self
    }

    /// Adds an `emptyDir` volume.
    pub fn empty_dir(mut self) -> Self {
        self.pod["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
        self
    }

    /// Makes it a mirror pod of a static pod.
    pub fn mirror(mut self) -> Self {
        self.pod["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "hash"});
        self
    }

    /// Sets the phase (`Succeeded`, `Failed`, ...); a pod that is not Running is not Ready.
    pub fn phase(mut self, phase: &str) -> Self {
        self.pod["status"]["phase"] = json!(phase);
        if phase != "Running" {
            self.pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        }
        self
    }

    /// Marks it Running but not Ready.
    pub fn unready(mut self) -> Self {
        self.pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        self
    }

    /// Sets `terminationGracePeriodSeconds`.
    pub fn grace_seconds(mut self, seconds: i64) -> Self {
        self.pod["spec"]["terminationGracePeriodSeconds"] = json!(seconds);
        self
    }

    /// The pod object.
    pub fn build(self) -> Value {
        self.pod
    }
}
