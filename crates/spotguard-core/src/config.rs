//! Configuration: intervals, timeouts, groups, taint, drain options and the capacity buffer.
//!
//! Every duration is human-readable in files (`"90s"`, `"2m"`). [`Config::validate`] returns
//! errors that name the field and the bad value, and warnings for settings that are legal but
//! probably not meant.
//!
//! ```
//! use spotguard_core::config::{Config, GroupPair};
//! let mut config = Config::default();
//! config.groups.push(GroupPair { spot: "web-spot".into(), on_demand: "web-od".into() });
//! let warnings = config.validate().unwrap();
//! assert!(warnings.is_empty());
//! assert_eq!(config.timings.monitor_interval.as_secs(), 30);
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Taint, TaintEffect};

/// A spot group and the on-demand group that stands in for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupPair {
    /// Spot Auto Scaling group name.
    pub spot: String,
    /// On-demand Auto Scaling group name used as fallback.
    pub on_demand: String,
}

/// Intervals and timeouts of both phases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timings {
    /// IMDS poll interval (default 2s).
    #[serde(with = "humantime_serde")]
    pub imds_poll: Duration,
    /// Interval between Auto Scaling status checks while waiting for an instance (default 10s).
    #[serde(with = "humantime_serde")]
    pub asg_poll: Duration,
    /// Give up waiting for a new instance after this long (default 5m).
    #[serde(with = "humantime_serde")]
    pub scale_up_timeout: Duration,
    /// Monitor interval (default 30s).
    #[serde(with = "humantime_serde")]
    pub monitor_interval: Duration,
    /// How long the spot group must stay healthy before on-demand capacity is released
    /// (default 2m).
    #[serde(with = "humantime_serde")]
    pub stability: Duration,
    /// Ledger cleanup interval (default 10m).
    #[serde(with = "humantime_serde")]
    pub cleanup_interval: Duration,
    /// A failed scaling activity within this window makes a group unhealthy (default 10m).
    #[serde(with = "humantime_serde")]
    pub error_window: Duration,
    /// When an interruption time is known, stop waiting for a replacement this long before it
    /// so the drain still fits (default 90s).
    #[serde(with = "humantime_serde")]
    pub interruption_drain_window: Duration,
    /// Released ledger entries are kept this long for inspection (default 1h).
    #[serde(with = "humantime_serde")]
    pub released_retention: Duration,
    /// A fallback entry whose instance never appeared is settled after this long (default 1h).
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            imds_poll: Duration::from_secs(2),
            asg_poll: Duration::from_secs(10),
            scale_up_timeout: Duration::from_secs(300),
            monitor_interval: Duration::from_secs(30),
            stability: Duration::from_secs(120),
            cleanup_interval: Duration::from_secs(600),
            error_window: Duration::from_secs(600),
            interruption_drain_window: Duration::from_secs(90),
            released_retention: Duration::from_secs(3600),
            stale_after: Duration::from_secs(3600),
        }
    }
}

/// How a drain treats pods, as `kubectl drain`'s flags do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainOptions {
    /// Give up after this long (default 5m); pods still there are reported as blocked.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Evict pods with `emptyDir` local storage (data is lost); otherwise they fail the drain.
    pub delete_emptydir_data: bool,
    /// Evict pods no controller manages (they are not recreated); otherwise they fail the drain.
    pub force: bool,
    /// Override the pods' termination grace period.
    #[serde(with = "humantime_serde")]
    pub grace_period: Option<Duration>,
    /// How many evictions run at once (default 8).
    pub concurrency: u32,
}

impl Default for DrainOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            delete_emptydir_data: true,
            force: false,
            grace_period: None,
            concurrency: 8,
        }
    }
}

/// The taint Spot Guard puts on nodes it drains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaintSpec {
    /// Key (default `spotguard.dev/draining`).
    pub key: String,
    /// Value (default `true`).
    pub value: String,
    /// Effect (default `NoSchedule`).
    pub effect: TaintEffect,
}

impl Default for TaintSpec {
    fn default() -> Self {
        Self {
            key: "spotguard.dev/draining".into(),
            value: "true".into(),
            effect: TaintEffect::NoSchedule,
        }
    }
}

