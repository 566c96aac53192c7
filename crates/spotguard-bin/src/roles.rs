//! The two roles of the daemon, as loops:
//!
//! * the **agent** ([`run_agent`]): one per spot node, with rights over its own Node only
//!   and no cloud credentials. The notice watcher polls IMDS; each new notice for this node's
//!   instance is handed to the controller by tainting the node and recording the notice on
//!   it, in one write ([`spotguard_k8s::notice::mark_node`]), retried on API errors.
//! * the **controller** ([`run_controller`]): campaigns on the leader Lease; only the leader
//!   acts. It runs phase 1 ([`Engine::handle_notice`](spotguard_core::engine::Engine::handle_notice))
//!   for every notice recorded on a node, woken by its node watch ([`notice_loop`]), and the
//!   monitor ([`Engine::recover`](spotguard_core::engine::Engine::recover) once after
//!   winning, then [`Engine::monitor_tick`](spotguard_core::engine::Engine::monitor_tick) every
//!   `monitor_interval` and [`Engine::cleanup`](spotguard_core::engine::Engine::cleanup) every
//!   `cleanup_interval`). A replica that stops leading stops both at once (invariant 2).
//!
//! With the controller down, an agent still taints its node and records the notice: no new
//! pod lands there, nothing is drained, and the next leader acts on every record it finds.
//!
//! Both stop taking new work on shutdown and give the step under way
//! `daemon.shutdown_timeout` to finish.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Node as KNode;
use kube::Api;
use spotguard_aws::NoticeWatcher;
use spotguard_core::config::NoticeRetry;
use spotguard_core::engine::{Error as EngineError, MonitorHooks, RebalanceOutcome, TickReport};
use spotguard_core::model::Taint;
use spotguard_core::notice::{Notice, NoticeKind};
use spotguard_k8s::node_writes::WritePolicy;
use spotguard_k8s::notice::{
    clear_notice, mark_node, pending_notices, NoticeRecord, NOTICE_ANNOTATION,
};
use spotguard_k8s::LeaderElector;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::metrics::{KindLabel, Metrics};
use crate::observer::NoticeNodes;
use crate::shutdown::Shutdown;
use crate::status_book::{StatusBook, StatusPublisher};
use crate::wiring::DaemonEngine;

/// How an agent hands its notices to the controller.
pub enum Handover {
    /// Taint the node and record the notice on it, where the controller reads it.
    Node(NodeMarker),
    /// In one process with the controller (`role = "all"`): the node is marked as by
    /// [`Handover::Node`] (not in dry-run), and the notice goes straight to the controller,
    /// which takes it in once.
    Local {
        /// The agent's node.
        node: String,
        /// The controller's intake.
        sender: mpsc::Sender<(String, Notice)>,
        /// The node write; `None` in dry-run.
        marker: Option<NodeMarker>,
    },
    /// Dry-run agent alone: log what would be written.
    DryRun {
        /// The agent's node.
        node: String,
    },
}

/// Writes an agent's notices on its node.
pub struct NodeMarker {
    /// Nodes, with the agent's credentials.
    pub nodes: Api<KNode>,
    /// The agent's node.
    pub node: String,
    /// The taint phase 1 puts on an at-risk node.
    pub taint: Taint,
    /// How failed writes are retried.
    pub retry: NoticeRetry,
}

impl Handover {
    /// How a failed hand-over is retried: only node writes fail and are retried.
    fn retry(&self) -> Option<&NoticeRetry> {
        match self {
            Handover::Node(marker) => Some(&marker.retry),
            Handover::Local { .. } | Handover::DryRun { .. } => None,
        }
    }
}

impl NodeMarker {
    /// Taints the node and records `notice` on it, in one write.
    async fn mark(&self, notice: &Notice, metrics: &Metrics) -> Result<(), spotguard_k8s::Error> {
        let written = mark_node(
            &self.nodes,
            &self.node,
            &self.taint,
            notice,
            WritePolicy::default(),
        )
        .await;
        metrics.count_call("kubernetes", "mark node", written.is_err());
        let changed = written?;
        tracing::info!(instance = %notice.instance_id, node = %self.node, kind = kind_of(notice), changed, "notice recorded on this node for the controller");
        Ok(())
    }
}

