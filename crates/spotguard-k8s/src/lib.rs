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
//!
//! What it is **not**: it makes no decision. Whether a node may be drained or a fallback
//! given back is decided in `spotguard-core`; this crate translates API objects into the core
//! model and core actions into API calls. It does not create the Kubernetes client either:
//! the daemon builds a [`kube::Client`] and hands it in.
//!
//! ## Test support
//!
//! With the `test-util` feature, the `testing` module provides a stateful Kubernetes API server fake
//! over real HTTP that both [`kube::Client`] and the real `kubectl` talk to. Existing fakes
//! were evaluated first and none fit:
//!
//! - `kube-fake-client` (0.3) is an in-process tower service (no HTTP, so `kubectl` cannot
//!   use it), is built on kube 4.2 (a second kube in the build), and implements neither the
//!   eviction subresource nor watches with resourceVersions (watch is an interceptor hook).
//! - `kubernetes-mock` (0.1) is an expectation mock on kube 0.83 and hyper 0.14: scripted
//!   answers, no state.
//! - `kmock` (PyPI) is a Python HTTP mock for Kopf operators: it would add a Python service to
//!   every test run and has no PodDisruptionBudget or eviction semantics.
//!
//! Drain correctness hinges on exactly those semantics (429 while a PDB allows no disruption,
//! graceful deletion, replacement pods), so the fake implements them itself.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod cluster;
pub mod drain;
pub mod error;
pub mod events;
pub mod lease;
pub mod ledger_store;
pub mod quantity;
pub mod snapshot;
pub mod taint;
#[cfg(feature = "test-util")]
pub mod testing;

pub use cache::{CacheScope, SnapshotCache};
pub use cluster::{KubeCluster, KubeClusterOptions};
pub use error::Error;
pub use events::NodeEvents;
pub use lease::{LeaderElector, LeaseLock, LeaseLockConfig, LeaseScaleLock};
pub use ledger_store::ConfigMapLedgerStore;
