//! [`NoticeWatcher`]: polls the instance metadata service (IMDSv2, with session tokens) for
//! rebalance recommendations and spot interruption notices, and emits each [`Notice`] once.
//!
//! * The instance id is read once, when the watcher connects.
//! * Each poll is two small GETs (rebalance, then instance-action); 404 means no notice.
//! * Deduplication: every notice has a [`notice_key`]; emitted keys are kept in a
//!   [`HandledNotices`] record, across polls and, with a state file
//!   ([`NoticeWatcherBuilder::state_file`]), across restarts. The caller can also seed keys it
//!   knows were handled ([`NoticeWatcherBuilder::handled`]). Delivery is *at most once*: a
//!   notice is recorded just before it is handed over (in [`NoticeWatcher::run`], only once the
//!   channel has room, so a notice is never recorded and then dropped).
//! * A malformed payload is an error event: logged (a warning the first time a payload is seen,
//!   then at debug level), counted in [`WatcherCounts::malformed`], never a notice and never a
//!   panic. IMDS failures are counted in [`WatcherCounts::errors`] and the next poll tries again.
//! * A 401 after the client's own token handling means the session token was revoked (IMDS
//!   restarted, instance stopped and started): the watcher replaces its IMDS client, which
//!   fetches a new token on the next poll.
//!
//! On EKS the watcher needs `hostNetwork: true`: IMDSv2 with a hop limit of 1 is unreachable from
//! the pod network.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::imds::client::error::ImdsError;
use aws_config::imds::Client as ImdsClient;
use spotguard_core::notice::Notice;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::error::AwsError;
use crate::notice::{
    excerpt, notice_key, parse_instance_action, parse_rebalance, HandledNotices,
    INSTANCE_ACTION_PATH, INSTANCE_ID_PATH, REBALANCE_PATH,
};

/// Attempts per IMDS read by default. One: the poll loop itself is the retry, every couple of
/// seconds, and a poll never waits for backoffs.
pub const DEFAULT_IMDS_ATTEMPTS: u32 = 1;

/// Counts of a watcher, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatcherCounts {
    /// Polls done.
    pub polls: u64,
    /// Notices emitted.
    pub notices: u64,
    /// Malformed payloads read (one per path per poll).
    pub malformed: u64,
    /// IMDS reads that failed (connection, timeout, token, unexpected status).
    pub errors: u64,
    /// Times the IMDS client was replaced after a 401.
    pub token_resets: u64,
    /// Failed writes of the state file (the notice was emitted all the same).
    pub state_errors: u64,
}

/// A shared handle on a watcher's counts; stays valid while [`NoticeWatcher::run`] owns the
/// watcher.
#[derive(Debug, Clone, Default)]
pub struct WatcherStats {
    inner: Arc<[AtomicU64; 6]>,
}

#[derive(Clone, Copy)]
enum Count {
    Polls,
    Notices,
    Malformed,
    Errors,
    TokenResets,
    StateErrors,
}