fn kind_of(notice: &Notice) -> &'static str {
    match notice.kind {
        NoticeKind::Rebalance => "rebalance",
        NoticeKind::Interruption { .. } => "interruption",
    }
}

/// A notice being handed over, and when to try again after a failed write.
struct Pending {
    notice: Notice,
    attempts: u32,
    retry_at: Option<Instant>,
    pause: Duration,
}

/// Hands every new notice of this node over until shutdown. A write that fails is retried
/// (`notice_retry`: attempts, doubling pauses, never past the interruption time); a newer
/// notice that says more replaces one not written yet.
pub async fn run_agent(
    handover: Handover,
    watcher: NoticeWatcher,
    poll: Duration,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let (sender, mut notices) = mpsc::channel::<Notice>(8);
    let stop = shutdown.clone();
    let watching = tokio::spawn(watcher.run(poll, sender, async move { stop.triggered().await }));
    let mut pending: Option<Pending> = None;
    loop {
        if let Some(p) = pending.as_mut().filter(|p| p.retry_at.is_none()) {
            match hand_over(&handover, &p.notice, &metrics).await {
                Ok(()) => pending = None,
                Err(e) => {
                    p.attempts += 1;
                    let past_deadline = p
                        .notice
                        .deadline()
                        .is_some_and(|d| SystemTime::now() + p.pause >= d);
                    // Only a node write fails, and only a `Node` hand-over returns it.
                    let retry = handover.retry();
                    if retry.is_none_or(|r| p.attempts >= r.attempts.max(1)) || past_deadline {
                        tracing::error!(
                            instance = %p.notice.instance_id,
                            attempts = p.attempts,
                            error = %e,
                            "could not record the notice on this node; the controller will not see it"
                        );
                        pending = None;
                    } else {
                        tracing::warn!(
                            instance = %p.notice.instance_id,
                            attempt = p.attempts,
                            error = %e,
                            "recording the notice on this node failed; retrying in {}",
                            humantime::format_duration(p.pause)
                        );
                        p.retry_at = Some(Instant::now() + p.pause);
                        p.pause = (p.pause * 2).min(retry.map_or(p.pause, |r| r.max_backoff));
                    }
                }
            }
            continue;
        }
        let retry_at = pending.as_ref().and_then(|p| p.retry_at);
        tokio::select! {
            _ = shutdown.triggered() => break,
            notice = notices.recv() => match notice {
                Some(notice) => {
                    let newer = NoticeRecord::from(&notice);
                    let replaces = pending.as_ref().is_none_or(|p| {
                        newer.supersedes(&NoticeRecord::from(&p.notice))
                    });
                    if replaces {
                        let pause = handover.retry().map_or(Duration::ZERO, |r| r.backoff);
                        pending = Some(Pending { notice, attempts: 0, retry_at: None, pause });
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                if let Some(p) = pending.as_mut() {
                    p.retry_at = None;
                }
            }
        }
    }
    let _ = watching.await;
}

/// One attempt at handing `notice` over.
async fn hand_over(
    handover: &Handover,
    notice: &Notice,
    metrics: &Metrics,
) -> Result<(), spotguard_k8s::Error> {
    let instance = &notice.instance_id;
    let kind = kind_of(notice);
    match handover {
        Handover::Node(marker) => marker.mark(notice, metrics).await?,
        Handover::Local {
            node,
            sender,
            marker,
        } => {
            match marker {
                // The controller beside it taints the node as its phase 1 begins anyway.
                Some(marker) => {
                    if let Err(e) = marker.mark(notice, metrics).await {
                        tracing::warn!(%instance, %node, error = %e, "could not record the notice on this node; handing it to this process's controller all the same");
                    }
                }
                None => {
                    tracing::info!(%instance, %node, kind, "dry-run: would taint node {node} and record the {kind} notice on it; handed to this process's controller");
                    metrics.count_suppressed("kubernetes", "mark node");
                }
            }
            let _ = sender.send((node.clone(), notice.clone())).await;
        }
        Handover::DryRun { node } => {
            tracing::info!(%instance, %node, kind, "dry-run: would taint node {node} and record the {kind} notice on it");
            metrics.count_suppressed("kubernetes", "mark node");
        }
    }
    metrics
        .notices_handed_over
        .get_or_create(&KindLabel { kind: kind.into() })
        .inc();
    Ok(())
}

/// Where the leading controller takes notices in from.
pub struct NoticeIntake {
    /// Wakes on every change of the cached nodes.
    pub changes: watch::Receiver<u64>,
    /// Nodes, with the controller's credentials (to clear handled records).
    pub nodes: Api<KNode>,
    /// Notices handed over within this process (an agent beside the controller).
    pub local: Option<tokio::sync::Mutex<mpsc::Receiver<(String, Notice)>>>,
    /// Where the node of each notice taken in is recorded, for the observer.
    pub notice_nodes: NoticeNodes,
    /// Dry-run: records are not cleared.
    pub dry_run: bool,
    /// The daemon's metrics.
    pub metrics: Arc<Metrics>,
}

/// Phase 1 for every notice recorded on a node (and handed over in-process by an agent beside
/// the controller),
/// each in its own task, until stopped; then it waits for the handlers under way.
/// A record is taken in once per leadership; once handled, it is cleared from its node (a
/// newer record the agent wrote meanwhile stays, and is taken in next).
pub async fn notice_loop(engine: Arc<DaemonEngine>, intake: Arc<NoticeIntake>, stop: Shutdown) {
    let mut changes = intake.changes.clone();
    let mut local = match &intake.local {
        Some(receiver) => Some(receiver.lock().await),
        None => None,
    };
    // Node → the record taken in; and the records of notices taken in from this process
    // that the node watch has not shown yet.
    let mut taken: HashMap<String, String> = HashMap::new();
    let mut awaited: HashSet<(String, String)> = HashSet::new();
    let mut handlers = JoinSet::new();
    loop {
        changes.borrow_and_update();
        let cache = engine.cluster().inner().inner().cache();
        let pending = pending_notices(&cache.nodes_with_annotation(NOTICE_ANNOTATION));
        let shown =
            |node: &str, record: &str| pending.iter().any(|p| p.node == node && p.record == record);
        awaited.retain(|(node, record)| !shown(node, record));
        taken.retain(|node, record| {
            shown(node, record) || awaited.contains(&(node.clone(), record.clone()))
        });
        for p in pending {
            if taken.get(&p.node) == Some(&p.record) {
                continue;
            }
            taken.insert(p.node.clone(), p.record.clone());
            match p.notice {
                Ok(notice) => {
                    let (engine, intake) = (engine.clone(), intake.clone());
                    handlers.spawn(async move {
                        take_in(&engine, &intake, &p.node, notice, Some(&p.record)).await
                    });
                }
                Err(e) => {
                    intake.metrics.notices_rejected.inc();
                    tracing::warn!(node = %p.node, error = %e, "notice record refused");
                }
            }
        }
        tokio::select! {
            _ = stop.triggered() => break,
            changed = changes.changed() => if changed.is_err() { break },
            Some((node, notice)) = async {
                match local.as_mut() {
                    Some(receiver) => receiver.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let record = NoticeRecord::from(&notice).to_value();
                if taken.get(&node) == Some(&record) {
                    continue;
                }
                taken.insert(node.clone(), record.clone());
                awaited.insert((node.clone(), record.clone()));
                let (engine, intake) = (engine.clone(), intake.clone());
                handlers.spawn(async move {
                    take_in(&engine, &intake, &node, notice, Some(&record)).await
                });
            }
            Some(done) = handlers.join_next(), if !handlers.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a notice handler failed");
                }
            }
        }
    }
    // The caller bounds this wait (`daemon.shutdown_timeout`) and drops the handlers after.
    if !handlers.is_empty() {
        tracing::info!(
            running = handlers.len(),
            "waiting for the notice handlers under way"
        );
        while handlers.join_next().await.is_some() {}
    }
}

/// Phase 1 for one notice; a settled record is cleared from its node.
async fn take_in(
    engine: &DaemonEngine,
    intake: &NoticeIntake,
    node: &str,
    notice: Notice,
    record: Option<&str>,
) {
    intake
        .notice_nodes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(notice.instance_id.clone(), node.to_string());
    let settled = handle_notice(engine, notice).await;
    let Some(record) = record.filter(|_| settled && !intake.dry_run) else {
        return;
    };
    match clear_notice(&intake.nodes, node, record, WritePolicy::default()).await {
        Ok(_) => intake
            .metrics
            .count_call("kubernetes", "clear notice", false),
        Err(e) => {
            intake
                .metrics
                .count_call("kubernetes", "clear notice", true);
            tracing::warn!(%node, error = %e, "could not clear the handled notice from the node; a new leader would take it in again");
        }
    }
}

/// Phase 1 for `notice`; whether the notice is settled: handled to the end, or refused for
/// good (not merged into an action under way, not given up on a transient error).
async fn handle_notice(engine: &DaemonEngine, notice: Notice) -> bool {
    let instance = notice.instance_id.clone();
    match engine.handle_notice(&notice).await {
        Ok(RebalanceOutcome::Coalesced) => false,
        Ok(RebalanceOutcome::Handled {
            node,
            replacement,
            drain,
            paid_back,
        }) => {
            let replaced_by = replacement.to_string();
            let drained = match &drain {
                Some(report) if report.is_complete() => {
                    format!("drained ({} pods evicted)", report.evicted())
                }
                Some(report) => format!("drain incomplete: {}", report.remaining().join(", ")),
                None => "not drained".into(),
            };
            tracing::info!(%instance, %node, paid_back, "notice handled: replaced by {replaced_by}; {drained}");
            true
        }
        // The engine already reported it (NoticeRejected or NoticeAbandoned), after retrying
        // transient errors.
        // Settled all the same when trying again cannot help (bad input, a policy refusal).
        Err(e) => {
            tracing::debug!(%instance, error = %e, "notice not acted on");
            !e.is_transient()
        }
    }
}

/// A running monitor and the switch that stops it between ticks.
struct Monitor {
    stop: Shutdown,
    task: JoinHandle<()>,
}

/// Leader election and, while leading, the notice loop and the monitor; until shutdown. With
/// no elector (dry-run) this replica acts as the leader.
pub async fn run_controller(
    engine: Arc<DaemonEngine>,
    intake: Arc<NoticeIntake>,
    status: Option<StatusPublisher>,
    elector: Option<LeaderElector>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    shutdown_timeout: Duration,
) {
    let period = elector
        .as_ref()
        .map_or(Duration::from_secs(1), |e| e.retry_period());
    let mut monitor: Option<Monitor> = None;
    loop {
        let leads = campaign(elector.as_ref(), &metrics).await;
        metrics.leader.set(i64::from(leads));
        if monitor.as_ref().is_some_and(|m| m.task.is_finished()) {
            tracing::error!("the monitor stopped unexpectedly; restarting it");
            monitor = None;
        }
        match (leads, monitor.is_some()) {
            (true, false) => {
                tracing::info!(
                    identity = elector.as_ref().map(|e| e.identity()),
                    "leading: taking notices in and starting the monitor"
                );
                let stop = Shutdown::new();
                let notices = notice_loop(engine.clone(), intake.clone(), stop.clone());
                let monitoring = monitor_loop(
                    engine.clone(),
                    metrics.clone(),
                    status.as_ref().map(|s| s.book.clone()),
                    stop.clone(),
                );
                let publishing = {
                    let (status, stop) = (status.clone(), stop.clone());
                    async move {
                        if let Some(status) = status {
                            status.run(stop).await;
                        }
                    }
                };
                let task = tokio::spawn(async move {
                    tokio::join!(notices, monitoring, publishing);
                });
                monitor = Some(Monitor { stop, task });
            }
            (false, true) => {
                tracing::warn!("leadership lost: stopping the notice handlers and the monitor now");
                if let Some(m) = monitor.take() {
                    m.task.abort();
                }
                metrics.ledger_entries.clear();
                metrics.oldest_open_entry.clear();
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.triggered() => break,
        }
    }
    if let Some(m) = monitor.take() {
        finish_monitor(m, elector.as_ref(), &metrics, period, shutdown_timeout).await;
    }
    metrics.leader.set(0);
    if let Some(elector) = &elector {
        match elector.release().await {
            Ok(()) => tracing::info!("leader lease released"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release the leader lease; it expires on its own")
            }
        }
    }
}

/// One election round; an API failure keeps leadership only while it has not lapsed.
async fn campaign(elector: Option<&LeaderElector>, metrics: &Metrics) -> bool {
    let Some(elector) = elector else {
        return true;
    };
    match elector.try_acquire_or_renew().await {
        Ok(leads) => {
            metrics.count_call("kubernetes", "renew leader lease", false);
            leads
        }
        Err(e) => {
            metrics.count_call("kubernetes", "renew leader lease", true);
            tracing::warn!(error = %e, "leader election round failed");
            elector.is_leader()
        }
    }
}

/// Lets the notice handlers and the tick under way finish (renewing the lease meanwhile, so no
/// other replica starts while this one still acts), up to `timeout`, then abandons them.
async fn finish_monitor(
    monitor: Monitor,
    elector: Option<&LeaderElector>,
    metrics: &Metrics,
    period: Duration,
    timeout: Duration,
) {
    monitor.stop.trigger();
    let Monitor { mut task, .. } = monitor;
    let deadline = Instant::now() + timeout;
    loop {
        tokio::select! {
            _ = &mut task => {
                tracing::info!("monitor stopped");
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!("the step under way (notice handling or a monitor tick) abandoned at shutdown; the ledger and the nodes' notice records let the next leader resume it");
                task.abort();
                return;
            }
            _ = tokio::time::sleep(period) => {
                if !campaign(elector, metrics).await {
                    tracing::warn!("leadership lost while finishing: stopping the monitor now");
                    task.abort();
                    return;
                }
            }
        }
    }
}

/// The leader's monitor: the engine's monitor loop ([`Engine::run_monitor`]: recover once,
/// then tick and clean up until stopped between steps), logged and counted here.
///
/// [`Engine::run_monitor`]: spotguard_core::engine::Engine::run_monitor
async fn monitor_loop(
    engine: Arc<DaemonEngine>,
    metrics: Arc<Metrics>,
    status: Option<StatusBook>,
    stop: Shutdown,
) {
    let hooks = MonitorLog {
        engine: &engine,
        metrics: &metrics,
        status: status.as_ref(),
    };
    engine.run_monitor(stop.triggered(), &hooks).await
}

/// Logs the monitor loop's steps and refreshes the ledger metrics and the status record's
/// open entries after each tick.
struct MonitorLog<'a> {
    engine: &'a DaemonEngine,
    metrics: &'a Metrics,
    status: Option<&'a StatusBook>,
}

#[async_trait]
impl MonitorHooks for MonitorLog<'_> {
    async fn recovered(&self, result: &Result<usize, EngineError>) {
        match result {
            Ok(open) => tracing::info!(open, "ledger recovered: {open} open entries"),
            Err(e) => {
                tracing::warn!(error = %e, "ledger recovery failed; the monitor retries every tick")
            }
        }
    }

    async fn ticked(&self, result: &Result<TickReport, EngineError>) {
        match result {
            Ok(report) => {
                if !report.released.is_empty()
                    || !report.draining.is_empty()
                    || !report.errors.is_empty()
                {
                    tracing::info!(
                        released = ?report.released,
                        draining = ?report.draining,
                        waiting = report.waiting.len(),
                        errors = ?report.errors,
                        "monitor tick"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "monitor tick failed"),
        }
        match self.engine.ledger().await {
            Ok(ledger) => {
                self.metrics.set_ledger(&ledger, SystemTime::now());
                if let Some(status) = self.status {
                    status.retain_open(&ledger);
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read the ledger for metrics"),
        }
    }

    async fn cleaned(&self, result: &Result<usize, EngineError>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "ledger cleanup failed");
        }
    }
}
