//! IMDS notice payloads, the keys that identify a notice, and the record of notices already
//! emitted.
//!
//! * `/latest/meta-data/events/recommendations/rebalance` answers
//!   `{"noticeTime": "2020-10-27T08:22:00Z"}` once EC2 recommends a rebalance.
//! * `/latest/meta-data/spot/instance-action` answers
//!   `{"action": "terminate", "time": "2017-09-18T08:22:00Z"}` once the instance is to be
//!   interrupted (`stop` and `hibernate` are the other actions).
//!
//! Both answer 404 while there is no notice. A notice is identified by its [`notice_key`]: the
//! instance, the kind and the times EC2 gave, so the same notice read on many polls, or after a
//! restart, has the same key.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use spotguard_core::notice::{Notice, NoticeKind};

use crate::error::AwsError;

/// IMDS path of the instance id.
pub const INSTANCE_ID_PATH: &str = "/latest/meta-data/instance-id";
/// IMDS path of the rebalance recommendation.
pub const REBALANCE_PATH: &str = "/latest/meta-data/events/recommendations/rebalance";
/// IMDS path of the spot interruption notice.
pub const INSTANCE_ACTION_PATH: &str = "/latest/meta-data/spot/instance-action";

/// How many handled keys are remembered (oldest forgotten first). Notices are rare: a few per
/// instance lifetime.
pub const HANDLED_CAPACITY: usize = 64;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RebalancePayload {
    notice_time: String,
}

#[derive(Deserialize)]
struct InstanceActionPayload {
    action: String,
    time: String,
}

fn timestamp(field: &str, value: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(value.trim())
        .map_err(|e| format!("{field} {value:?} is not an RFC 3339 time: {e}"))
}

/// Parses a rebalance recommendation payload into a notice about `instance`.
///
/// ```
/// use spotguard_aws::notice::parse_rebalance;
/// let n = parse_rebalance("i-1", r#"{"noticeTime": "2020-10-27T08:22:00Z"}"#).unwrap();
/// assert_eq!(n.instance_id, "i-1");
/// assert!(parse_rebalance("i-1", "{}").unwrap_err().contains("noticeTime"));
/// ```
pub fn parse_rebalance(instance: &str, payload: &str) -> Result<Notice, String> {
    let parsed: RebalancePayload =
        serde_json::from_str(payload).map_err(|e| format!("not a rebalance notice: {e}"))?;
    Ok(Notice {
        instance_id: instance.to_string(),
        kind: NoticeKind::Rebalance,
        notice_time: timestamp("noticeTime", &parsed.notice_time)?,
    })
}

/// Parses an interruption payload into a notice about `instance`, seen at `seen_at`.
///
/// ```
/// use std::time::SystemTime;
/// use spotguard_aws::notice::parse_instance_action;
/// let payload = r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#;
/// let n = parse_instance_action("i-1", payload, SystemTime::now()).unwrap();
/// assert!(n.deadline().is_some());
/// assert!(parse_instance_action("i-1", r#"{"action": "", "time": "2017-09-18T08:22:00Z"}"#, SystemTime::now()).is_err());
/// ```
pub fn parse_instance_action(
    instance: &str,
    payload: &str,
    seen_at: SystemTime,
) -> Result<Notice, String> {
    let parsed: InstanceActionPayload =
        serde_json::from_str(payload).map_err(|e| format!("not an instance action: {e}"))?;
    let action = parsed.action.trim();
    if action.is_empty() {
        return Err("action is empty".to_string());
    }
    Ok(Notice {
        instance_id: instance.to_string(),
        kind: NoticeKind::Interruption {
            action: action.to_string(),
            deadline: timestamp("time", &parsed.time)?,
        },
        notice_time: seen_at,
    })
}

/// The key that identifies a notice across polls and restarts: instance, kind and the times EC2
/// announced (not when it was seen).
///
/// ```
/// use spotguard_aws::notice::{notice_key, parse_rebalance};
/// let n = parse_rebalance("i-1", r#"{"noticeTime": "2020-10-27T08:22:00Z"}"#).unwrap();
/// assert_eq!(notice_key(&n), "i-1/rebalance/2020-10-27T08:22:00Z");
/// ```
pub fn notice_key(notice: &Notice) -> String {
    match &notice.kind {
        NoticeKind::Rebalance => format!(
            "{}/rebalance/{}",
            notice.instance_id,
            humantime::format_rfc3339(notice.notice_time)
        ),
        NoticeKind::Interruption { action, deadline } => format!(
            "{}/interruption/{action}/{}",
            notice.instance_id,
            humantime::format_rfc3339(*deadline)
        ),
    }
}

/// Keeps a payload short enough for a log line or an error.
pub(crate) fn excerpt(payload: &str) -> String {
    const MAX: usize = 200;
    match payload.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &payload[..cut]),
        None => payload.to_string(),
    }
}

#[derive(Serialize, Deserialize, Default)]
struct StateFile {
    handled: Vec<String>,
}

