//! Prometheus metrics (prometheus-client), and [`Metered`]: the Kubernetes-side ports counted
//! call by call, with drain durations and evictions blocked by PodDisruptionBudgets.
//!
//! Auto Scaling calls are counted by the AWS adapter's [`ApiCallCounter`] and IMDS polls by
//! the notice watcher; both are copied into the registry at each scrape ([`Metrics::encode`]).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use spotguard_aws::{ApiCallCounter, CallSnapshot, WatcherCounts, WatcherStats};
use spotguard_core::config::DrainOptions;
use spotguard_core::events::Check;
use spotguard_core::ledger::{EntryKind, Ledger};
use spotguard_core::model::Taint;
use spotguard_core::ports::{
    Cluster, ClusterError, DrainReport, LedgerStore, LockError, PodOutcome, ScaleLock, StoreError,
    Versioned,
};
use spotguard_core::predicates::{Reason, Verdict};
use spotguard_core::view::ClusterView;

/// Labels of API call counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// `autoscaling`, `kubernetes` or `imds`.
    pub service: String,
    /// `SetDesiredCapacity`, `patch node`, `poll`, ...
    pub operation: String,
}

/// A single `kind` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Kind.
    pub kind: String,
}

/// A single `group` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    /// Auto Scaling group.
    pub group: String,
}

/// Scale-up labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleUpLabels {
    /// Auto Scaling group.
    pub group: String,
    /// `raised`, `failed` or `instance_ready`.
    pub outcome: String,
}

/// A single `state` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// Ledger entry state.
    pub state: String,
}

/// A single `outcome` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `complete` or `incomplete`.
    pub outcome: String,
}

/// A single `pdb` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PdbLabel {
    /// `namespace/name` of the PodDisruptionBudget, `unknown` when the API did not say.
    pub pdb: String,
}

/// Predicate verdict labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// `health`, `stability` or `safety`.
    pub check: String,
    /// `go` or `wait`.
    pub verdict: String,
}

/// Wait reason labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `health`, `stability` or `safety`.
    pub check: String,
    /// The reason's name (`CapacityMismatch`, `PdbBlocks`, ...).
    pub reason: String,
}

/// Build information.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: String,
    /// Role of the process.
    pub role: String,
    /// Whether the process runs in dry-run mode.
    pub dry_run: String,
}

type Refresh = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Every metric of the daemon.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// The name of every metric family registered, with its `spotguard_` prefix and unit.
    families: Vec<String>,
    refreshers: Mutex<Vec<Refresh>>,
    /// Notices received, by kind.
    pub notices: Family<KindLabel, Counter>,
    /// Notices an agent recorded on its node for the controller, by kind.
    pub notices_handed_over: Family<KindLabel, Counter>,
    /// Notices merged into an action already running.
    pub notices_coalesced: Counter,
    /// Notices not acted on.
    pub notices_rejected: Counter,
    /// Attempts at a notice that failed on a transient error and were tried again.
    pub notice_retries: Counter,
    /// Notices given up after transient errors (retry limit or interruption time reached).
    pub notices_abandoned: Counter,
    /// Interruptions drained without asking for replacement capacity.
    pub scaling_skipped: Counter,
    /// Scale-ups by group and outcome.
    pub scale_ups: Family<ScaleUpLabels, Counter>,
    /// On-demand fallbacks recorded, by on-demand group.
    pub fallbacks: Family<GroupLabel, Counter>,
    /// Actions that went on with the existing node (no replacement).
    pub no_replacement: Counter,
    /// Ledger entries by state, as last seen by the leading controller.
    pub ledger_entries: Family<StateLabel, Gauge>,
    /// On-demand fallback capacity given back, by on-demand group.
    pub scale_downs: Family<GroupLabel, Counter>,
    /// Spot pre-scales paid back, by spot group.
    pub prescale_paybacks: Family<GroupLabel, Counter>,
    /// On-demand instance time held by fallbacks given back, in seconds, by on-demand group.
    pub fallback_seconds: Family<GroupLabel, Counter<f64, AtomicU64>>,
    /// Age of the oldest open ledger entry, by entry kind (0 when none is open).
    pub oldest_open_entry: Family<KindLabel, Gauge<f64, AtomicU64>>,
    /// Webhook notifications by outcome (sent, failed, dropped).
    pub notifications: Family<OutcomeLabel, Counter>,
    /// Drain durations in seconds, by outcome.
    pub drain_seconds: Family<OutcomeLabel, Histogram>,
    /// Pods a drain left in place because a PodDisruptionBudget refused their eviction.
    pub evictions_blocked: Family<PdbLabel, Counter>,
    /// API calls by service and operation.
    pub api_calls: Family<ApiLabels, Counter>,
    /// API calls that failed (after retries), by service and operation.
    pub api_errors: Family<ApiLabels, Counter>,
    /// Mutating calls not sent because of dry-run.
    pub dry_run_suppressed: Family<ApiLabels, Counter>,
    /// Predicate verdicts.
    pub verdicts: Family<VerdictLabels, Counter>,
    /// Reasons of wait verdicts.
    pub wait_reasons: Family<ReasonLabels, Counter>,
    /// Errors the engine logged and carried on from.
    pub engine_errors: Counter,
    /// 1 while this process leads the controllers.
    pub leader: Gauge,
    /// Kubernetes Events dropped because the publisher was behind.
    pub events_dropped: Counter,
    aws_seen: Mutex<CallSnapshot>,
    imds_seen: Mutex<WatcherCounts>,
}

