//! The command line's arguments: every setting as a flag with an environment variable.
//!
//! A flag wins over its environment variable (clap resolves that), and both win over the
//! configuration file, which wins over the defaults ([`Overrides::apply`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use spotguard_core::config::{CapacityRebalancePolicy, GroupPair};
use spotguard_core::model::TaintEffect;

use crate::settings::{DaemonConfig, LogFormat, Role};
use crate::webhook::WebhookFormat;

/// Arguments of `spotguard run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML). Optional: every setting is also a flag.
    #[arg(long, short = 'c', env = "SPOTGUARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Settings that override the file.
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Arguments of `spotguard check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Configuration file (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Settings that override the file, as `run` would apply them.
    #[command(flatten)]
    pub overrides: Overrides,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 90s, 2m, 1h)"))
}

fn group_pair(s: &str) -> Result<GroupPair, String> {
    match s.split_once('=') {
        Some((spot, on_demand)) if !spot.trim().is_empty() && !on_demand.trim().is_empty() => {
            Ok(GroupPair {
                spot: spot.trim().into(),
                on_demand: on_demand.trim().into(),
            })
        }
        _ => Err("expected SPOT_GROUP=ON_DEMAND_GROUP".into()),
    }
}

fn header_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.trim().to_string()))
        }
        _ => Err("expected NAME=VALUE".into()),
    }
}

fn taint_effect(s: &str) -> Result<TaintEffect, String> {
    TaintEffect::parse(s).ok_or_else(|| "expected NoSchedule, PreferNoSchedule or NoExecute".into())
}

fn rebalance_policy(s: &str) -> Result<CapacityRebalancePolicy, String> {
    match s {
        "refuse" => Ok(CapacityRebalancePolicy::Refuse),
        "drain-only" => Ok(CapacityRebalancePolicy::DrainOnly),
        _ => Err("expected refuse or drain-only".into()),
    }
}

/// Every setting of the file, as an optional flag with an environment variable. Boolean flags
/// take an optional value: `--dry-run` is `--dry-run=true`.
#[derive(Debug, Default, Args)]
pub struct Overrides {
    // ----- engine ---------------------------------------------------------------------------
    /// Spot/on-demand group pair; repeat for several (replaces the file's `groups`).
    #[arg(long = "group", env = "SPOTGUARD_GROUPS", value_delimiter = ',', value_parser = group_pair, value_name = "SPOT=ON_DEMAND", help_heading = "Engine")]
    pub groups: Vec<GroupPair>,
    /// IMDS poll interval (timings.imds_poll).
    #[arg(long, env = "SPOTGUARD_IMDS_POLL", value_parser = duration, value_name = "DURATION", help_heading = "Engine")]
    pub imds_poll: Option<Duration>,
    /// Auto Scaling status poll interval while waiting for an instance (timings.asg_poll).
    #[arg(long, env = "SPOTGUARD_ASG_POLL", value_parser = duration, value_name = "DURATION", help_heading = "Engine")]
    pub asg_poll: Option<Duration>,
    /// Give up waiting for a new instance after this long (timings.scale_up_timeout).
    #[arg(long, env = "SPOTGUARD_SCALE_UP_TIMEOUT", value_parser = duration, value_name = "DURATION", help_heading = "Engine")]
    pub scale_up_timeout: Option<Duration>,
    /// Monitor interval (timings.monitor_interval).
    #[arg(long, env = "SPOTGUARD_MONITOR_INTERVAL", value_parser = duration, value_name = "DURATION", help_heading = "Engine")]
    pub monitor_interval: Option<Duration>,
    /// How long spot must stay healthy before on-demand is released (timings.stability).
    #[arg(long, env = "SPOTGUARD_STABILITY", value_parser = duration, value_name = "DURATION", help_heading = "Engine")]
    pub stability: Option<Duration>,
    /// Ledger cleanup interval (timings.cleanup_interval).
    #[arg(long, env = "SPOTGUARD_CLEANUP_INTERVAL", value_parser = duration, value_name = "DURATION", help_heading = "Engine")]
    pub cleanup_interval: Option<Duration>,
    /// A failed scaling activity this recent makes a group unhealthy (timings.error_window).
    #[arg(long, env = "SPOTGUARD_ERROR_WINDOW", value_parser = duration, value_name = "DURATION", help_heading = "Engine")]
    pub error_window: Option<Duration>,
    /// Stop waiting for a replacement this long before an interruption
    /// (timings.interruption_drain_window).
    #[arg(long, env = "SPOTGUARD_INTERRUPTION_DRAIN_WINDOW", value_parser = duration, value_name = "DURATION", help_heading = "Engine")]
    pub interruption_drain_window: Option<Duration>,
    /// Keep released ledger entries this long (timings.released_retention).
    #[arg(long, env = "SPOTGUARD_RELEASED_RETENTION", value_parser = duration, value_name = "DURATION", help_heading = "Engine")]
    pub released_retention: Option<Duration>,
    /// Settle a fallback whose instance never came after this long (timings.stale_after).
    #[arg(long, env = "SPOTGUARD_STALE_AFTER", value_parser = duration, value_name = "DURATION", help_heading = "Engine")]
    pub stale_after: Option<Duration>,
    /// Key of the taint put on drained nodes (taint.key).
    #[arg(
        long,
        env = "SPOTGUARD_TAINT_KEY",
        value_name = "KEY",
        help_heading = "Engine"
    )]
    pub taint_key: Option<String>,
    /// Value of the taint (taint.value).
    #[arg(
        long,
        env = "SPOTGUARD_TAINT_VALUE",
        value_name = "VALUE",
        help_heading = "Engine"
    )]
    pub taint_value: Option<String>,
    /// Effect of the taint: NoSchedule, PreferNoSchedule or NoExecute (taint.effect).
    #[arg(long, env = "SPOTGUARD_TAINT_EFFECT", value_parser = taint_effect, value_name = "EFFECT", help_heading = "Engine")]
    pub taint_effect: Option<TaintEffect>,
    /// Give a drain up after this long (drain.timeout).
    #[arg(long, env = "SPOTGUARD_DRAIN_TIMEOUT", value_parser = duration, value_name = "DURATION", help_heading = "Engine")]
    pub drain_timeout: Option<Duration>,
    /// Evict pods with emptyDir storage (drain.delete_emptydir_data).
    #[arg(long, env = "SPOTGUARD_DRAIN_DELETE_EMPTYDIR_DATA", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Engine")]
    pub drain_delete_emptydir_data: Option<bool>,
    /// Evict pods no controller manages (drain.force).
    #[arg(long, env = "SPOTGUARD_DRAIN_FORCE", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Engine")]
    pub drain_force: Option<bool>,
    /// Override the pods' termination grace period (drain.grace_period).
    #[arg(long, env = "SPOTGUARD_DRAIN_GRACE_PERIOD", value_parser = duration, value_name = "DURATION", help_heading = "Engine")]
    pub drain_grace_period: Option<Duration>,
    /// Evictions in flight at once (drain.concurrency).
    #[arg(
        long,
        env = "SPOTGUARD_DRAIN_CONCURRENCY",
        value_name = "N",
        help_heading = "Engine"
    )]
    pub drain_concurrency: Option<u32>,
    /// Free CPU to keep after a scale-down, in percent (capacity_buffer.cpu_percent).
    #[arg(
        long,
        env = "SPOTGUARD_BUFFER_CPU_PERCENT",
        value_name = "PERCENT",
        help_heading = "Engine"
    )]
    pub buffer_cpu_percent: Option<u32>,
    /// Free memory to keep after a scale-down, in percent (capacity_buffer.memory_percent).
    #[arg(
        long,
        env = "SPOTGUARD_BUFFER_MEMORY_PERCENT",
        value_name = "PERCENT",
        help_heading = "Engine"
    )]
    pub buffer_memory_percent: Option<u32>,
    /// Pay the spot pre-scale back by terminating the drained instance with decrement
    /// (payback_prescale).
    #[arg(long, env = "SPOTGUARD_PAYBACK_PRESCALE", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Engine")]
    pub payback_prescale: Option<bool>,
    /// On groups with Capacity Rebalancing: refuse or drain-only (capacity_rebalance).
    #[arg(long, env = "SPOTGUARD_CAPACITY_REBALANCE", value_parser = rebalance_policy, value_name = "POLICY", help_heading = "Engine")]
    pub capacity_rebalance: Option<CapacityRebalancePolicy>,
    /// Annotation that protects a fresh replacement node; empty disables
    /// (protect_annotation).
    #[arg(
        long,
        env = "SPOTGUARD_PROTECT_ANNOTATION",
        value_name = "KEY",
        help_heading = "Engine"
    )]
    pub protect_annotation: Option<String>,

    // ----- daemon ---------------------------------------------------------------------------
    /// Role of this process (daemon.role).
    #[arg(long, env = "SPOTGUARD_ROLE", value_enum, help_heading = "Daemon")]
    pub role: Option<Role>,
    /// Namespace of the ledger ConfigMap and the Leases (daemon.namespace).
    #[arg(
        long,
        env = "SPOTGUARD_NAMESPACE",
        value_name = "NAMESPACE",
        help_heading = "Daemon"
    )]
    pub namespace: Option<String>,
    /// ConfigMap holding the fallback ledger (daemon.ledger_configmap).
    #[arg(
        long,
        env = "SPOTGUARD_LEDGER_CONFIGMAP",
        value_name = "NAME",
        help_heading = "Daemon"
    )]
    pub ledger_configmap: Option<String>,
    /// ConfigMap of the monitor's latest verdicts and the recent actions
    /// (daemon.status_configmap).
    #[arg(
        long,
        env = "SPOTGUARD_STATUS_CONFIGMAP",
        value_name = "NAME",
        help_heading = "Daemon"
    )]
    pub status_configmap: Option<String>,
    /// Lease the controllers elect a leader on (daemon.leader_lease).
    #[arg(
        long,
        env = "SPOTGUARD_LEADER_LEASE",
        value_name = "NAME",
        help_heading = "Daemon"
    )]
    pub leader_lease: Option<String>,
    /// Prefix of the per-group scale lock Leases (daemon.scale_lock_prefix).
    #[arg(
        long,
        env = "SPOTGUARD_SCALE_LOCK_PREFIX",
        value_name = "PREFIX",
        help_heading = "Daemon"
    )]
    pub scale_lock_prefix: Option<String>,
    /// How long a crashed holder keeps a Lease (daemon.lease_duration).
    #[arg(long, env = "SPOTGUARD_LEASE_DURATION", value_parser = duration, value_name = "DURATION", help_heading = "Daemon")]
    pub lease_duration: Option<Duration>,
    /// Address of /metrics, /healthz and /readyz (daemon.metrics_addr).
    #[arg(
        long,
        env = "SPOTGUARD_METRICS_ADDR",
        value_name = "ADDR:PORT",
        help_heading = "Daemon"
    )]
    pub metrics_addr: Option<String>,
    /// Log format (daemon.log_format).
    #[arg(
        long,
        env = "SPOTGUARD_LOG_FORMAT",
        value_enum,
        help_heading = "Daemon"
    )]
    pub log_format: Option<LogFormat>,
    /// Log filter, RUST_LOG syntax (daemon.log_level).
    #[arg(
        long,
        env = "SPOTGUARD_LOG_LEVEL",
        value_name = "FILTER",
        help_heading = "Daemon"
    )]
    pub log_level: Option<String>,
    /// Decide and log, change nothing (daemon.dry_run).
    #[arg(long, env = "SPOTGUARD_DRY_RUN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Daemon")]
    pub dry_run: Option<bool>,
    /// IMDS endpoint (daemon.imds_endpoint).
    #[arg(
        long,
        env = "SPOTGUARD_IMDS_ENDPOINT",
        value_name = "URL",
        help_heading = "Daemon"
    )]
    pub imds_endpoint: Option<String>,
    /// File remembering handled notices across restarts (daemon.notice_state_file).
    #[arg(
        long,
        env = "SPOTGUARD_NOTICE_STATE_FILE",
        value_name = "FILE",
        help_heading = "Daemon"
    )]
    pub notice_state_file: Option<PathBuf>,
    /// Auto Scaling endpoint override (daemon.aws_endpoint).
    #[arg(
        long,
        env = "SPOTGUARD_AWS_ENDPOINT",
        value_name = "URL",
        help_heading = "Daemon"
    )]
    pub aws_endpoint: Option<String>,
    /// AWS region (daemon.aws_region).
    #[arg(
        long,
        env = "SPOTGUARD_AWS_REGION",
        value_name = "REGION",
        help_heading = "Daemon"
    )]
    pub aws_region: Option<String>,
    /// Attempts per Auto Scaling call (daemon.aws_max_attempts).
    #[arg(
        long,
        env = "SPOTGUARD_AWS_MAX_ATTEMPTS",
        value_name = "N",
        help_heading = "Daemon"
    )]
    pub aws_max_attempts: Option<u32>,
    /// Kubeconfig file (daemon.kubeconfig).
    #[arg(
        long,
        env = "SPOTGUARD_KUBECONFIG",
        value_name = "FILE",
        help_heading = "Daemon"
    )]
    pub kubeconfig: Option<PathBuf>,
    /// This agent's node: the pods it caches and drains, and Events (daemon.node_name;
    /// default: the node whose providerID holds this instance).
    #[arg(
        long,
        env = "SPOTGUARD_NODE_NAME",
        value_name = "NODE",
        help_heading = "Daemon"
    )]
    pub node_name: Option<String>,
    /// Publish Kubernetes Events (daemon.events).
    #[arg(long, env = "SPOTGUARD_EVENTS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Daemon")]
    pub events: Option<bool>,
    /// Bound on finishing the current step after SIGTERM (daemon.shutdown_timeout).
    #[arg(long, env = "SPOTGUARD_SHUTDOWN_TIMEOUT", value_parser = duration, value_name = "DURATION", help_heading = "Daemon")]
    pub shutdown_timeout: Option<Duration>,
    /// Bound on reaching AWS and the API server at start (daemon.startup_timeout).
    #[arg(long, env = "SPOTGUARD_STARTUP_TIMEOUT", value_parser = duration, value_name = "DURATION", help_heading = "Daemon")]
    pub startup_timeout: Option<Duration>,

    // ----- webhook --------------------------------------------------------------------------
    /// Where to POST notifications (webhook.url; a secret in most services).
    #[arg(
        long,
        env = "SPOTGUARD_WEBHOOK_URL",
        value_name = "URL",
        help_heading = "Webhook"
    )]
    pub webhook_url: Option<String>,
    /// Body shape: slack, teams or json (webhook.format).
    #[arg(
        long,
        env = "SPOTGUARD_WEBHOOK_FORMAT",
        value_enum,
        help_heading = "Webhook"
    )]
    pub webhook_format: Option<WebhookFormat>,
    /// A body template of your own, Jinja2 syntax (webhook.template).
    #[arg(
        long,
        env = "SPOTGUARD_WEBHOOK_TEMPLATE",
        value_name = "TEMPLATE",
        help_heading = "Webhook"
    )]
    pub webhook_template: Option<String>,
    /// A header for each request; repeat for several, or one per line in the variable
    /// (replaces the file's webhook.headers).
    #[arg(long = "webhook-header", env = "SPOTGUARD_WEBHOOK_HEADERS", value_delimiter = '\n', value_parser = header_pair, value_name = "NAME=VALUE", help_heading = "Webhook")]
    pub webhook_headers: Vec<(String, String)>,
    /// Proxy for the requests (webhook.proxy).
    #[arg(
        long,
        env = "SPOTGUARD_WEBHOOK_PROXY",
        value_name = "URL",
        help_heading = "Webhook"
    )]
    pub webhook_proxy: Option<String>,
    /// Events to send, by name; repeat or separate with commas (webhook.events).
    #[arg(
        long = "webhook-event",
        env = "SPOTGUARD_WEBHOOK_EVENTS",
        value_delimiter = ',',
        value_name = "NAME",
        help_heading = "Webhook"
    )]
    pub webhook_events: Vec<String>,
    /// Cluster name shown in each message (webhook.cluster).
    #[arg(
        long,
        env = "SPOTGUARD_WEBHOOK_CLUSTER",
        value_name = "NAME",
        help_heading = "Webhook"
    )]
    pub webhook_cluster: Option<String>,
    /// How long one request may take (webhook.timeout).
    #[arg(long, env = "SPOTGUARD_WEBHOOK_TIMEOUT", value_parser = duration, value_name = "DURATION", help_heading = "Webhook")]
    pub webhook_timeout: Option<Duration>,
    /// Attempts per notification (webhook.attempts).
    #[arg(
        long,
        env = "SPOTGUARD_WEBHOOK_ATTEMPTS",
        value_name = "N",
        help_heading = "Webhook"
    )]
    pub webhook_attempts: Option<u32>,
    /// Pause before the first retry (webhook.backoff).
    #[arg(long, env = "SPOTGUARD_WEBHOOK_BACKOFF", value_parser = duration, value_name = "DURATION", help_heading = "Webhook")]
    pub webhook_backoff: Option<Duration>,
    /// Longest pause between attempts (webhook.max_backoff).
    #[arg(long, env = "SPOTGUARD_WEBHOOK_MAX_BACKOFF", value_parser = duration, value_name = "DURATION", help_heading = "Webhook")]
    pub webhook_max_backoff: Option<Duration>,
    /// Notifications waiting at most before more are dropped (webhook.queue).
    #[arg(
        long,
        env = "SPOTGUARD_WEBHOOK_QUEUE",
        value_name = "N",
        help_heading = "Webhook"
    )]
    pub webhook_queue: Option<usize>,
}

/// Assigns `value` to `target` when the flag or variable was given.
fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *target = v;
    }
}

impl Overrides {
    /// Lays the given flags and variables over `config`.
    pub fn apply(self, config: &mut DaemonConfig) {
        let e = &mut config.engine;
        if !self.groups.is_empty() {
            e.groups = self.groups;
        }
        let t = &mut e.timings;
        set(&mut t.imds_poll, self.imds_poll);
        set(&mut t.asg_poll, self.asg_poll);
        set(&mut t.scale_up_timeout, self.scale_up_timeout);
        set(&mut t.monitor_interval, self.monitor_interval);
        set(&mut t.stability, self.stability);
        set(&mut t.cleanup_interval, self.cleanup_interval);
        set(&mut t.error_window, self.error_window);
        set(
            &mut t.interruption_drain_window,
            self.interruption_drain_window,
        );
        set(&mut t.released_retention, self.released_retention);
        set(&mut t.stale_after, self.stale_after);
        set(&mut e.taint.key, self.taint_key);
        set(&mut e.taint.value, self.taint_value);
        set(&mut e.taint.effect, self.taint_effect);
        set(&mut e.drain.timeout, self.drain_timeout);
        set(
            &mut e.drain.delete_emptydir_data,
            self.drain_delete_emptydir_data,
        );
        set(&mut e.drain.force, self.drain_force);
        if self.drain_grace_period.is_some() {
            e.drain.grace_period = self.drain_grace_period;
        }
        set(&mut e.drain.concurrency, self.drain_concurrency);
        set(&mut e.capacity_buffer.cpu_percent, self.buffer_cpu_percent);
        set(
            &mut e.capacity_buffer.memory_percent,
            self.buffer_memory_percent,
        );
        set(&mut e.payback_prescale, self.payback_prescale);
        set(&mut e.capacity_rebalance, self.capacity_rebalance);
        set(&mut e.protect_annotation, self.protect_annotation);

        let d = &mut config.daemon;
        set(&mut d.role, self.role);
        set(&mut d.namespace, self.namespace);
        set(&mut d.ledger_configmap, self.ledger_configmap);
        set(&mut d.status_configmap, self.status_configmap);
        set(&mut d.leader_lease, self.leader_lease);
        set(&mut d.scale_lock_prefix, self.scale_lock_prefix);
        set(&mut d.lease_duration, self.lease_duration);
        set(&mut d.metrics_addr, self.metrics_addr);
        set(&mut d.log_format, self.log_format);
        set(&mut d.log_level, self.log_level);
        set(&mut d.dry_run, self.dry_run);
        set(&mut d.aws_max_attempts, self.aws_max_attempts);
        set(&mut d.events, self.events);
        set(&mut d.shutdown_timeout, self.shutdown_timeout);
        set(&mut d.startup_timeout, self.startup_timeout);
        for (target, value) in [
            (&mut d.imds_endpoint, self.imds_endpoint),
            (&mut d.aws_endpoint, self.aws_endpoint),
            (&mut d.aws_region, self.aws_region),
            (&mut d.node_name, self.node_name),
        ] {
            if value.is_some() {
                *target = value;
            }
        }
        if self.notice_state_file.is_some() {
            d.notice_state_file = self.notice_state_file;
        }
        if self.kubeconfig.is_some() {
            d.kubeconfig = self.kubeconfig;
        }

        let w = &mut config.webhook;
        for (target, value) in [
            (&mut w.url, self.webhook_url),
            (&mut w.template, self.webhook_template),
            (&mut w.proxy, self.webhook_proxy),
            (&mut w.cluster, self.webhook_cluster),
        ] {
            if value.is_some() {
                *target = value;
            }
        }
        set(&mut w.format, self.webhook_format);
        if !self.webhook_headers.is_empty() {
            w.headers = self.webhook_headers.into_iter().collect();
        }
        if !self.webhook_events.is_empty() {
            w.events = self.webhook_events;
        }
        set(&mut w.timeout, self.webhook_timeout);
        set(&mut w.attempts, self.webhook_attempts);
        set(&mut w.backoff, self.webhook_backoff);
        set(&mut w.max_backoff, self.webhook_max_backoff);
        set(&mut w.queue, self.webhook_queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn check(args: &[&str]) -> CheckConfigArgs {
        let mut all = vec!["spotguard", "check-config", "c.toml"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).unwrap().command {
            Command::CheckConfig(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_override_the_file() {
        let mut config = DaemonConfig::from_toml(
            "groups = [{ spot = \"a\", on_demand = \"b\" }]\n[timings]\nstability = \"5m\"\nasg_poll = \"20s\"\n[daemon]\nrole = \"agent\"\n",
            "c.toml",
        )
        .unwrap();
        check(&[
            "--stability",
            "90s",
            "--role",
            "controller",
            "--dry-run",
            "--group",
            "x=y",
            "--group",
            "z=w",
            "--drain-force=false",
            "--drain-grace-period",
            "10s",
        ])
        .overrides
        .apply(&mut config);
        assert_eq!(config.engine.timings.stability, Duration::from_secs(90));
        assert_eq!(config.engine.timings.asg_poll, Duration::from_secs(20));
        assert_eq!(config.daemon.role, Role::Controller);
        assert!(config.daemon.dry_run);
        assert!(!config.engine.drain.force);
        assert_eq!(
            config.engine.drain.grace_period,
            Some(Duration::from_secs(10))
        );
        let spots: Vec<&str> = config
            .engine
            .groups
            .iter()
            .map(|g| g.spot.as_str())
            .collect();
        assert_eq!(spots, ["x", "z"]);
    }

    #[test]
    fn webhook_flags_override_the_file() {
        let mut config = DaemonConfig::from_toml(
            "groups = [{ spot = \"a\", on_demand = \"b\" }]\n[webhook]\nurl = \"https://old.example/x\"\nheaders = { A = \"0\" }\n",
            "c.toml",
        )
        .unwrap();
        check(&[
            "--webhook-url",
            "https://hooks.example/y",
            "--webhook-header",
            "Authorization=Bearer x=y",
            "--webhook-header",
            "X-Team=platform",
            "--webhook-event",
            "PaidBack,ScaledUp",
            "--webhook-format",
            "teams",
            "--webhook-backoff",
            "3s",
        ])
        .overrides
        .apply(&mut config);
        let w = &config.webhook;
        assert_eq!(w.url.as_deref(), Some("https://hooks.example/y"));
        assert_eq!(
            w.headers.iter().collect::<Vec<_>>(),
            [
                (&"Authorization".to_string(), &"Bearer x=y".to_string()),
                (&"X-Team".to_string(), &"platform".to_string())
            ]
        );
        assert_eq!(w.events, ["PaidBack", "ScaledUp"]);
        assert_eq!(w.format, WebhookFormat::Teams);
        assert_eq!(w.backoff, Duration::from_secs(3));
        assert!(config.validate().is_ok());
        let e = Cli::try_parse_from([
            "spotguard",
            "check-config",
            "c.toml",
            "--webhook-header",
            "novalue",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("NAME=VALUE"), "{e}");
    }

    #[test]
    fn bad_flag_values_name_the_flag() {
        let e = Cli::try_parse_from(["spotguard", "check-config", "c.toml", "--stability", "soon"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--stability"), "{e}");
        let e = Cli::try_parse_from(["spotguard", "check-config", "c.toml", "--group", "a"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SPOT=ON_DEMAND"), "{e}");
    }
}