/// The keys of notices already emitted, optionally kept in a small JSON file
/// (`{"handled": ["i-1/rebalance/...", ...]}`) so a restarted watcher does not emit them again.
/// Holds the last [`HANDLED_CAPACITY`] keys.
#[derive(Debug, Clone, Default)]
pub struct HandledNotices {
    keys: VecDeque<String>,
    file: Option<PathBuf>,
}

impl HandledNotices {
    /// An empty record kept in memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// The record stored in `path`; a missing file is an empty record. A file that cannot be
    /// read or parsed is an error naming it (delete it to start afresh).
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, AwsError> {
        let path = path.into();
        let keys = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let state: StateFile =
                    serde_json::from_str(&text).map_err(|e| state_error(&path, e))?;
                state.handled.into()
            }
            Err(e) if e.kind() == ErrorKind::NotFound => VecDeque::new(),
            Err(e) => return Err(state_error(&path, e)),
        };
        let mut handled = Self {
            keys,
            file: Some(path),
        };
        handled.trim();
        Ok(handled)
    }

    /// The file the record is kept in, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Whether the key was handled.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
    }

    /// The remembered keys, oldest first.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(String::as_str)
    }

    /// Records keys handled elsewhere (e.g. known from the fallback ledger) without writing the
    /// file.
    pub fn seed<I, S>(&mut self, keys: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for key in keys {
            let key = key.into();
            if !self.contains(&key) {
                self.keys.push_back(key);
            }
        }
        self.trim();
    }

    /// Records a key and writes the file (atomically: a temporary file renamed over it). The
    /// key is remembered in memory even when writing fails.
    pub fn insert(&mut self, key: impl Into<String>) -> Result<(), AwsError> {
        self.seed([key]);
        self.save()
    }

    fn trim(&mut self) {
        while self.keys.len() > HANDLED_CAPACITY {
            self.keys.pop_front();
        }
    }

    fn save(&self) -> Result<(), AwsError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let state = StateFile {
            handled: self.keys.iter().cloned().collect(),
        };
        let text = serde_json::to_string_pretty(&state).map_err(|e| state_error(path, e))?;
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, text).map_err(|e| state_error(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| state_error(path, e))
    }
}

fn state_error(path: &Path, e: impl std::fmt::Display) -> AwsError {
    AwsError::StateFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rebalance_payload_parses_notice_time() {
        let n = parse_rebalance("i-1", r#"{"noticeTime": "2020-10-27T08:22:00Z"}"#).unwrap();
        assert_eq!(n.kind, NoticeKind::Rebalance);
        assert_eq!(
            n.notice_time,
            UNIX_EPOCH + Duration::from_secs(1_603_786_920)
        );
    }

    #[test]
    fn instance_action_parses_action_and_deadline() {
        let seen = UNIX_EPOCH + Duration::from_secs(5);
        let n = parse_instance_action(
            "i-1",
            r#"{"action": "stop", "time": "2017-09-18T08:22:00Z"}"#,
            seen,
        )
        .unwrap();
        assert_eq!(n.notice_time, seen);
        assert_eq!(
            n.kind,
            NoticeKind::Interruption {
                action: "stop".into(),
                deadline: UNIX_EPOCH + Duration::from_secs(1_505_722_920),
            }
        );
        assert_eq!(notice_key(&n), "i-1/interruption/stop/2017-09-18T08:22:00Z");
    }

    #[test]
    fn malformed_payloads_say_what_is_wrong() {
        for (payload, expected) in [
            ("not json", "not a rebalance notice"),
            (r#"{"noticeTime": 5}"#, "not a rebalance notice"),
            (r#"{"noticeTime": "yesterday"}"#, "noticeTime \"yesterday\""),
        ] {
            let e = parse_rebalance("i-1", payload).unwrap_err();
            assert!(e.contains(expected), "{payload}: {e}");
        }
        let e = parse_instance_action("i-1", r#"{"action": "terminate"}"#, UNIX_EPOCH).unwrap_err();
        assert!(e.contains("time"), "{e}");
    }

    #[test]
    fn excerpts_cut_long_payloads() {
        assert_eq!(excerpt("short"), "short");
        let long = "x".repeat(500);
        assert_eq!(excerpt(&long).len(), 203);
    }

    #[test]
    fn handled_keys_survive_a_reload_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notices.json");
        let mut handled = HandledNotices::load(&path).unwrap();
        assert!(!handled.contains("a"));
        handled.insert("a").unwrap();
        let reloaded = HandledNotices::load(&path).unwrap();
        assert!(reloaded.contains("a"));

        let mut many = HandledNotices::in_memory();
        many.seed((0..HANDLED_CAPACITY + 5).map(|i| format!("k{i}")));
        assert!(!many.contains("k0"));
        assert!(many.contains(&format!("k{}", HANDLED_CAPACITY + 4)));
        assert_eq!(many.keys().count(), HANDLED_CAPACITY);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notices.json");
        std::fs::write(&path, "{").unwrap();
        match HandledNotices::load(&path).unwrap_err() {
            AwsError::StateFile { path: p, .. } => assert_eq!(p, path),
            other => panic!("unexpected {other:?}"),
        }
    }
}
