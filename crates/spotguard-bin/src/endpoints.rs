//! The HTTP endpoints: `/metrics` (OpenMetrics text), `/healthz` (the process serves) and
//! `/readyz` (the groups were checked, the watch caches are synced and, for an agent, IMDS
//! answered; not ready any more once shutting down).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// What readiness waits for.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Every configured Auto Scaling group exists (controllers).
    pub groups_checked: AtomicBool,
    /// The node, pod and PDB watch caches listed the cluster once (controllers).
    pub caches_synced: AtomicBool,
    /// IMDS answered with this node's instance id (agents).
    pub imds_connected: AtomicBool,
    /// This agent's own Node was read (agents).
    pub own_node_read: AtomicBool,
    /// Whether the agent's conditions apply.
    pub needs_imds: bool,
    /// Whether the controller's conditions apply.
    pub needs_cloud: bool,
}

impl Readiness {
    /// Readiness for a process that runs an agent (`needs_imds`), a controller
    /// (`needs_cloud`), or both.
    pub fn new(needs_imds: bool, needs_cloud: bool) -> Self {
        Self {
            needs_imds,
            needs_cloud,
            ..Self::default()
        }
    }

    /// What is still missing, empty when ready.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        let unset = |flag: &AtomicBool| !flag.load(Ordering::Relaxed);
        if self.needs_cloud && unset(&self.groups_checked) {
            missing.push("auto scaling groups not checked yet");
        }
        if self.needs_cloud && unset(&self.caches_synced) {
            missing.push("kubernetes caches not synced yet");
        }
        if self.needs_imds && unset(&self.imds_connected) {
            missing.push("IMDS not reached yet");
        }
        if self.needs_imds && unset(&self.own_node_read) {
            missing.push("own node not read yet");
        }
        missing
    }

    /// Marks a condition as met.
    pub fn set(flag: &AtomicBool) {
        flag.store(true, Ordering::Relaxed);
    }
}

/// Shared state of the endpoints.
pub struct Endpoints {
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// Readiness conditions.
    pub readiness: Arc<Readiness>,
    /// Set once shutting down.
    pub shutdown: Shutdown,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

impl Endpoints {
    fn answer(&self, method: &Method, path: &str) -> Reply {
        if method != Method::GET && method != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
        }
        match path {
            "/metrics" => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            "/healthz" | "/livez" => reply(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" => {
                let mut missing = self.readiness.missing();
                if self.shutdown.is_triggered() {
                    missing.push("shutting down");
                }
                if missing.is_empty() {
                    reply(StatusCode::OK, "text/plain", "ready\n")
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        format!("not ready: {}\n", missing.join("; ")),
                    )
                }
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /metrics, /healthz or /readyz\n",
            ),
        }
    }

    /// Serves connections from `listener` for the life of the process (readiness turns 503
    /// once shutting down, while metrics stay scrapable to the end).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let endpoints = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let answer = endpoints.answer(request.method(), request.uri().path());
                    async move { Ok::<_, Infallible>(answer) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_alone_needs_neither_groups_nor_caches() {
        let agent = Readiness::new(true, false);
        Readiness::set(&agent.imds_connected);
        Readiness::set(&agent.own_node_read);
        assert!(agent.missing().is_empty());
        let controller = Readiness::new(false, true);
        assert_eq!(
            controller.missing(),
            [
                "auto scaling groups not checked yet",
                "kubernetes caches not synced yet"
            ]
        );
    }

    #[test]
    fn readiness_lists_what_is_missing() {
        let endpoints = Endpoints {
            metrics: Metrics::new("agent", false),
            readiness: Arc::new(Readiness::new(true, true)),
            shutdown: Shutdown::new(),
        };
        let r = endpoints.answer(&Method::GET, "/readyz");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let ready = &endpoints.readiness;
        Readiness::set(&ready.groups_checked);
        Readiness::set(&ready.caches_synced);
        assert_eq!(
            ready.missing(),
            ["IMDS not reached yet", "own node not read yet"]
        );
        Readiness::set(&ready.imds_connected);
        Readiness::set(&ready.own_node_read);
        assert_eq!(
            endpoints.answer(&Method::GET, "/readyz").status(),
            StatusCode::OK
        );
        endpoints.shutdown.trigger();
        assert_eq!(
            endpoints.answer(&Method::GET, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            endpoints.answer(&Method::GET, "/metrics").status(),
            StatusCode::OK
        );
        assert_eq!(
            endpoints.answer(&Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