impl TaintSpec {
    /// The taint as a model value.
    pub fn taint(&self) -> Taint {
        Taint {
            key: self.key.clone(),
            value: self.value.clone(),
            effect: self.effect,
        }
    }
}

/// Free capacity the cluster must keep after on-demand capacity is removed, as a percentage
/// of the allocatable capacity of the remaining schedulable nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapacityBuffer {
    /// Free CPU in percent (default 10).
    pub cpu_percent: u32,
    /// Free memory in percent (default 10).
    pub memory_percent: u32,
}

impl Default for CapacityBuffer {
    fn default() -> Self {
        Self {
            cpu_percent: 10,
            memory_percent: 10,
        }
    }
}

/// What to do when a spot group has Capacity Rebalancing enabled (it already launches a
/// replacement on a rebalance recommendation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityRebalancePolicy {
    /// Refuse to act on the group and say so.
    Refuse,
    /// Taint and drain only, never scale.
    DrainOnly,
}

/// The whole engine configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Spot / on-demand group pairs.
    pub groups: Vec<GroupPair>,
    /// Intervals and timeouts.
    pub timings: Timings,
    /// Taint put on nodes being drained.
    pub taint: TaintSpec,
    /// Drain options.
    pub drain: DrainOptions,
    /// Capacity buffer kept after a scale-down.
    pub capacity_buffer: CapacityBuffer,
    /// Pay back the spot pre-scale by terminating the drained at-risk instance with
    /// `ShouldDecrementDesiredCapacity` (default true).
    pub payback_prescale: bool,
    /// Behaviour on groups with Capacity Rebalancing enabled (default `refuse`).
    pub capacity_rebalance: CapacityRebalancePolicy,
    /// Annotation put on a fresh replacement node while the action runs, so cluster-autoscaler
    /// does not remove it (default `cluster-autoscaler.kubernetes.io/scale-down-disabled`;
    /// empty disables).
    pub protect_annotation: String,
    /// How a notice whose handling met a transient error is tried again.
    pub notice_retry: NoticeRetry,
}

/// Retries of a notice whose handling failed on a transient error (an Auto Scaling or
/// Kubernetes API error after the client's own retries, a lost scale lock, a contended
/// ledger). A retry resumes what the ledger says was done; it never raises a group twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoticeRetry {
    /// Attempts in all, the first included (default 6); then the notice is given up, with an
    /// event and a metric.
    pub attempts: u32,
    /// Pause before the first retry (default 5s); it doubles after each one.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// The longest pause between two attempts (default 1m).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for NoticeRetry {
    fn default() -> Self {
        Self {
            attempts: 6,
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            groups: Vec::new(),
            timings: Timings::default(),
            taint: TaintSpec::default(),
            drain: DrainOptions::default(),
            capacity_buffer: CapacityBuffer::default(),
            payback_prescale: true,
            capacity_rebalance: CapacityRebalancePolicy::Refuse,
            protect_annotation: "cluster-autoscaler.kubernetes.io/scale-down-disabled".into(),
            notice_retry: NoticeRetry::default(),
        }
    }
}

