//! The daemon's configuration: the engine's [`Config`] (the top-level tables of the file) plus
//! the daemon's own `[daemon]` table, loaded from TOML, overridden by flags and environment
//! variables, validated, and printed back as the effective configuration.
//!
//! Precedence is flags > environment > file > defaults: clap resolves flag over environment
//! (see [`crate::cli::Overrides`]), then the result is laid over the file, which is laid over
//! the defaults.
//!
//! Every error is one line that names the file, the field and the value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spotguard_core::config::{Config, ConfigError, ConfigWarning};

use crate::webhook::WebhookSettings;

/// Which loops this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// One per spot node (a DaemonSet): watches IMDS and hands its instance's notices to the
    /// controller through its own Node.
    Agent,
    /// Leader-elected (a Deployment with 2 replicas): the leader runs phase 1 of every notice
    /// and the monitor.
    Controller,
    /// Both in one process (development, tests, small clusters).
    All,
}

impl Role {
    /// Whether this role watches IMDS and handles notices.
    pub fn runs_agent(self) -> bool {
        matches!(self, Role::Agent | Role::All)
    }

    /// Whether this role campaigns for leadership and runs the monitor.
    #[cfg_attr(not(feature = "daemon"), allow(dead_code))]
    pub fn runs_controller(self) -> bool {
        matches!(self, Role::Controller | Role::All)
    }

    /// The name used in logs and metrics.
    #[cfg_attr(not(feature = "daemon"), allow(dead_code))]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Controller => "controller",
            Role::All => "all",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The `[daemon]` table: how the process is wired, not what the engine decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSettings {
    /// Role of this process (default `all`).
    pub role: Role,
    /// Namespace of the ledger ConfigMap and the Leases (default `spotguard`).
    pub namespace: String,
    /// Name of the ConfigMap that holds the fallback ledger (default `spotguard-ledger`).
    pub ledger_configmap: String,
    /// Name of the ConfigMap where the leading controller records the monitor's latest
    /// verdicts and the recent actions for `spotguard status` (default `spotguard-status`).
    pub status_configmap: String,
    /// Name of the Lease the controllers elect a leader on (default `spotguard-controller`).
    pub leader_lease: String,
    /// Prefix of the per-group scale lock Leases (default `spotguard-scale-`).
    pub scale_lock_prefix: String,
    /// How long a crashed holder keeps a Lease (leader or scale lock) from others
    /// (default 15s).
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints (default `0.0.0.0:9090`).
    pub metrics_addr: String,
    /// `text` or `json` (default `text`).
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax (default `info`).
    pub log_level: String,
    /// Make and log every decision but send no mutating call to AWS or Kubernetes
    /// (default false).
    pub dry_run: bool,
    /// IMDS endpoint (default: the SDK's, `http://169.254.169.254`).
    pub imds_endpoint: Option<String>,
    /// File that remembers handled notices across agent restarts (default: none).
    pub notice_state_file: Option<PathBuf>,
    /// Auto Scaling endpoint override, e.g. a VPC endpoint (default: the region's).
    pub aws_endpoint: Option<String>,
    /// AWS region (default: the standard region chain).
    pub aws_region: Option<String>,
    /// Attempts per Auto Scaling call, first try included (default 5).
    pub aws_max_attempts: u32,
    /// Kubeconfig file (default: in-cluster, then `$KUBECONFIG`, then `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// This agent's node: the only node whose pods an agent caches, and the reporter of its
    /// Kubernetes Events (default: none, and the agent finds the node whose providerID holds
    /// its instance id; the chart sets it).
    pub node_name: Option<String>,
    /// Publish Kubernetes Events on nodes (default true).
    pub events: bool,
    /// On SIGTERM, how long the current step may take to finish before it is abandoned
    /// (default 20s).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long reaching AWS and the API server and syncing the caches may take at start
    /// (default 60s).
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            role: Role::All,
            namespace: "spotguard".into(),
            ledger_configmap: "spotguard-ledger".into(),
            status_configmap: "spotguard-status".into(),
            leader_lease: "spotguard-controller".into(),
            scale_lock_prefix: "spotguard-scale-".into(),
            lease_duration: Duration::from_secs(15),
            metrics_addr: "0.0.0.0:9090".into(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            dry_run: false,
            imds_endpoint: None,
            notice_state_file: None,
            aws_endpoint: None,
            aws_region: None,
            aws_max_attempts: 5,
            kubeconfig: None,
            node_name: None,
            events: true,
            shutdown_timeout: Duration::from_secs(20),
            startup_timeout: Duration::from_secs(60),
        }
    }
}

/// The whole configuration of a `spotguard` process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonConfig {
    /// What the engine decides with.
    pub engine: Config,
    /// How the daemon is wired.
    pub daemon: DaemonSettings,
    /// Webhook notifications (the `[webhook]` table).
    pub webhook: WebhookSettings,
}