fn drain_histogram() -> Histogram {
    // 0.5 s to about 17 min.
    Histogram::new(exponential_buckets(0.5, 2.0, 12))
}

impl Metrics {
    /// Registers every metric under `spotguard_`.
    pub fn new(role: &str, dry_run: bool) -> Arc<Self> {
        let mut metrics = Self {
            registry: Mutex::new(Registry::with_prefix("spotguard")),
            families: Vec::new(),
            refreshers: Mutex::new(Vec::new()),
            notices: Family::default(),
            notices_handed_over: Family::default(),
            notices_coalesced: Counter::default(),
            notices_rejected: Counter::default(),
            notice_retries: Counter::default(),
            notices_abandoned: Counter::default(),
            scaling_skipped: Counter::default(),
            scale_ups: Family::default(),
            fallbacks: Family::default(),
            no_replacement: Counter::default(),
            ledger_entries: Family::default(),
            scale_downs: Family::default(),
            prescale_paybacks: Family::default(),
            fallback_seconds: Family::default(),
            oldest_open_entry: Family::default(),
            notifications: Family::default(),
            drain_seconds: Family::new_with_constructor(drain_histogram),
            evictions_blocked: Family::default(),
            api_calls: Family::default(),
            api_errors: Family::default(),
            dry_run_suppressed: Family::default(),
            verdicts: Family::default(),
            wait_reasons: Family::default(),
            engine_errors: Counter::default(),
            leader: Gauge::default(),
            events_dropped: Counter::default(),
            aws_seen: Mutex::new(CallSnapshot::default()),
            imds_seen: Mutex::new(WatcherCounts::default()),
        };
        {
            let mut r = metrics.registry.lock().unwrap_or_else(|e| e.into_inner());
            let families = &mut metrics.families;
            families.push("spotguard_build".into());
            r.register(
                "build",
                "Version, role and mode of this process",
                Info::new(BuildLabels {
                    version: env!("CARGO_PKG_VERSION").into(),
                    role: role.into(),
                    dry_run: dry_run.to_string(),
                }),
            );
            families.push("spotguard_notices".into());
            r.register(
                "notices",
                "Rebalance recommendations and interruption notices received, by kind",
                metrics.notices.clone(),
            );
            families.push("spotguard_notices_handed_over".into());
            r.register(
                "notices_handed_over",
                "Notices an agent recorded on its own node for the controller (taint and \
                 record in one write), by kind",
                metrics.notices_handed_over.clone(),
            );
            families.push("spotguard_notices_coalesced".into());
            r.register(
                "notices_coalesced",
                "Notices merged into an action already running for the instance",
                metrics.notices_coalesced.clone(),
            );
            families.push("spotguard_notices_rejected".into());
            r.register(
                "notices_rejected",
                "Notices not acted on (unknown instance, no node, policy)",
                metrics.notices_rejected.clone(),
            );
            families.push("spotguard_notice_retries".into());
            r.register(
                "notice_retries",
                "Attempts at a notice that met a transient error and were tried again",
                metrics.notice_retries.clone(),
            );
            families.push("spotguard_notices_abandoned".into());
            r.register(
                "notices_abandoned",
                "Notices given up after transient errors (retry limit or interruption time reached)",
                metrics.notices_abandoned.clone(),
            );
            families.push("spotguard_scaling_skipped".into());
            r.register(
                "scaling_skipped",
                "Interruptions drained without replacement capacity (group unknown, Capacity \
                 Rebalancing refused, or Auto Scaling unreachable)",
                metrics.scaling_skipped.clone(),
            );
            families.push("spotguard_scale_ups".into());
            r.register(
                "scale_ups",
                "Scale-ups by group and outcome (raised, failed, instance_ready)",
                metrics.scale_ups.clone(),
            );
            families.push("spotguard_fallbacks".into());
            r.register(
                "fallbacks",
                "On-demand fallbacks recorded in the ledger, by on-demand group",
                metrics.fallbacks.clone(),
            );
            families.push("spotguard_no_replacement".into());
            r.register(
                "no_replacement",
                "Actions that continued on the existing node because neither spot nor on-demand delivered",
                metrics.no_replacement.clone(),
            );
            families.push("spotguard_ledger_entries".into());
            r.register(
                "ledger_entries",
                "Fallback ledger entries by state, as last read by the leading controller",
                metrics.ledger_entries.clone(),
            );
            families.push("spotguard_scale_downs".into());
            r.register(
                "scale_downs",
                "On-demand fallback instances given back, by on-demand group",
                metrics.scale_downs.clone(),
            );
            families.push("spotguard_prescale_paybacks".into());
            r.register(
                "prescale_paybacks",
                "Spot pre-scales paid back, by spot group",
                metrics.prescale_paybacks.clone(),
            );
            families.push("spotguard_fallback_instance_seconds".into());
            r.register_with_unit(
                "fallback_instance",
                "On-demand instance time held by fallbacks that were given back, counted at \
                 the payback, by on-demand group",
                prometheus_client::registry::Unit::Seconds,
                metrics.fallback_seconds.clone(),
            );
            families.push("spotguard_oldest_open_entry_age_seconds".into());
            r.register_with_unit(
                "oldest_open_entry_age",
                "Age of the oldest open ledger entry, by kind (fallback, prescale, surplus); \
                 0 when none is open (leading controller)",
                prometheus_client::registry::Unit::Seconds,
                metrics.oldest_open_entry.clone(),
            );
            families.push("spotguard_notifications".into());
            r.register(
                "notifications",
                "Webhook notifications by outcome (sent, failed after retries, dropped because \
                 the queue was full)",
                metrics.notifications.clone(),
            );
            families.push("spotguard_drain_duration_seconds".into());
            r.register_with_unit(
                "drain_duration",
                "Duration of node drains, by outcome (complete, incomplete)",
                prometheus_client::registry::Unit::Seconds,
                metrics.drain_seconds.clone(),
            );
            families.push("spotguard_evictions_blocked_by_pdb".into());
            r.register(
                "evictions_blocked_by_pdb",
                "Pods a drain left in place because a PodDisruptionBudget refused the eviction",
                metrics.evictions_blocked.clone(),
            );
            families.push("spotguard_api_calls".into());
            r.register(
                "api_calls",
                "API calls by service (autoscaling, kubernetes, imds) and operation",
                metrics.api_calls.clone(),
            );
            families.push("spotguard_api_errors".into());
            r.register(
                "api_errors",
                "API calls that failed after retries, by service and operation",
                metrics.api_errors.clone(),
            );
            families.push("spotguard_dry_run_suppressed_calls".into());
            r.register(
                "dry_run_suppressed_calls",
                "Mutating calls not sent because of dry-run, by service and operation",
                metrics.dry_run_suppressed.clone(),
            );
            families.push("spotguard_verdicts".into());
            r.register(
                "verdicts",
                "Predicate verdicts on ledger entries, by check and verdict",
                metrics.verdicts.clone(),
            );
            families.push("spotguard_wait_reasons".into());
            r.register(
                "wait_reasons",
                "Reasons of wait verdicts, by check and reason",
                metrics.wait_reasons.clone(),
            );
            families.push("spotguard_engine_errors".into());
            r.register(
                "engine_errors",
                "Errors the engine logged and carried on from",
                metrics.engine_errors.clone(),
            );
            families.push("spotguard_leader".into());
            r.register(
                "leader",
                "1 while this process leads the controllers and runs the monitor",
                metrics.leader.clone(),
            );
            families.push("spotguard_events_dropped".into());
            r.register(
                "events_dropped",
                "Kubernetes Events dropped because the publisher was behind",
                metrics.events_dropped.clone(),
            );
        }
        Arc::new(metrics)
    }

