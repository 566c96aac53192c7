//! # spotguard-core
//!
//! The pure decision engine of Spot Guard: the model, the predicates (health, stability,
//! safety), the fallback ledger and the two flows (phase 1 on a rebalance recommendation,
//! phase 2 the monitor that gives on-demand fallback capacity back).
//!
//! What it is **not**: it does no I/O and needs no runtime. It never reads the OS clock, never
//! spawns and never sleeps on tokio; AWS and Kubernetes are reached through the
//! [`ports`] that adapters implement (`spotguard-aws`, `spotguard-k8s`, or the in-memory
//! simulator of `spotguard-sim`). Any executor can drive it, and tests drive it with
//! virtual time.
//!
//! - [`model`]: groups, instances, activities, nodes, pods, PDBs (integers, no API types).
//! - [`view`]: a snapshot with its lookups (nodes by name and instance, pods and usage per
//!   node) built once and shared by every decision.
//! - [`predicates`]: `health`, `stability`, `safety`, each a [`predicates::Verdict`] with reasons.
//! - [`ledger`]: every +1 Spot Guard makes, until it is paid back; persisted through a
//!   [`ports::LedgerStore`] with the intent written before the call.
//! - [`engine`]: [`engine::Engine::handle_rebalance`] (phase 1) and
//!   [`engine::Engine::monitor_tick`] (phase 2), generic over the ports.
//! - [`events`]: what the engine did and why; [`status`]: the monitor's latest verdict on
//!   each entry and the recent actions, kept from those events for `spotguard status`.
//!
//! ```
//! use std::collections::BTreeMap;
//! use spotguard_core::config::Config;
//! use spotguard_core::model::*;
//! use spotguard_core::predicates::{safety, Reason};
//!
//! let node = |name: &str, cpu| Node {
//!     name: name.into(), instance_id: Some(format!("i-{name}")), capacity_type: CapacityType::Spot,
//!     ready: true, unschedulable: false, taints: vec![], labels: BTreeMap::new(),
//!     annotations: BTreeMap::new(), allocatable: Resources::new(cpu, 8 << 30, 110),
//! };
//! let pod = Pod {
//!     namespace: "shop".into(), name: "web-1".into(), node: Some("od".into()),
//!     owner: OwnerKind::ReplicaSet, labels: BTreeMap::new(),
//!     requests: Resources::new(1500, 1 << 30, 1), node_selector: BTreeMap::new(),
//!     required_affinity: vec![], tolerations: vec![], mirror: false, local_storage: false,
//!     terminal: false,
//! };
//! let cluster = ClusterSnapshot { nodes: vec![node("od", 4000), node("spot", 1000)], pods: vec![pod], pdbs: vec![] };
//! // The on-demand node cannot go: its pod fits nowhere else.
//! let verdict = safety((&cluster.into(), "i-od", &Config::default()));
//! assert!(matches!(verdict.reasons(), [Reason::PodDoesNotFit { pod, .. }, ..] if pod == "shop/web-1"));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod engine;
pub mod events;
pub mod ledger;
pub mod lock;
pub mod memory;
pub mod model;
pub mod notice;
pub mod ports;
pub mod predicates;
pub mod status;
pub mod view;

pub use config::{Config, GroupPair};
pub use engine::{Engine, Error, MonitorHooks, RebalanceOutcome, Replacement, TickReport};
pub use events::{Event, Observer};
pub use ledger::{Entry, EntryKind, EntryState, Ledger};
pub use lock::LocalScaleLock;
pub use notice::{Notice, NoticeKind};
pub use ports::{
    Clock, Cloud, CloudError, Cluster, ClusterError, LedgerStore, LockError, ScaleLock, StoreError,
};