/// Why a configuration cannot be used. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The file is not valid TOML or a value has the wrong type or an unknown name.
    #[error("invalid configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// Where and what, on one line.
        message: String,
    },
    /// A value is out of bounds.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
}

fn invalid(field: &str, value: impl fmt::Display, problem: &str) -> SettingsError {
    SettingsError::Invalid(ConfigError {
        field: field.into(),
        value: value.to_string(),
        problem: problem.into(),
    })
}

/// One line out of a TOML error: position, message and the offending line of the file.
fn one_line(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim().replace('\n', "; ");
    let Some(span) = error.span() else {
        return message;
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let source = text.lines().nth(line - 1).unwrap_or_default().trim();
    format!("line {line}, column {column}: {message} (in `{source}`)")
}

impl DaemonConfig {
    /// Parses a configuration file's text; `path` only names it in errors.
    pub fn from_toml(text: &str, path: &str) -> Result<Self, SettingsError> {
        let parse = |message: String| SettingsError::Parse {
            path: path.to_string(),
            message,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| parse(one_line(&e, text)))?;
        let daemon = section(&mut table, "daemon", text).map_err(parse)?;
        let webhook = section(&mut table, "webhook", text).map_err(parse)?;
        let rest = toml::to_string(&table).map_err(|e| parse(e.to_string()))?;
        let engine: Config = toml::from_str(&rest).map_err(|e| parse(in_table(&e, &rest, text)))?;
        Ok(Self {
            engine,
            daemon,
            webhook,
        })
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|e| SettingsError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Validates the engine and daemon settings; returns the warnings, or the first error.
    pub fn validate(&self) -> Result<Vec<ConfigWarning>, SettingsError> {
        let mut warnings = self.engine.validate()?;
        let d = &self.daemon;
        for (field, value) in [
            ("daemon.namespace", &d.namespace),
            ("daemon.ledger_configmap", &d.ledger_configmap),
            ("daemon.status_configmap", &d.status_configmap),
            ("daemon.leader_lease", &d.leader_lease),
        ] {
            if !is_dns_name(value) {
                return Err(invalid(
                    field,
                    format!("{value:?}"),
                    "must be a lowercase DNS name (a-z, 0-9, '-', '.'), at most 63 characters",
                ));
            }
        }
        if d.scale_lock_prefix.is_empty() {
            return Err(invalid(
                "daemon.scale_lock_prefix",
                "\"\"",
                "must not be empty",
            ));
        }
        if d.lease_duration < Duration::from_secs(3) {
            return Err(invalid(
                "daemon.lease_duration",
                show(d.lease_duration),
                "must be at least 3s (the holder renews every third of it)",
            ));
        }
        if d.metrics_addr.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "daemon.metrics_addr",
                format!("{:?}", d.metrics_addr),
                "must be an IP address and port such as 0.0.0.0:9090",
            ));
        }
        if d.aws_max_attempts == 0 {
            return Err(invalid("daemon.aws_max_attempts", 0, "must be at least 1"));
        }
        for (field, value) in [
            ("daemon.shutdown_timeout", d.shutdown_timeout),
            ("daemon.startup_timeout", d.startup_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "0s", "must be greater than zero"));
            }
        }
        for (field, value) in [
            ("daemon.imds_endpoint", &d.imds_endpoint),
            ("daemon.aws_endpoint", &d.aws_endpoint),
        ] {
            if let Some(url) = value {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        field,
                        format!("{url:?}"),
                        "must be an http:// or https:// URL",
                    ));
                }
            }
        }
        self.webhook.validate()?;
        if d.log_level.trim().is_empty() {
            return Err(invalid("daemon.log_level", "\"\"", "must not be empty"));
        }
        if d.dry_run {
            warnings.push(ConfigWarning {
                field: "daemon.dry_run".into(),
                message: "dry-run: decisions are logged and exported, nothing is changed".into(),
            });
        }
        if d.role.runs_agent() && d.notice_state_file.is_none() {
            warnings.push(ConfigWarning {
                field: "daemon.notice_state_file".into(),
                message: "not set: a restarted agent acts again on a notice it already handled"
                    .into(),
            });
        }
        Ok(warnings)
    }

    /// The effective configuration as TOML, `[daemon]` included.
    pub fn to_toml(&self) -> String {
        let mut table = match toml::Table::try_from(&self.engine) {
            Ok(t) => t,
            Err(e) => return format!("# cannot print the configuration: {e}\n"),
        };
        if let Ok(daemon) = toml::Value::try_from(&self.daemon) {
            table.insert("daemon".into(), daemon);
        }
        if let Ok(webhook) = toml::Value::try_from(self.webhook.redacted()) {
            table.insert("webhook".into(), webhook);
        }
        toml::to_string(&table).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// Takes table `name` out of `table` and reads it as `T` (its defaults when absent). The
/// table is read from its own text so errors point at the right line of the file (`text`).
fn section<T: serde::de::DeserializeOwned + Default>(
    table: &mut toml::Table,
    name: &str,
    text: &str,
) -> Result<T, String> {
    let Some(value) = table.remove(name) else {
        return Ok(T::default());
    };
    let own = toml::to_string(&toml::Table::from_iter([(name.to_string(), value)]))
        .map_err(|e| e.to_string())?;
    let mut parsed: std::collections::BTreeMap<String, T> =
        toml::from_str(&own).map_err(|e| in_table(&e, &own, text))?;
    Ok(parsed.remove(name).unwrap_or_default())
}

/// A TOML error in text that was re-serialized from the file: the span points into
/// `serialized`, so find the same key in the original `text` to name its line.
fn in_table(error: &toml::de::Error, serialized: &str, text: &str) -> String {
    let message = error.message().trim().replace('\n', "; ");
    let Some(span) = error.span() else {
        return message;
    };
    let start = span.start.min(serialized.len());
    let line_start = serialized[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = serialized[line_start..].lines().next().unwrap_or_default();
    let key = line.split('=').next().unwrap_or_default().trim();
    if key.is_empty() || key.starts_with('[') {
        return message;
    }
    let found = text.lines().enumerate().find(|(_, l)| {
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    });
    match found {
        Some((n, l)) => format!("line {}: {message} (in `{}`)", n + 1, l.trim()),
        None => format!("{message} (in `{}`)", line.trim()),
    }
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
groups = [{ spot = "web-spot", on_demand = "web-od" }]

[timings]
monitor_interval = "45s"

[daemon]
role = "controller"
namespace = "kube-system"
lease_duration = "20s"
"#;

    #[test]
    fn file_sets_engine_and_daemon_settings() {
        let c = DaemonConfig::from_toml(GOOD, "c.toml").unwrap();
        assert_eq!(c.engine.groups[0].spot, "web-spot");
        assert_eq!(c.engine.timings.monitor_interval, Duration::from_secs(45));
        assert_eq!(c.engine.timings.stability, Duration::from_secs(120));
        assert_eq!(c.daemon.role, Role::Controller);
        assert_eq!(c.daemon.namespace, "kube-system");
        assert_eq!(c.daemon.lease_duration, Duration::from_secs(20));
        assert_eq!(c.daemon.ledger_configmap, "spotguard-ledger");
        assert!(c.validate().unwrap().is_empty());
    }

    #[test]
    fn printed_configuration_reads_back_the_same() {
        let mut c = DaemonConfig::from_toml(GOOD, "c.toml").unwrap();
        c.daemon.imds_endpoint = Some("http://127.0.0.1:1".into());
        c.engine.drain.grace_period = Some(Duration::from_secs(20));
        let text = c.to_toml();
        assert!(text.contains("monitor_interval = \"45s\""), "{text}");
        assert!(text.contains("[daemon]"), "{text}");
        assert_eq!(DaemonConfig::from_toml(&text, "printed").unwrap(), c);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let e = DaemonConfig::from_toml(
            "groups = []\n[timings]\nmonitor_intervall = \"3s\"\n",
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("monitor_intervall"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = DaemonConfig::from_toml("[daemon]\nrole = \"agnet\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("agnet") && e.contains("line 2"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = DaemonConfig::from_toml("[daemon]\nrolle = \"agent\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rolle"), "{e}");
    }

    #[test]
    fn bad_durations_and_syntax_are_one_line() {
        let e = DaemonConfig::from_toml("[timings]\nstability = \"-2m\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stability") && e.contains("c.toml"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = DaemonConfig::from_toml("groups = [\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid configuration file c.toml: line"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn daemon_bounds_name_the_field() {
        let mut c = DaemonConfig::from_toml(GOOD, "c.toml").unwrap();
        c.daemon.metrics_addr = "localhost".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("daemon.metrics_addr = \"localhost\""), "{e}");
        let mut c = DaemonConfig::from_toml(GOOD, "c.toml").unwrap();
        c.daemon.namespace = "Spot_Guard".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("daemon.namespace"));
        let mut c = DaemonConfig::from_toml(GOOD, "c.toml").unwrap();
        c.daemon.lease_duration = Duration::from_secs(1);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("daemon.lease_duration = 1s"));
        let mut c = DaemonConfig::from_toml(GOOD, "c.toml").unwrap();
        c.daemon.aws_endpoint = Some("127.0.0.1:5000".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("daemon.aws_endpoint"));
    }

    #[test]
    fn engine_errors_pass_through() {
        let e = DaemonConfig::default().validate().unwrap_err().to_string();
        assert!(e.contains("groups = []"), "{e}");
    }

    #[test]
    fn agents_without_a_state_file_and_dry_runs_are_warned() {
        let mut c = DaemonConfig::from_toml(GOOD, "c.toml").unwrap();
        c.daemon.role = Role::Agent;
        c.daemon.dry_run = true;
        let fields: Vec<String> = c.validate().unwrap().into_iter().map(|w| w.field).collect();
        assert_eq!(fields, ["daemon.dry_run", "daemon.notice_state_file"]);
    }
}
