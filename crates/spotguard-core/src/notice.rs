//! Notices from EC2 about a spot instance: rebalance recommendations and interruption notices.
//!
//! The watcher in `spotguard-aws` turns IMDS payloads into [`Notice`]s; the simulator makes
//! them from its scenario. Phase 1 ([`crate::engine::Engine::handle_rebalance`]) acts on them.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::model::InstanceId;

/// What EC2 said.
///
/// Deliberately exhaustive, unlike the other public enums: every adapter that receives or
/// records a notice must handle each kind, so a new kind is a breaking change that the
/// compiler points out wherever one is handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoticeKind {
    /// `/latest/meta-data/events/recommendations/rebalance`: the instance is at elevated risk
    /// of interruption.
    Rebalance,
    /// `/latest/meta-data/spot/instance-action`: the instance will be stopped or terminated at
    /// `deadline` (about two minutes after the notice).
    Interruption {
        /// `terminate`, `stop` or `hibernate`.
        action: String,
        /// When EC2 will act.
        #[serde(with = "humantime_serde")]
        deadline: SystemTime,
    },
}

/// A notice about one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The instance the notice is about.
    pub instance_id: InstanceId,
    /// Rebalance recommendation or interruption.
    pub kind: NoticeKind,
    /// `noticeTime` of a rebalance recommendation, or when the interruption notice was seen.
    #[serde(with = "humantime_serde")]
    pub notice_time: SystemTime,
}

impl Notice {
    /// The interruption time, if EC2 announced one.
    pub fn deadline(&self) -> Option<SystemTime> {
        match &self.kind {
            NoticeKind::Interruption { deadline, .. } => Some(*deadline),
            NoticeKind::Rebalance => None,
        }
    }
}