impl WatcherStats {
    fn bump(&self, count: Count) {
        self.inner[count as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> WatcherCounts {
        let get = |c: Count| self.inner[c as usize].load(Ordering::Relaxed);
        WatcherCounts {
            polls: get(Count::Polls),
            notices: get(Count::Notices),
            malformed: get(Count::Malformed),
            errors: get(Count::Errors),
            token_resets: get(Count::TokenResets),
            state_errors: get(Count::StateErrors),
        }
    }
}

/// What one poll found: new notices and error events.
#[derive(Debug, Default)]
pub struct PollReport {
    /// Notices not emitted before.
    pub notices: Vec<Notice>,
    /// Error events of this poll (already logged and counted).
    pub errors: Vec<AwsError>,
}

/// Builds a [`NoticeWatcher`].
#[derive(Debug, Clone)]
pub struct NoticeWatcherBuilder {
    endpoint: Option<String>,
    state_file: Option<std::path::PathBuf>,
    handled: Vec<String>,
    attempts: u32,
    connect_timeout: Duration,
    read_timeout: Duration,
    token_ttl: Option<Duration>,
}

impl Default for NoticeWatcherBuilder {
    fn default() -> Self {
        Self {
            endpoint: None,
            state_file: None,
            handled: Vec::new(),
            attempts: DEFAULT_IMDS_ATTEMPTS,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            token_ttl: None,
        }
    }
}

impl NoticeWatcherBuilder {
    /// IMDS endpoint such as `http://127.0.0.1:8080` (default: what the SDK resolves from
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`, the profile, or `http://169.254.169.254`).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Keeps the keys of emitted notices in this file, so a restarted watcher does not emit
    /// them again. A missing file is created on the first notice.
    pub fn state_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.state_file = Some(path.into());
        self
    }

    /// Keys ([`notice_key`]) of notices already handled elsewhere: they are never emitted.
    pub fn handled<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.handled.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Attempts per IMDS read (default [`DEFAULT_IMDS_ATTEMPTS`]).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Connect timeout of IMDS reads (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Read timeout of IMDS reads (default 1 s): a slower answer is an error event.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Session token lifetime asked for (default the SDK's, 6 hours).
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = Some(ttl);
        self
    }

    fn client(&self) -> Result<ImdsClient, AwsError> {
        // One attempt may take a connect and a read; with retries, the SDK's own operation
        // timeout (30 s) also leaves room for its backoffs.
        let attempt_timeout = self.connect_timeout + self.read_timeout;
        let mut builder = ImdsClient::builder()
            .max_attempts(self.attempts)
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .operation_attempt_timeout(attempt_timeout);
        if self.attempts == 1 {
            builder = builder.operation_timeout(attempt_timeout);
        }
        if let Some(ttl) = self.token_ttl {
            builder = builder.token_ttl(ttl);
        }
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .endpoint(endpoint)
                .map_err(|e| AwsError::ImdsEndpoint {
                    endpoint: endpoint.clone(),
                    message: e.to_string(),
                })?;
        }
        Ok(builder.build())
    }

    /// Loads the state file, reads the instance id once, and returns the watcher.
    pub async fn connect(self) -> Result<NoticeWatcher, AwsError> {
        let client = self.client()?;
        let mut handled = match &self.state_file {
            Some(path) => HandledNotices::load(path)?,
            None => HandledNotices::in_memory(),
        };
        handled.seed(self.handled.iter().cloned());
        let endpoint = self
            .endpoint
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let instance_id = match client.get(INSTANCE_ID_PATH).await {
            Ok(id) => id.as_ref().trim().to_string(),
            Err(e) => return Err(imds_error(&endpoint, INSTANCE_ID_PATH, &e)),
        };
        if instance_id.is_empty() {
            return Err(AwsError::Imds {
                endpoint,
                path: INSTANCE_ID_PATH.to_string(),
                message: "empty instance id".to_string(),
            });
        }
        tracing::info!(instance = %instance_id, endpoint = %endpoint, "watching IMDS for notices");
        Ok(NoticeWatcher {
            client,
            builder: self,
            endpoint,
            instance_id,
            handled,
            stats: WatcherStats::default(),
            last_malformed: HashMap::new(),
        })
    }
}

/// Watches IMDS for rebalance recommendations and interruption notices. See the
/// [module docs](self).
#[derive(Debug)]
pub struct NoticeWatcher {
    client: ImdsClient,
    builder: NoticeWatcherBuilder,
    endpoint: String,
    instance_id: String,
    handled: HandledNotices,
    stats: WatcherStats,
    last_malformed: HashMap<&'static str, String>,
}

impl NoticeWatcher {
    /// A builder with the defaults.
    pub fn builder() -> NoticeWatcherBuilder {
        NoticeWatcherBuilder::default()
    }

    /// The instance this watcher runs on.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// A handle on the counts.
    pub fn stats(&self) -> WatcherStats {
        self.stats.clone()
    }

    /// The keys of notices emitted or seeded so far.
    pub fn handled(&self) -> &HandledNotices {
        &self.handled
    }

    /// Polls once; the notices returned are recorded as emitted and never returned again.
    pub async fn poll_once(&mut self) -> PollReport {
        let report = self.poll().await;
        for notice in &report.notices {
            self.record(notice);
        }
        report
    }