    /// The name of every metric family registered (`spotguard_notices`, ...), whether or not
    /// it has a sample yet: what the deploy guide's table must list.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn families(&self) -> &[String] {
        &self.families
    }

    /// Runs `refresh` before every scrape (copies counters kept elsewhere).
    pub fn on_scrape(&self, refresh: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.refreshers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(refresh));
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        for refresh in self
            .refreshers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            refresh(self);
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            out = format!("# encoding failed: {e}\n");
        }
        out
    }

    fn api(service: &str, operation: &str) -> ApiLabels {
        ApiLabels {
            service: service.into(),
            operation: operation.into(),
        }
    }

    /// Counts one API call, and its failure.
    pub fn count_call(&self, service: &str, operation: &str, failed: bool) {
        let labels = Self::api(service, operation);
        self.api_calls.get_or_create(&labels).inc();
        if failed {
            self.api_errors.get_or_create(&labels).inc();
        }
    }

    /// Counts a mutating call dry-run did not send.
    pub fn count_suppressed(&self, service: &str, operation: &str) {
        self.dry_run_suppressed
            .get_or_create(&Self::api(service, operation))
            .inc();
    }

    /// Copies the Auto Scaling call counts made since the last copy.
    pub fn sync_aws(&self, counter: &ApiCallCounter) {
        let now = counter.snapshot();
        let mut seen = self.aws_seen.lock().unwrap_or_else(|e| e.into_inner());
        for (operation, delta) in now.since(&seen).by_operation {
            let labels = Self::api("autoscaling", &operation);
            self.api_calls
                .get_or_create(&labels)
                .inc_by(delta.operations);
            if delta.failures > 0 {
                self.api_errors
                    .get_or_create(&labels)
                    .inc_by(delta.failures);
            }
        }
        *seen = now;
    }

    /// Copies the IMDS poll counts made since the last copy.
    pub fn sync_imds(&self, stats: &WatcherStats) {
        let now = stats.snapshot();
        let mut seen = self.imds_seen.lock().unwrap_or_else(|e| e.into_inner());
        let labels = Self::api("imds", "poll");
        self.api_calls
            .get_or_create(&labels)
            .inc_by(now.polls.saturating_sub(seen.polls));
        let errors = (now.errors + now.malformed).saturating_sub(seen.errors + seen.malformed);
        if errors > 0 {
            self.api_errors.get_or_create(&labels).inc_by(errors);
        }
        *seen = now;
    }

    /// Sets the ledger gauge from a ledger.
    pub fn set_ledger(&self, ledger: &Ledger, now: SystemTime) {
        for kind in [EntryKind::Fallback, EntryKind::Prescale, EntryKind::Surplus] {
            let oldest = ledger
                .open()
                .filter(|e| e.kind == kind)
                .map(|e| now.duration_since(e.created_at).unwrap_or_default())
                .max()
                .unwrap_or_default();
            self.oldest_open_entry
                .get_or_create(&KindLabel {
                    kind: kind.as_str().into(),
                })
                .set(oldest.as_secs_f64());
        }
        let [pending, active, draining, released] = ledger.counts();
        for (state, n) in [
            ("pending", pending),
            ("active", active),
            ("draining", draining),
            ("released", released),
        ] {
            self.ledger_entries
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n as i64);
        }
    }

    /// Counts a predicate verdict and its reasons.
    pub fn count_verdict(&self, check: Check, verdict: &Verdict) {
        let check = format!("{check:?}").to_lowercase();
        let word = if verdict.is_go() { "go" } else { "wait" };
        self.verdicts
            .get_or_create(&VerdictLabels {
                check: check.clone(),
                verdict: word.into(),
            })
            .inc();
        for reason in verdict.reasons() {
            self.wait_reasons
                .get_or_create(&ReasonLabels {
                    check: check.clone(),
                    reason: reason_name(reason),
                })
                .inc();
        }
    }

    /// Records a finished drain.
    pub fn record_drain(&self, report: &DrainReport, took: Duration) {
        let outcome = if report.is_complete() {
            "complete"
        } else {
            "incomplete"
        };
        self.drain_seconds
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .observe(took.as_secs_f64());
        for pod in &report.pods {
            if let PodOutcome::Blocked { pdb } = &pod.outcome {
                self.evictions_blocked
                    .get_or_create(&PdbLabel {
                        pdb: pdb.clone().unwrap_or_else(|| "unknown".into()),
                    })
                    .inc();
            }
        }
    }
}

