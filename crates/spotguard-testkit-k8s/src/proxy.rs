//! A fault-injection HTTP proxy in front of the control plane's API server.
//!
//! Clients speak plain HTTP/1.1 to the proxy on 127.0.0.1; it forwards every request
//! unchanged (method, path and query, headers with `Authorization`, body) to the API server
//! over HTTPS, trusting the control plane's CA, and streams the answer back as it arrives, so
//! watches (long-lived chunked answers) pass through. Rules set while it runs answer matching
//! requests with a Kubernetes `Status` error instead of forwarding them, or hold them for a
//! while first. Its log of answered requests also tells how many of a kind were in flight at
//! once ([`ApiFaultProxy::max_in_flight`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::{config_for, ControlPlane};

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;
type Upstream = Client<HttpsConnector<HttpConnector>, Incoming>;

/// Headers that belong to one connection and are not forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// An error answer: an HTTP status with a Kubernetes `Status` body
/// (`{"kind":"Status","apiVersion":"v1","status":"Failure","message":..,"reason":..,"code":..}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReply {
    /// HTTP status, also the `code` of the body.
    pub code: u16,
    /// The `reason` (`ServiceUnavailable`, `InternalError`, `TooManyRequests`, `Conflict`, ...).
    pub reason: String,
    /// The `message`.
    pub message: String,
    /// A `Retry-After` header, in seconds.
    pub retry_after: Option<u64>,
}

impl StatusReply {
    /// Any status, reason and message.
    pub fn new(code: u16, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// `503 ServiceUnavailable`.
    pub fn service_unavailable() -> Self {
        Self::new(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        )
    }

    /// `500 InternalError`.
    pub fn internal_error() -> Self {
        Self::new(
            500,
            "InternalError",
            "an error on the server has prevented the request from succeeding",
        )
    }

    /// `429 TooManyRequests`, as the eviction API answers when a PodDisruptionBudget forbids
    /// the eviction; with a `Retry-After` header when `retry_after` (seconds) is given.
    pub fn too_many_requests(retry_after: Option<u64>) -> Self {
        Self {
            retry_after,
            ..Self::new(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
            )
        }
    }

    /// `409 Conflict` with this message.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "Conflict", message)
    }

    /// The same with a `Retry-After` header of `seconds`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The `Status` body.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }

    /// `200 OK` with one watch event `{"type":"ERROR","object":<the Status>}`.
    fn watch_event(&self) -> Response<ProxyBody> {
        let event = json!({"type": "ERROR", "object": self.body()});
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(full(format!("{event}\n")))
            .expect("a valid response")
    }

    fn response(&self) -> Response<ProxyBody> {
        let mut builder = Response::builder()
            .status(self.code)
            .header("content-type", "application/json");
        if let Some(seconds) = self.retry_after {
            builder = builder.header("retry-after", seconds.to_string());
        }
        builder
            .body(full(self.body().to_string()))
            .expect("a valid response")
    }
}

/// What a rule does to the requests it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFault {
    /// Answer with this error instead of forwarding.
    Reply(StatusReply),
    /// Hold the request this long, then go on (other rules, or forwarding).
    Delay(Duration),
    /// Answer a watch with `200 OK` and one `ERROR` event carrying this status, then end the
    /// stream: what the API server does when a watch starts from a resourceVersion it no longer
    /// has (`410 Expired`), which a watcher must answer with a new list.
    WatchError(StatusReply),
}

/// A rule of [`ApiFaultProxy`]: requests whose method is `method` (any method when empty) and
/// whose path and query contain `path_contains` get `fault`, for the next `times` of them
/// (until cleared when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRule {
    /// The HTTP method (`"GET"`, `"POST"`, ...), case-insensitive; empty for any.
    pub method: String,
    /// A substring of the path and query (`"/eviction"`, `"/api/v1/nodes/"`, `"watch=true"`).
    pub path_contains: String,
    /// What happens to matching requests.
    pub fault: ApiFault,
    /// How many matching requests remain; `None` for all until cleared.
    pub times: Option<u32>,
}

impl ApiRule {
    /// Answers matching requests with `reply`, until cleared (see [`ApiRule::times`]).
    pub fn reply(method: &str, path_contains: &str, reply: StatusReply) -> Self {
        Self {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            fault: ApiFault::Reply(reply),
            times: None,
        }
    }