    /// Polls every `interval` and sends each new notice on `notices`, until `shutdown`
    /// completes or the receiver is dropped. Errors are logged and counted (see
    /// [`NoticeWatcher::stats`]).
    pub async fn run<F>(mut self, interval: Duration, notices: mpsc::Sender<Notice>, shutdown: F)
    where
        F: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let report = tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => tokio::select! {
                    _ = &mut shutdown => break,
                    report = self.poll() => report,
                },
            };
            for notice in report.notices {
                let permit = tokio::select! {
                    _ = &mut shutdown => return,
                    permit = notices.reserve() => permit,
                };
                let Ok(permit) = permit else {
                    tracing::info!(instance = %self.instance_id, "notice receiver gone, watcher stops");
                    return;
                };
                self.record(&notice);
                permit.send(notice);
            }
        }
        tracing::info!(instance = %self.instance_id, "notice watcher stopped");
    }

    /// Records a notice as emitted, in memory and in the state file.
    fn record(&mut self, notice: &Notice) {
        let key = notice_key(notice);
        self.stats.bump(Count::Notices);
        tracing::info!(instance = %self.instance_id, notice = %key, "new notice");
        if let Err(e) = self.handled.insert(key) {
            self.stats.bump(Count::StateErrors);
            tracing::error!(error = %e, "could not record the notice; it may be emitted again after a restart");
        }
    }

    /// Reads both paths; returns the notices not handled yet, without recording them.
    async fn poll(&mut self) -> PollReport {
        self.stats.bump(Count::Polls);
        let mut report = PollReport::default();
        for path in [REBALANCE_PATH, INSTANCE_ACTION_PATH] {
            let payload = match self.client.get(path).await {
                Ok(payload) => String::from(payload),
                Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => {
                    self.last_malformed.remove(path);
                    continue;
                }
                Err(e) => {
                    report.errors.push(self.failed(path, &e));
                    continue;
                }
            };
            let parsed = if path == REBALANCE_PATH {
                parse_rebalance(&self.instance_id, &payload)
            } else {
                parse_instance_action(&self.instance_id, &payload, SystemTime::now())
            };
            match parsed {
                Ok(notice) => {
                    self.last_malformed.remove(path);
                    if !self.handled.contains(&notice_key(&notice)) {
                        report.notices.push(notice);
                    }
                }
                Err(message) => report.errors.push(self.malformed(path, &payload, message)),
            }
        }
        report
    }

    fn malformed(&mut self, path: &'static str, payload: &str, message: String) -> AwsError {
        self.stats.bump(Count::Malformed);
        let error = AwsError::MalformedNotice {
            instance: self.instance_id.clone(),
            path: path.to_string(),
            payload: excerpt(payload),
            message,
        };
        if self.last_malformed.get(path).map(String::as_str) == Some(payload) {
            tracing::debug!(error = %error, "malformed IMDS payload, again");
        } else {
            tracing::warn!(error = %error, "malformed IMDS payload ignored");
            self.last_malformed.insert(path, payload.to_string());
        }
        error
    }

    fn failed(&mut self, path: &str, e: &ImdsError) -> AwsError {
        self.stats.bump(Count::Errors);
        let error = imds_error(&self.endpoint, path, e);
        tracing::warn!(error = %error, "IMDS read failed");
        if matches!(e, ImdsError::ErrorResponse(r) if r.response().status().as_u16() == 401) {
            // The cached session token was refused: start over with a new client and token.
            match self.builder.client() {
                Ok(client) => {
                    self.client = client;
                    self.stats.bump(Count::TokenResets);
                }
                Err(e) => tracing::error!(error = %e, "could not replace the IMDS client"),
            }
        }
        error
    }
}

fn imds_error(endpoint: &str, path: &str, e: &ImdsError) -> AwsError {
    let message = match e {
        ImdsError::ErrorResponse(r) => format!("HTTP {}", r.response().status().as_u16()),
        other => aws_sdk_autoscaling::error::DisplayErrorContext(other).to_string(),
    };
    AwsError::Imds {
        endpoint: endpoint.to_string(),
        path: path.to_string(),
        message,
    }
}
