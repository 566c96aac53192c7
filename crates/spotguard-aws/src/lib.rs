//! # spotguard-aws
//!
//! The AWS side of Spot Guard:
//!
//! * [`AwsCloud`]: the core's [`Cloud`](spotguard_core::ports::Cloud) port over Amazon EC2 Auto
//!   Scaling (`aws-sdk-autoscaling`), with batched describes, bounds checked before any scaling
//!   call, the SDK's standard retries, errors that name the group or instance, and an
//!   [`ApiCallCounter`] of every call.
//! * [`NoticeWatcher`]: polls the instance metadata service (IMDSv2) for rebalance
//!   recommendations and spot interruption notices and emits each
//!   [`Notice`](spotguard_core::notice::Notice) once, across polls and restarts.
//!
//! The crate is tested against moto in server mode, a fault-injection proxy in front of it and
//! a local IMDS server, from the unpublished `spotguard-testkit-aws` crate.
//!
//! What it is **not**: it makes no decision. When to scale, fall back, drain or give capacity
//! back is decided by `spotguard-core`; this crate turns SDK objects into core model types and
//! core actions into API calls. It owns the tokio tasks of the IMDS watcher so the core stays
//! free of any runtime.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod calls;
pub mod cloud;
pub mod error;
pub mod imds;
pub mod notice;

pub use calls::{ApiCallCounter, CallSnapshot, OperationCalls};
pub use cloud::{AwsCloud, AwsCloudBuilder};
pub use error::AwsError;
pub use imds::{NoticeWatcher, NoticeWatcherBuilder, PollReport, WatcherCounts, WatcherStats};
pub use notice::{notice_key, HandledNotices};