    /// Holds matching requests for `delay` before forwarding them, until cleared.
    pub fn delay(method: &str, path_contains: &str, delay: Duration) -> Self {
        Self {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            fault: ApiFault::Delay(delay),
            times: None,
        }
    }

    /// Answers matching watches with one `ERROR` event carrying `reply` (see
    /// [`ApiFault::WatchError`]), until cleared.
    pub fn watch_error(method: &str, path_contains: &str, reply: StatusReply) -> Self {
        Self {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            fault: ApiFault::WatchError(reply),
            times: None,
        }
    }

    /// Only for the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.times != Some(0)
            && (self.method.is_empty() || self.method.eq_ignore_ascii_case(method))
            && path.contains(&self.path_contains)
    }
}

/// One answered request.
#[derive(Debug, Clone)]
struct Answered {
    method: String,
    path: String,
    status: u16,
    injected: bool,
    /// The proxy's event count when the request arrived, and when it was answered: two
    /// requests were in flight together when their spans overlap.
    span: (u64, u64),
}

impl Answered {
    fn matches(&self, method: &str, path_contains: &str) -> bool {
        (method.is_empty() || self.method.eq_ignore_ascii_case(method))
            && self.path.contains(path_contains)
    }
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<ApiRule>,
    log: Vec<Answered>,
    received: u64,
    forwarded: u64,
    /// Counts arrivals and answers, in the order they happen.
    events: u64,
}

impl State {
    /// Uses the first matching delay rule (when `delays`) or reply rule.
    fn tick(&mut self) -> u64 {
        self.events += 1;
        self.events
    }

    fn take(&mut self, method: &str, path: &str, delays: bool) -> Option<ApiFault> {
        let rule = self
            .rules
            .iter_mut()
            .find(|r| matches!(r.fault, ApiFault::Delay(_)) == delays && r.matches(method, path))?;
        if let Some(n) = &mut rule.times {
            *n -= 1;
        }
        Some(rule.fault.clone())
    }
}