/// A configuration error: the field and the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field} = {value}: {problem}")]
pub struct ConfigError {
    /// Dotted field path (`timings.monitor_interval`).
    pub field: String,
    /// The offending value as written.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

/// A legal but suspicious setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Dotted field path.
    pub field: String,
    /// Explanation.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn err(field: impl Into<String>, value: impl fmt::Display, problem: &str) -> ConfigError {
    ConfigError {
        field: field.into(),
        value: value.to_string(),
        problem: problem.into(),
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Config {
    /// Checks the configuration; returns the warnings, or the first error found.
    pub fn validate(&self) -> Result<Vec<ConfigWarning>, ConfigError> {
        let mut warnings = Vec::new();
        if self.groups.is_empty() {
            return Err(err(
                "groups",
                "[]",
                "at least one spot/on-demand pair is required",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, pair) in self.groups.iter().enumerate() {
            for (side, name) in [("spot", &pair.spot), ("on_demand", &pair.on_demand)] {
                if name.trim().is_empty() {
                    return Err(err(
                        format!("groups[{i}].{side}"),
                        "\"\"",
                        "group name is empty",
                    ));
                }
            }
            if pair.spot == pair.on_demand {
                return Err(err(
                    format!("groups[{i}].on_demand"),
                    &pair.on_demand,
                    "the on-demand group must differ from the spot group",
                ));
            }
            if !seen.insert(pair.spot.clone()) {
                return Err(err(
                    format!("groups[{i}].spot"),
                    &pair.spot,
                    "spot group is listed twice",
                ));
            }
        }
        for (i, pair) in self.groups.iter().enumerate() {
            if seen.contains(&pair.on_demand) {
                return Err(err(
                    format!("groups[{i}].on_demand"),
                    &pair.on_demand,
                    "this group is also configured as a spot group",
                ));
            }
        }
        let t = &self.timings;
        for (name, d) in [
            ("timings.imds_poll", t.imds_poll),
            ("timings.asg_poll", t.asg_poll),
            ("timings.scale_up_timeout", t.scale_up_timeout),
            ("timings.monitor_interval", t.monitor_interval),
            ("timings.stability", t.stability),
            ("timings.cleanup_interval", t.cleanup_interval),
            ("timings.error_window", t.error_window),
            ("timings.stale_after", t.stale_after),
            ("drain.timeout", self.drain.timeout),
            ("notice_retry.backoff", self.notice_retry.backoff),
        ] {
            if d.is_zero() {
                return Err(err(name, show(d), "must be greater than zero"));
            }
        }
        if t.asg_poll > t.scale_up_timeout {
            return Err(err(
                "timings.asg_poll",
                show(t.asg_poll),
                "must not exceed timings.scale_up_timeout",
            ));
        }
        if self.drain.grace_period.is_some_and(|g| g.is_zero()) {
            // Zero means "immediately" to Kubernetes; allowed, but worth a word.
            warnings.push(ConfigWarning {
                field: "drain.grace_period".into(),
                message: "0s deletes pods without a graceful shutdown".into(),
            });
        }
        if self.notice_retry.attempts == 0 {
            return Err(err(
                "notice_retry.attempts",
                0,
                "must be at least 1 (the first attempt counts)",
            ));
        }
        if self.notice_retry.max_backoff < self.notice_retry.backoff {
            return Err(err(
                "notice_retry.max_backoff",
                show(self.notice_retry.max_backoff),
                "must not be shorter than notice_retry.backoff",
            ));
        }
        if self.drain.concurrency == 0 {
            return Err(err("drain.concurrency", 0, "must be at least 1"));
        }
        if self.taint.key.trim().is_empty() {
            return Err(err("taint.key", "\"\"", "taint key is empty"));
        }
        for (name, v) in [
            (
                "capacity_buffer.cpu_percent",
                self.capacity_buffer.cpu_percent,
            ),
            (
                "capacity_buffer.memory_percent",
                self.capacity_buffer.memory_percent,
            ),
        ] {
            if v >= 100 {
                return Err(err(name, v, "must be below 100"));
            }
        }
        if t.stability < t.monitor_interval {
            warnings.push(ConfigWarning {
                field: "timings.stability".into(),
                message: format!(
                    "{} is shorter than timings.monitor_interval ({}): stability is only \
                     observed once per monitor tick",
                    show(t.stability),
                    show(t.monitor_interval)
                ),
            });
        }
        if t.interruption_drain_window >= Duration::from_secs(120) {
            warnings.push(ConfigWarning {
                field: "timings.interruption_drain_window".into(),
                message: format!(
                    "{} leaves no time to wait for a replacement before a 2-minute interruption",
                    show(t.interruption_drain_window)
                ),
            });
        }
        Ok(warnings)
    }

    /// The pair a spot group belongs to.
    pub fn pair_for_spot(&self, spot: &str) -> Option<&GroupPair> {
        self.groups.iter().find(|p| p.spot == spot)
    }

    /// Every configured group name, spot first, each once.
    pub fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::with_capacity(self.groups.len() * 2);
        for p in &self.groups {
            for n in [&p.spot, &p.on_demand] {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config {
            groups: vec![GroupPair {
                spot: "s".into(),
                on_demand: "o".into(),
            }],
            ..Config::default()
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let t = Timings::default();
        assert_eq!(t.imds_poll, Duration::from_secs(2));
        assert_eq!(t.asg_poll, Duration::from_secs(10));
        assert_eq!(t.monitor_interval, Duration::from_secs(30));
        assert_eq!(t.stability, Duration::from_secs(120));
        assert_eq!(t.cleanup_interval, Duration::from_secs(600));
        assert_eq!(valid().validate(), Ok(vec![]));
    }

    #[test]
    fn parses_human_durations_from_toml() {
        let c: Config = toml::from_str(
            r#"
            groups = [{ spot = "a", on_demand = "b" }]
            [timings]
            monitor_interval = "45s"
            stability = "3m"
            [drain]
            grace_period = "20s"
            "#,
        )
        .unwrap();
        assert_eq!(c.timings.monitor_interval, Duration::from_secs(45));
        assert_eq!(c.timings.stability, Duration::from_secs(180));
        assert_eq!(c.drain.grace_period, Some(Duration::from_secs(20)));
        assert_eq!(c.timings.imds_poll, Duration::from_secs(2));
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_rejected_by_name() {
        let e = toml::from_str::<Config>("[timings]\nmonitor_intervall = \"3s\"").unwrap_err();
        assert!(e.to_string().contains("monitor_intervall"), "{e}");
        let e = toml::from_str::<Config>("[timings]\nstability = \"-2m\"").unwrap_err();
        assert!(e.to_string().contains("stability"), "{e}");
    }

    #[test]
    fn zero_duration_names_field_and_value() {
        let mut c = valid();
        c.timings.monitor_interval = Duration::ZERO;
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "timings.monitor_interval");
        assert_eq!(e.value, "0s");
        assert!(e.to_string().contains("timings.monitor_interval = 0s"));
    }

    #[test]
    fn identical_groups_rejected() {
        let mut c = valid();
        c.groups[0].on_demand = "s".into();
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "groups[0].on_demand");
        assert_eq!(e.value, "s");
    }

    #[test]
    fn empty_groups_and_names_rejected() {
        assert_eq!(Config::default().validate().unwrap_err().field, "groups");
        let mut c = valid();
        c.groups[0].spot = " ".into();
        assert_eq!(c.validate().unwrap_err().field, "groups[0].spot");
    }

    #[test]
    fn spot_group_reused_as_on_demand_rejected() {
        let mut c = valid();
        c.groups.push(GroupPair {
            spot: "x".into(),
            on_demand: "s".into(),
        });
        assert_eq!(c.validate().unwrap_err().field, "groups[1].on_demand");
        c.groups[1].on_demand = "y".into();
        c.groups.push(GroupPair {
            spot: "x".into(),
            on_demand: "z".into(),
        });
        assert_eq!(c.validate().unwrap_err().field, "groups[2].spot");
    }

    #[test]
    fn short_stability_is_allowed_but_warned() {
        let mut c = valid();
        c.timings.stability = Duration::from_secs(10);
        let w = c.validate().unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].field, "timings.stability");
    }

    #[test]
    fn other_bounds() {
        let mut c = valid();
        c.drain.concurrency = 0;
        assert_eq!(c.validate().unwrap_err().field, "drain.concurrency");
        let mut c = valid();
        c.capacity_buffer.cpu_percent = 100;
        assert_eq!(
            c.validate().unwrap_err().field,
            "capacity_buffer.cpu_percent"
        );
        let mut c = valid();
        c.timings.asg_poll = Duration::from_secs(600);
        assert_eq!(c.validate().unwrap_err().field, "timings.asg_poll");
        let mut c = valid();
        c.taint.key = String::new();
        assert_eq!(c.validate().unwrap_err().field, "taint.key");
        let mut c = valid();
        c.timings.interruption_drain_window = Duration::from_secs(150);
        assert_eq!(
            c.validate().unwrap()[0].field,
            "timings.interruption_drain_window"
        );
    }

    #[test]
    fn group_names_are_unique() {
        let mut c = valid();
        c.groups.push(GroupPair {
            spot: "t".into(),
            on_demand: "o".into(),
        });
        assert_eq!(c.group_names(), vec!["s", "o", "t"]);
    }
}