/// The name of a reason's variant (`CapacityMismatch`, ...), a bounded label value.
pub fn reason_name(reason: &Reason) -> String {
    let debug = format!("{reason:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A Kubernetes-side port whose calls are counted in [`Metrics`].
pub struct Metered<P> {
    inner: P,
    metrics: Arc<Metrics>,
}

impl<P> Metered<P> {
    /// Counts `inner`'s calls into `metrics`.
    pub fn new(inner: P, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    /// The port whose calls are counted.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    fn count<T, E>(&self, operation: &str, result: Result<T, E>) -> Result<T, E> {
        self.metrics
            .count_call("kubernetes", operation, result.is_err());
        result
    }
}

#[async_trait]
impl<K: Cluster> Cluster for Metered<K> {
    async fn snapshot(&self) -> Result<Arc<ClusterView>, ClusterError> {
        // Served from the watch caches: not an API call.
        self.inner.snapshot().await
    }

    async fn taint(&self, node: &str, taint: &Taint) -> Result<(), ClusterError> {
        let r = self.inner.taint(node, taint).await;
        self.count("taint node", r)
    }

    async fn untaint(&self, node: &str, key: &str) -> Result<(), ClusterError> {
        let r = self.inner.untaint(node, key).await;
        self.count("untaint node", r)
    }

    async fn set_unschedulable(&self, node: &str, unschedulable: bool) -> Result<(), ClusterError> {
        let r = self.inner.set_unschedulable(node, unschedulable).await;
        self.count("cordon node", r)
    }

    async fn annotate(
        &self,
        node: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<(), ClusterError> {
        let r = self.inner.annotate(node, key, value).await;
        self.count("annotate node", r)
    }

    async fn drain(&self, node: &str, options: &DrainOptions) -> Result<DrainReport, ClusterError> {
        let started = Instant::now();
        let r = self.inner.drain(node, options).await;
        if let Ok(report) = &r {
            self.metrics.record_drain(report, started.elapsed());
        }
        self.count("drain node", r)
    }
}

#[async_trait]
impl<S: LedgerStore> LedgerStore for Metered<S> {
    async fn load(&self) -> Result<Versioned<Ledger>, StoreError> {
        let r = self.inner.load().await;
        self.count("get ledger configmap", r)
    }

    async fn save(&self, ledger: &Ledger, expected: Option<String>) -> Result<String, StoreError> {
        let r = self.inner.save(ledger, expected).await;
        // A conflict is optimistic concurrency at work, not a failure.
        let failed = matches!(r, Err(ref e) if !matches!(e, StoreError::Conflict { .. }));
        self.metrics
            .count_call("kubernetes", "save ledger configmap", failed);
        r
    }
}

#[async_trait]
impl<L: ScaleLock> ScaleLock for Metered<L> {
    async fn acquire(&self, group: &str) -> Result<(), LockError> {
        let r = self.inner.acquire(group).await;
        self.count("acquire scale lease", r)
    }

    async fn release(&self, group: &str) -> Result<(), LockError> {
        let r = self.inner.release(group).await;
        self.count("release scale lease", r)
    }

    fn release_abandoned(&self, group: &str) {
        self.inner.release_abandoned(group)
    }

    async fn confirm(&self, group: &str) -> Result<(), LockError> {
        let r = self.inner.confirm(group).await;
        self.count("confirm scale lease", r)
    }
}

/// The Grafana dashboard under `deploy/grafana/` is checked against these metrics.
#[cfg(test)]
#[path = "dashboard_tests.rs"]
mod dashboard_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use spotguard_core::ports::PodReport;

    #[test]
    fn the_deploy_guide_lists_every_metric_the_daemon_registers() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/deploy.md");
        let guide = std::fs::read_to_string(path).expect("docs/deploy.md");
        // Every `spotguard_…` name in a row of the guide's tables, as its family: labels and
        // the sample suffixes (`_total`, `_info`) off.
        let documented: std::collections::BTreeSet<String> = guide
            .lines()
            .filter(|l| l.starts_with("| `spotguard_"))
            .flat_map(|l| l.split('`').skip(1).step_by(2).map(str::to_string))
            .filter(|name| name.starts_with("spotguard_"))
            .map(|name| {
                let name = name.split('{').next().unwrap_or_default();
                let name = name.strip_suffix("_total").unwrap_or(name);
                name.strip_suffix("_info").unwrap_or(name).to_string()
            })
            .collect();
        let metrics = Metrics::new("all", false);
        let registered: std::collections::BTreeSet<String> =
            metrics.families().iter().cloned().collect();
        assert!(registered.len() > 20, "{registered:?}");
        let undocumented: Vec<_> = registered.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&registered).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "registered but not in docs/deploy.md: {undocumented:?}; in the guide but not registered: {unknown:?}"
        );
    }

    #[test]
    fn exposition_names_what_the_issue_lists() {
        let m = Metrics::new("all", false);
        m.notices
            .get_or_create(&KindLabel {
                kind: "rebalance".into(),
            })
            .inc();
        m.count_call("kubernetes", "taint node", true);
        m.count_verdict(
            Check::Health,
            &Verdict::Wait(vec![Reason::NotHealthy { group: "g".into() }]),
        );
        m.record_drain(
            &DrainReport {
                node: "n".into(),
                pods: vec![PodReport {
                    pod: "a/b".into(),
                    outcome: PodOutcome::Blocked {
                        pdb: Some("a/pdb".into()),
                    },
                }],
            },
            Duration::from_secs(3),
        );
        m.set_ledger(&Ledger::default(), SystemTime::now());
        let text = m.encode();
        for needle in [
            "spotguard_notices_total{kind=\"rebalance\"} 1",
            "spotguard_api_calls_total{service=\"kubernetes\",operation=\"taint node\"} 1",
            "spotguard_api_errors_total{service=\"kubernetes\",operation=\"taint node\"} 1",
            "spotguard_wait_reasons_total{check=\"health\",reason=\"NotHealthy\"} 1",
            "spotguard_evictions_blocked_by_pdb_total{pdb=\"a/pdb\"} 1",
            "spotguard_drain_duration_seconds_count{outcome=\"incomplete\"} 1",
            "spotguard_ledger_entries{state=\"pending\"} 0",
            "spotguard_oldest_open_entry_age_seconds{kind=\"fallback\"} 0",
            "spotguard_build_info{version=",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }

    #[test]
    fn reason_names_are_variant_names() {
        assert_eq!(
            reason_name(&Reason::PdbBlocks {
                pdb: "a/b".into(),
                pods_on_node: 1,
                disruptions_allowed: 0
            }),
            "PdbBlocks"
        );
    }
}