/// A fault-injection proxy in front of the control plane's API server, on a free port of
/// 127.0.0.1; stops (with every connection through it, watches included) when dropped.
///
/// ```no_run
/// use spotguard_testkit_k8s::{ApiFaultProxy, ApiRule, ControlPlane, StatusReply};
///
/// # async fn example() {
/// let proxy = ApiFaultProxy::start(ControlPlane::shared()).await;
/// proxy.add(ApiRule::reply("POST", "/eviction", StatusReply::too_many_requests(Some(1))).times(2));
/// let client = kube::Client::try_from(proxy.admin_config()).unwrap();
/// # let _ = client;
/// # }
/// ```
#[derive(Debug)]
pub struct ApiFaultProxy {
    addr: SocketAddr,
    admin_token: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl ApiFaultProxy {
    /// Starts a proxy in front of `cp`'s API server. Call it inside the tokio runtime that
    /// uses it (each `#[tokio::test]` has its own).
    pub async fn start(cp: &ControlPlane) -> ApiFaultProxy {
        let upstream = upstream_client(&cp.ca_der);
        let server: Uri = cp.server_url().parse().expect("a valid server URL");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("cannot start the API fault proxy: binding failed: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot start the API fault proxy: {e}"));
        let state = Arc::new(Mutex::new(State::default()));
        let handler_state = state.clone();
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection stops with the proxy.
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (state, upstream, server) =
                    (handler_state.clone(), upstream.clone(), server.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let answer =
                            handle(state.clone(), upstream.clone(), server.clone(), request);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    // A client going away mid-request is not an error of the proxy.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ApiFaultProxy {
            addr,
            admin_token: cp.admin_token().to_string(),
            state,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A [`kube::Config`] for the proxy (plain HTTP) with this bearer token. kube's defaults
    /// otherwise, its retry layer (which retries 429, 503 and 504) included: set
    /// `default_retry = false` to see every answer.
    pub fn config(&self, token: &str) -> kube::Config {
        config_for(&self.url(), &[], token)
    }

    /// [`ApiFaultProxy::config`] with the admin's token.
    pub fn admin_config(&self) -> kube::Config {
        self.config(&self.admin_token)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Adds a rule. Rules are tried in the order added; a request gets at most one delay and
    /// then at most one reply.
    pub fn add(&self, rule: ApiRule) {
        self.state().rules.push(rule);
    }

    /// Answers the next `times` requests of `method` whose path contains `path_contains`
    /// with `reply`, without forwarding them.
    pub fn inject(&self, method: &str, path_contains: &str, reply: StatusReply, times: u32) {
        self.add(ApiRule::reply(method, path_contains, reply).times(times));
    }

    /// Holds the next `times` matching requests for `delay` before forwarding them.
    pub fn delay(&self, method: &str, path_contains: &str, delay: Duration, times: u32) {
        self.add(ApiRule::delay(method, path_contains, delay).times(times));
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.state().rules.clear();
    }

    /// The rules still set (with their remaining counts).
    pub fn rules(&self) -> Vec<ApiRule> {
        self.state().rules.clone()
    }

    /// Every answered request as (method, path and query, status), in answer order (a
    /// forwarded request counts as answered when the API server's status line arrives).
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.state()
            .log
            .iter()
            .map(|a| (a.method.clone(), a.path.clone(), a.status))
            .collect()
    }

    /// How many requests of `method` (any when empty) whose path and query contain
    /// `path_contains` were answered by a rule.
    pub fn injected(&self, method: &str, path_contains: &str) -> usize {
        self.state()
            .log
            .iter()
            .filter(|a| a.injected && a.matches(method, path_contains))
            .count()
    }

    /// The most answered requests of `method` (any when empty) whose path and query contain
    /// `path_contains` that were in flight at once: received by the proxy and not yet
    /// answered (held by a delay rule included). Counted from the order of arrivals and
    /// answers, so it does not depend on how long anything took.
    pub fn max_in_flight(&self, method: &str, path_contains: &str) -> usize {
        // Arrivals (+1) and answers (-1) in the order they happened.
        let mut changes: Vec<(u64, i64)> = self
            .state()
            .log
            .iter()
            .filter(|a| a.matches(method, path_contains))
            .flat_map(|a| [(a.span.0, 1), (a.span.1, -1)])
            .collect();
        changes.sort_unstable();
        let mut now = 0i64;
        let mut most = 0i64;
        for (_, change) in changes {
            now += change;
            most = most.max(now);
        }
        usize::try_from(most).unwrap_or(0)
    }

    /// How many requests the proxy has received.
    pub fn received(&self) -> u64 {
        self.state().received
    }

    /// How many requests it has forwarded to the API server.
    pub fn forwarded(&self) -> u64 {
        self.state().forwarded
    }
}

impl Drop for ApiFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking test thread must not hide the log from the others.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn upstream_client(ca_der: &[Vec<u8>]) -> Upstream {
    let mut roots = rustls::RootCertStore::empty();
    for der in ca_der {
        roots
            .add(CertificateDer::from(der.clone()))
            .expect("the control plane's CA certificate");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

async fn handle(
    state: Arc<Mutex<State>>,
    upstream: Upstream,
    server: Uri,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let method = request.method().as_str().to_string();
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_string(),
        |p| p.as_str().to_string(),
    );
    let (arrived, delay) = {
        let mut state = lock(&state);
        state.received += 1;
        (state.tick(), state.take(&method, &path, true))
    };
    if let Some(ApiFault::Delay(delay)) = delay {
        tokio::time::sleep(delay).await;
    }
    let reply = lock(&state).take(&method, &path, false);
    let (response, injected) = match reply {
        Some(ApiFault::Reply(reply)) => (reply.response(), true),
        Some(ApiFault::WatchError(reply)) => (reply.watch_event(), true),
        _ => (
            forward(&state, &upstream, &server, &path, request).await,
            false,
        ),
    };
    let mut state = lock(&state);
    let answered = state.tick();
    state.log.push(Answered {
        method,
        path,
        status: response.status().as_u16(),
        injected,
        span: (arrived, answered),
    });
    drop(state);
    response
}

async fn forward(
    state: &Mutex<State>,
    upstream: &Upstream,
    server: &Uri,
    path: &str,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let (mut parts, body) = request.into_parts();
    let mut uri = server.clone().into_parts();
    uri.path_and_query = Some(path.parse().expect("the request's own path"));
    parts.uri = Uri::from_parts(uri).expect("a valid upstream URI");
    // The client sets the API server's own Host.
    parts.headers.remove(http::header::HOST);
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    lock(state).forwarded += 1;
    match upstream.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(name);
            }
            // Streamed as it arrives: watches pass through.
            Response::from_parts(parts, body.boxed_unsync())
        }
        Err(e) => StatusReply::new(
            502,
            "BadGateway",
            format!("the API fault proxy could not reach the API server: {e}"),
        )
        .response(),
    }
}
