//! # spotguard-core
//!
//! The pure decision engine of Spot Guard: the model, the predicates (health, stability,
//! safety), the fallback ledger and the two flows (phase 1 on a rebalance recommendation,
//! phase 2 the monitor that gives on-demand fallback capacity back).
//!
//! What it is **not**: it does no I/O and needs no runtime. It never reads the OS clock, never
//! spawns and never sleeps on tokio; AWS and Kubernetes are reached through the
//! [`ports`] that adapters implement (`spotguard-aws`, `spotguard-k8s`, or the in-memory
//! [`sim`]ulator). Any executor can drive it, and tests drive it with virtual time.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod engine;
pub mod events;
pub mod ledger;
pub mod lock;
pub mod model;
pub mod notice;
pub mod ports;
pub mod predicates;
