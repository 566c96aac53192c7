//! The two roles of the daemon, as loops that drive the engine:
//!
//! * the **agent** ([`run_agent`]): one per spot node; the notice watcher polls IMDS and each
//!   new notice for this node's instance runs phase 1 ([`Engine::handle_notice`](spotguard_core::engine::Engine::handle_notice)) in its
//!   own task. Concurrent agents raise a group one at a time through the per-group Lease
//!   scale lock (invariant 1).
//! * the **controller** ([`run_controller`]): campaigns on the leader Lease; only the leader
//!   runs the monitor ([`Engine::recover`](spotguard_core::engine::Engine::recover) once after winning, then
//!   [`Engine::monitor_tick`](spotguard_core::engine::Engine::monitor_tick) every `monitor_interval` and [`Engine::cleanup`](spotguard_core::engine::Engine::cleanup) every
//!   `cleanup_interval`). A replica that stops leading stops its monitor at once
//!   (invariant 2).
//!
//! Both stop taking new work on shutdown and give the step under way
//! `daemon.shutdown_timeout` to finish.

use std::sync::Arc;
use std::time::Duration;

use spotguard_aws::NoticeWatcher;
use spotguard_core::config::Timings;
use spotguard_core::engine::{RebalanceOutcome, Replacement};
use spotguard_core::notice::Notice;
use spotguard_k8s::LeaderElector;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use crate::daemon::DaemonEngine;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Phase 1 for every new notice of this node, until shutdown.
pub async fn run_agent(
    engine: Arc<DaemonEngine>,
    watcher: NoticeWatcher,
    shutdown: Shutdown,
    shutdown_timeout: Duration,
) {
    let poll = engine.config().timings.imds_poll;
    let (sender, mut notices) = mpsc::channel::<Notice>(8);
    let stop = shutdown.clone();
    let watching = tokio::spawn(watcher.run(poll, sender, async move { stop.triggered().await }));
    let mut handlers = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.triggered() => break,
            notice = notices.recv() => match notice {
                Some(notice) => {
                    let engine = engine.clone();
                    handlers.spawn(async move { handle_notice(&engine, notice).await });
                }
                None => break,
            },
            Some(done) = handlers.join_next(), if !handlers.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a notice handler failed");
                }
            }
        }
    }
    if !handlers.is_empty() {
        tracing::info!(
            running = handlers.len(),
            "waiting up to {} for the notice handlers under way",
            humantime::format_duration(shutdown_timeout)
        );
        let finished = tokio::time::timeout(shutdown_timeout, async {
            while handlers.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                abandoned = handlers.len(),
                "notice handling abandoned at shutdown; the ledger lets the controller finish it"
            );
            handlers.abort_all();
        }
    }
    let _ = watching.await;
}

async fn handle_notice(engine: &DaemonEngine, notice: Notice) {
    let instance = notice.instance_id.clone();
    match engine.handle_notice(&notice).await {
        Ok(RebalanceOutcome::Coalesced) => {}
        Ok(RebalanceOutcome::Handled {
            node,
            replacement,
            drain,
            paid_back,
        }) => {
            let replaced_by = match &replacement {
                Replacement::Spot { instance } => format!("spot instance {instance}"),
                Replacement::OnDemand { instance, entry } => {
                    format!("on-demand instance {instance} ({entry})")
                }
                Replacement::Launching { group } => {
                    format!("an instance still launching in {group}")
                }
                Replacement::NotAttempted => "nothing (drain-only)".into(),
                Replacement::Skipped { reason } => format!("nothing asked for: {reason}"),
                Replacement::None { reason } => format!("nothing: {reason}"),
            };
            let drained = match &drain {
                Some(report) if report.is_complete() => {
                    format!("drained ({} pods evicted)", report.evicted())
                }
                Some(report) => format!("drain incomplete: {}", report.remaining().join(", ")),
                None => "not drained".into(),
            };
            tracing::info!(%instance, %node, paid_back, "notice handled: replaced by {replaced_by}; {drained}");
        }
        // The engine already reported it (NoticeRejected or NoticeAbandoned), after retrying
        // transient errors.
        Err(e) => tracing::debug!(%instance, error = %e, "notice not acted on"),
    }
}

/// A running monitor and the switch that stops it between ticks.
struct Monitor {
    stop: Shutdown,
    task: JoinHandle<()>,
}

/// Leader election and, while leading, the monitor; until shutdown. With no elector (dry-run)
/// this replica acts as the leader.
pub async fn run_controller(
    engine: Arc<DaemonEngine>,
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
                    "leading: starting the monitor"
                );
                let stop = Shutdown::new();
                let task =
                    tokio::spawn(monitor_loop(engine.clone(), metrics.clone(), stop.clone()));
                monitor = Some(Monitor { stop, task });
            }
            (false, true) => {
                tracing::warn!("leadership lost: stopping the monitor now");
                if let Some(m) = monitor.take() {
                    m.task.abort();
                }
                metrics.ledger_entries.clear();
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

/// Lets the tick under way finish (renewing the lease meanwhile, so no other replica starts
/// while this one still acts), up to `timeout`, then abandons it.
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
                tracing::warn!("monitor step abandoned at shutdown; the next leader resumes it from the ledger");
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

/// The leader's monitor: recover once, then tick and clean up until stopped between ticks.
async fn monitor_loop(engine: Arc<DaemonEngine>, metrics: Arc<Metrics>, stop: Shutdown) {
    match engine.recover().await {
        Ok(open) => tracing::info!(open, "ledger recovered: {open} open entries"),
        Err(e) => {
            tracing::warn!(error = %e, "ledger recovery failed; the monitor retries every tick")
        }
    }
    let Timings {
        monitor_interval,
        cleanup_interval,
        ..
    } = engine.config().timings;
    let mut ticks = tokio::time::interval(monitor_interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut cleanups =
        tokio::time::interval_at(Instant::now() + cleanup_interval, cleanup_interval);
    cleanups.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.triggered() => break,
            _ = ticks.tick() => tick(&engine, &metrics).await,
            _ = cleanups.tick() => {
                if let Err(e) = engine.cleanup().await {
                    tracing::warn!(error = %e, "ledger cleanup failed");
                }
            }
        }
    }
}

async fn tick(engine: &DaemonEngine, metrics: &Metrics) {
    match engine.monitor_tick().await {
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
    match engine.ledger().await {
        Ok(ledger) => metrics.set_ledger(&ledger),
        Err(e) => tracing::debug!(error = %e, "could not read the ledger for metrics"),
    }
}
