//! A local instance metadata service with IMDSv2 session tokens.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Method, Request};

use super::http::{reply, Listener, Reply};
use spotguard_aws::notice::{INSTANCE_ACTION_PATH, INSTANCE_ID_PATH, REBALANCE_PATH};

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

#[derive(Debug, Default)]
struct State {
    instance_id: String,
    rebalance: Option<String>,
    instance_action: Option<String>,
    delay: Duration,
    ttl_cap: Option<u64>,
    tokens: HashMap<String, Instant>,
    issued: u64,
    unauthorized: u32,
    gets: BTreeMap<String, u32>,
    /// When a notice was first served, by path.
    first_served: BTreeMap<String, Instant>,
}

/// A local IMDS on 127.0.0.1 (stops when dropped):
///
/// * `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1 to 21600) returns a
///   token, valid for that long or for the cap set with [`ImdsServer::set_token_ttl_cap`].
/// * `GET`s need a valid `X-aws-ec2-metadata-token`: 401 without one, or once it expired or was
///   revoked.
/// * Serves the instance id, the rebalance recommendation and the instance action; 404 when
///   there is no notice.
#[derive(Debug)]
pub struct ImdsServer {
    state: Arc<Mutex<State>>,
    listener: Listener,
}

impl ImdsServer {
    /// Starts the server for an instance.
    pub async fn start(instance_id: &str) -> ImdsServer {
        let state = Arc::new(Mutex::new(State {
            instance_id: instance_id.to_string(),
            ..State::default()
        }));
        let handler_state = state.clone();
        let listener = Listener::serve("IMDS server", move |request| {
            handle(handler_state.clone(), request)
        })
        .await;
        ImdsServer { state, listener }
    }

    /// `http://127.0.0.1:<port>`: the endpoint to give the IMDS client.
    pub fn url(&self) -> String {
        self.listener.url()
    }

    /// The instance it serves.
    pub fn instance_id(&self) -> String {
        self.state.lock().unwrap().instance_id.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves a rebalance recommendation `{"noticeTime": "<notice_time>"}`.
    pub fn set_rebalance(&self, notice_time: &str) {
        self.set_rebalance_payload(Some(format!(r#"{{"noticeTime": "{notice_time}"}}"#)));
    }

    /// Serves an interruption notice `{"action": "<action>", "time": "<time>"}`.
    pub fn set_interruption(&self, action: &str, time: &str) {
        self.set_instance_action_payload(Some(format!(
            r#"{{"action": "{action}", "time": "{time}"}}"#
        )));
    }

    /// Serves any body (malformed ones too) at the rebalance path; `None` answers 404.
    pub fn set_rebalance_payload(&self, payload: Option<String>) {
        let mut state = self.state();
        state.rebalance = payload;
        state.first_served.remove(REBALANCE_PATH);
    }

    /// Serves any body (malformed ones too) at the instance-action path; `None` answers 404.
    pub fn set_instance_action_payload(&self, payload: Option<String>) {
        self.state().instance_action = payload;
    }

    /// No notice any more: both paths answer 404.
    pub fn clear_notices(&self) {
        let mut state = self.state();
        state.rebalance = None;
        state.instance_action = None;
    }

    /// Waits this long before every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// Grants tokens for at most this many seconds (at least 1), whatever the client asks for;
    /// `None` grants what it asks for.
    pub fn set_token_ttl_cap(&self, seconds: Option<u64>) {
        self.state().ttl_cap = seconds.map(|s| s.max(1));
    }

    /// Invalidates every token handed out so far, as a restarted IMDS would.
    pub fn revoke_tokens(&self) {
        self.state().tokens.clear();
    }

    /// Tokens handed out.
    pub fn tokens_issued(&self) -> u64 {
        self.state().issued
    }

    /// GETs refused with 401.
    pub fn unauthorized(&self) -> u32 {
        self.state().unauthorized
    }

    /// When the rebalance recommendation set last was first answered to a poll (the moment
    /// the watcher saw it), if it was.
    pub fn rebalance_first_served(&self) -> Option<Instant> {
        self.state().first_served.get(REBALANCE_PATH).copied()
    }

    /// Authorized GETs of a path.
    pub fn gets(&self, path: &str) -> u32 {
        self.state().gets.get(path).copied().unwrap_or(0)
    }
}

async fn handle(state: Arc<Mutex<State>>, request: Request<Incoming>) -> Reply {
    let delay = lock(&state).delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let path = request.uri().path().to_string();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut s = lock(&state);
    match (request.method(), path.as_str()) {
        (&Method::PUT, TOKEN_PATH) => {
            let Some(ttl) = header(TTL_HEADER)
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|t| (1..=21_600).contains(t))
            else {
                return reply(400, "text/plain", "missing or invalid token TTL");
            };
            let ttl = s.ttl_cap.map_or(ttl, |cap| ttl.min(cap));
            s.issued += 1;
            let token = format!("spotguard-imds-token-{}", s.issued);
            s.tokens
                .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
            let mut answer = reply(200, "text/plain", token);
            answer.headers_mut().insert(TTL_HEADER, ttl.into());
            answer
        }
        (&Method::GET, _) => {
            let valid = header(TOKEN_HEADER)
                .and_then(|t| s.tokens.get(&t).copied())
                .is_some_and(|expiry| Instant::now() < expiry);
            if !valid {
                s.unauthorized += 1;
                return reply(401, "text/plain", "Unauthorized");
            }
            *s.gets.entry(path.clone()).or_default() += 1;
            let body = match path.as_str() {
                INSTANCE_ID_PATH => Some(s.instance_id.clone()),
                REBALANCE_PATH => s.rebalance.clone(),
                INSTANCE_ACTION_PATH => s.instance_action.clone(),
                _ => None,
            };
            if body.is_some() && path != INSTANCE_ID_PATH {
                s.first_served
                    .entry(path.clone())
                    .or_insert_with(Instant::now);
            }
            match body {
                Some(body) => reply(200, "text/plain", body),
                None => reply(404, "text/html", "Not Found"),
            }
        }
        _ => reply(405, "text/plain", "Method Not Allowed"),
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}
