//! # spotguard-k8s
//!
//! Spot Guard's Kubernetes adapter. It implements the core's ports over [`kube`]:
//!
//! - [`KubeCluster`] — the [`spotguard_core::ports::Cluster`] port: snapshots of nodes, pods
//!   and PodDisruptionBudgets from watch-backed caches that keep only the core model
//!   ([`SnapshotCache`], scoped to one node's pods for an agent with [`CacheScope`]), node
//!   taints, cordon and annotations
//!   written with optimistic concurrency, and a drain through the Eviction API that respects
//!   PDBs like `kubectl drain` does.
//! - [`ConfigMapLedgerStore`] — the [`spotguard_core::ports::LedgerStore`] port: the fallback
//!   ledger as JSON in a ConfigMap, versioned by its resourceVersion (invariant 3).
//! - [`LeaseScaleLock`] — the [`spotguard_core::ports::ScaleLock`] port on
//!   `coordination.k8s.io/v1` Leases, so handlers in different processes never interleave
//!   their read-modify-write of a group's desired capacity (invariant 1).
//! - [`LeaderElector`] — leader election on a Lease so one monitor acts at a time
//!   (invariant 2).
//! - [`NodeEvents`] — Kubernetes Events on nodes for what Spot Guard did.
//! - [`ConfigMapStatusStore`] — the monitor's latest verdicts and the recent actions, beside
//!   the ledger, for `spotguard status`.
//! - [`TokioClock`] — the [`spotguard_core::ports::Clock`] port on the OS clock and tokio's
//!   timers.
//! - [`notice`] — the hand-over of a notice from an agent (which may write only its own
//!   Node) to the controller, recorded on that Node.
//!
//! What it is **not**: it makes no decision. Whether a node may be drained or a fallback
//! given back is decided in `spotguard-core`; this crate translates API objects into the core
//! model and core actions into API calls. It does not create the Kubernetes client either:
//! the daemon builds a [`kube::Client`] and hands it in.
//!
//! ## Tests
//!
//! The crate is tested against a real control plane (etcd, kube-apiserver, the controller
//! manager's disruption, ReplicaSet and garbage-collector controllers, the scheduler, kwok
//! nodes) that the unpublished `spotguard-testkit-k8s` crate builds from Go modules and starts
//! on loopback; faults come from a proxy in front of the API server.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod clock;
pub mod cluster;
pub mod drain;
pub mod error;
pub mod events;
pub mod lease;
pub mod ledger_store;
pub mod node_writes;
pub mod notice;
pub mod quantity;
pub mod status_store;
pub mod translate;

pub use cache::{CacheScope, SnapshotCache};
pub use clock::TokioClock;
pub use cluster::{KubeCluster, KubeClusterOptions};
pub use error::Error;
pub use events::NodeEvents;
pub use lease::{LeaderElector, LeaseLock, LeaseLockConfig, LeaseScaleLock};
pub use ledger_store::ConfigMapLedgerStore;
pub use status_store::ConfigMapStatusStore;
