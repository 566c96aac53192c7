//! The HTTP side of the fake: routing, discovery, tables for kubectl, lists and watches.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::selector::{FieldQuery, LabelQuery};
use super::store::{
    find_resource, ApiError, Change, Followup, PodStep, ResourceId, State, RESOURCES,
};

/// Response body: whole or streamed.
pub type Body = BoxBody<Bytes, Infallible>;

/// State shared by connections.
pub struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) changes: broadcast::Sender<Arc<Change>>,
    pub(crate) addr: SocketAddr,
    /// Evictions being answered now, and the most ever at once.
    pub(crate) evictions_in_flight: Mutex<(usize, usize)>,
}

impl Shared {
    /// Runs `f` on the state; its changes go to watchers (in order, under the lock) and its
    /// follow-ups are scheduled.
    pub fn apply<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut State, &mut Vec<Change>, &mut Vec<Followup>) -> T,
    ) -> T {
        let mut changes = Vec::new();
        let mut followups = Vec::new();
        let out = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let out = f(&mut state, &mut changes, &mut followups);
            for change in changes {
                let _ = self.changes.send(Arc::new(change));
            }
            out
        };
        for followup in followups {
            self.schedule(followup);
        }
        out
    }

    fn schedule(self: &Arc<Self>, followup: Followup) {
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(followup.after).await;
            let Followup {
                step,
                namespace,
                name,
                uid,
                ..
            } = followup;
            shared.apply(|st, ch, _| match step {
                PodStep::Remove => st.finish_termination(&namespace, &name, &uid, ch),
                PodStep::MakeReady => st.make_ready(&namespace, &name, &uid, ch),
            });
        });
    }
}

fn full(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .expect("valid response")
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

fn verbs(resource: &super::store::Resource) -> Value {
    let _ = resource;
    json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ])
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs(r),
            "shortNames": r.short,
        }));
        if r.plural == "pods" {
            resources.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
            resources.push(json!({"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get", "patch", "update"]}));
        }
        if r.plural == "nodes" || r.plural == "poddisruptionbudgets" {
            resources.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

fn group_list() -> Value {
    let mut groups: Vec<&str> = RESOURCES
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    groups.dedup();
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|g| {
            let version = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [version.clone()], "preferredVersion": version})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn age(object: &Value) -> String {
    let created = object["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok());
    let Some(created) = created else {
        return "<unknown>".into();
    };
    let secs = Timestamp::now()
        .as_second()
        .saturating_sub(created.as_second())
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

fn condition(object: &Value, kind: &str) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == kind && c["status"] == "True")
    })
}

fn columns(plural: &str) -> Vec<Value> {
    let column = |name: &str, priority: u8| json!({"name": name, "type": "string", "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority});
    match plural {
        "nodes" => vec![
            column("Name", 0),
            column("Status", 0),
            column("Roles", 0),
            column("Age", 0),
            column("Version", 0),
        ],
        "pods" => vec![
            column("Name", 0),
            column("Ready", 0),
            column("Status", 0),
            column("Restarts", 0),
            column("Age", 0),
            column("Node", 1),
        ],
        _ => vec![column("Name", 0), column("Age", 0)],
    }
}

fn cells(plural: &str, o: &Value) -> Vec<Value> {
    match plural {
        "nodes" => {
            let mut status = if condition(o, "Ready") {
                "Ready".to_string()
            } else {
                "NotReady".to_string()
            };
            if o["spec"]["unschedulable"] == json!(true) {
                status.push_str(",SchedulingDisabled");
            }
            vec![
                o["metadata"]["name"].clone(),
                json!(status),
                json!("<none>"),
                json!(age(o)),
                json!("v1.32.0"),
            ]
        }
        "pods" => {
            let containers = o["spec"]["containers"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0);
            let ready = if condition(o, "Ready") { containers } else { 0 };
            let status = if o["metadata"]["deletionTimestamp"].is_null() {
                o["status"]["phase"]
                    .as_str()
                    .unwrap_or("Unknown")
                    .to_string()
            } else {
                "Terminating".to_string()
            };
            vec![
                o["metadata"]["name"].clone(),
                json!(format!("{ready}/{containers}")),
                json!(status),
                json!("0"),
                json!(age(o)),
                json!(o["spec"]["nodeName"].as_str().unwrap_or("<none>")),
            ]
        }
        _ => vec![o["metadata"]["name"].clone(), json!(age(o))],
    }
}

/// A `meta.k8s.io/v1` Table, which `kubectl get` asks for.
fn table(resource: ResourceId, items: &[Value], rv: u64) -> Value {
    let plural = RESOURCES[resource].plural;
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({
                "cells": cells(plural, o),
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"].clone()},
            })
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()}, "columnDefinitions": columns(plural), "rows": rows})
}

/// The `labelSelector` and `fieldSelector` of a list or watch.
fn selectors(query: &HashMap<String, String>) -> Result<(LabelQuery, FieldQuery), ApiError> {
    let get = |key: &str| query.get(key).map(String::as_str).unwrap_or_default();
    let bad = |e: String| ApiError::new(400, "BadRequest", e);
    Ok((
        LabelQuery::parse(get("labelSelector")).map_err(bad)?,
        FieldQuery::parse(get("fieldSelector")).map_err(bad)?,
    ))
}

/// `<resourceVersion>:<namespace>:<name>`, as the fake's list pages hand it out.
fn parse_continue(token: &str) -> Option<(u64, String, String)> {
    let mut parts = token.splitn(3, ':');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, parts.next()?.to_string(), parts.next()?.to_string()))
}

/// A parsed resource path.
struct Target {
    resource: ResourceId,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(path: &str) -> Option<Target> {
    let (group, version, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("", "v1", rest)
    } else {
        let rest = path.strip_prefix("/apis/")?;
        let mut parts = rest.splitn(3, '/');
        let (g, v, rest) = (parts.next()?, parts.next()?, parts.next()?);
        (g, v, rest)
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, rest) = if segments.first() == Some(&"namespaces") && segments.len() >= 3 {
        (Some(segments[1].to_string()), &segments[2..])
    } else {
        (None, &segments[..])
    };
    let resource = find_resource(group, rest.first()?)?;
    if RESOURCES[resource].version != version {
        return None;
    }
    Some(Target {
        resource,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() && s.is_char_boundary(i + 3) => {
                match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes an `application/x-www-form-urlencoded` query string.
fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Serves one request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let accept = header("accept");
    let content_type = header("content-type");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = uri.path().to_string();
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let query = parse_query(uri.query().unwrap_or_default());

    let injected = {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let hit = state.injected.iter_mut().find(|(fragment, _, remaining)| {
            *remaining > 0 && path_and_query.contains(fragment.as_str())
        });
        hit.map(|entry| {
            entry.2 -= 1;
            entry.1
        })
    };
    let response = match injected {
        Some(code) => error_response(&ApiError::new(code, "InternalError", "injected failure")),
        None => {
            route(
                &shared,
                &method,
                &path,
                &query,
                &accept,
                &content_type,
                &body,
            )
            .await
        }
    };
    shared
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .log
        .push((
            method.to_string(),
            path_and_query,
            response.status().as_u16(),
        ));
    Ok(response)
}

async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    accept: &str,
    content_type: &str,
    body: &Bytes,
) -> Response<Body> {
    let (major, minor) = shared
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .config
        .version;
    match path.trim_end_matches('/') {
        "/version" => {
            return json_response(
                200,
                &json!({
                    "major": major.to_string(), "minor": minor.to_string(), "gitVersion": format!("v{major}.{minor}.0"),
                    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                    "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc", "platform": "linux/amd64"
                }),
            )
        }
        "/api" => {
            return json_response(
                200,
                &json!({
                    "kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}]
                }),
            )
        }
        "/apis" => return json_response(200, &group_list()),
        "/api/v1" => return json_response(200, &resource_list("", "v1").unwrap_or_default()),
        "/healthz" | "/readyz" | "/livez" => return full(StatusCode::OK, "text/plain", "ok"),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/apis/") {
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        if parts.len() == 2 {
            return match resource_list(parts[0], parts[1]) {
                Some(list) => json_response(200, &list),
                None => error_response(&ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )),
            };
        }
    }
    let Some(target) = parse_target(path) else {
        return error_response(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    let parsed_body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return error_response(&ApiError::new(
                    400,
                    "BadRequest",
                    format!("the request body is not JSON: {e}"),
                ))
            }
        }
    };
    let ns = target.namespace.as_deref();
    let res = target.resource;
    let wants_table = accept.contains("as=Table");
    let result = match (
        method,
        target.name.as_deref(),
        target.subresource.as_deref(),
    ) {
        (&Method::GET, None, _) => {
            let (labels, fields) = match selectors(query) {
                Ok(parsed) => parsed,
                Err(e) => return error_response(&e),
            };
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                return watch(shared, res, target.namespace, labels, fields, query);
            }
            // Pages: `limit`, and `continue` with the token of the previous page, which
            // carries the first page's resourceVersion (every page reports it, as the API
            // server does) and the key of the last object handed out.
            let limit = query
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|l| *l > 0);
            let token = match query.get("continue").filter(|t| !t.is_empty()) {
                Some(t) => match parse_continue(t) {
                    Some(parsed) => Some(parsed),
                    None => {
                        return error_response(&ApiError::new(
                            400,
                            "BadRequest",
                            format!("invalid continue token {t:?}"),
                        ))
                    }
                },
                None => None,
            };
            let (items, next, rv) = {
                let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                let (first_rv, after) = match token {
                    Some((rv, ns, name)) => (rv, Some((ns, name))),
                    None => (state.resource_version(), None),
                };
                let (items, next) = state.list_page(res, ns, &labels, &fields, after, limit);
                (items, next, first_rv)
            };
            let mut list = if wants_table {
                table(res, &items, rv)
            } else {
                let r = &RESOURCES[res];
                json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items})
            };
            if let Some((ns, name)) = next {
                list["metadata"]["continue"] = json!(format!("{rv}:{ns}:{name}"));
            }
            Ok((200, list))
        }
        (&Method::GET, Some(name), _) => {
            shared
                .apply(|st, ch, _| st.get(res, ns, name, ch))
                .map(|o| {
                    if wants_table {
                        let rv = o["metadata"]["resourceVersion"]
                            .as_str()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        (200, table(res, &[o], rv))
                    } else {
                        (200, o)
                    }
                })
        }
        (&Method::POST, None, _) => shared
            .apply(|st, ch, _| st.create(res, ns, parsed_body.clone(), ch))
            .map(|o| (201, o)),
        (&Method::POST, Some(name), Some("eviction")) if RESOURCES[res].plural == "pods" => {
            let latency = {
                let mut flight = shared
                    .evictions_in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                flight.0 += 1;
                flight.1 = flight.1.max(flight.0);
                shared
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .config
                    .eviction_latency
            };
            tokio::time::sleep(latency).await;
            let result = shared
                .apply(|st, ch, fu| st.evict(ns.unwrap_or_default(), name, &parsed_body, ch, fu))
                .map(|o| (201, o));
            shared
                .evictions_in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0 -= 1;
            result
        }
        (&Method::PUT, Some(name), _) => shared
            .apply(|st, ch, _| st.replace(res, ns, name, parsed_body.clone(), ch))
            .map(|o| (200, o)),
        (&Method::PATCH, Some(name), _) => shared
            .apply(|st, ch, _| st.patch(res, ns, name, content_type, &parsed_body, ch))
            .map(|o| (200, o)),
        (&Method::DELETE, Some(name), None) => shared
            .apply(|st, ch, fu| st.delete(res, ns, name, &parsed_body, ch, fu))
            .map(|o| (200, o)),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
        )),
    };
    match result {
        Ok((code, v)) => json_response(code, &v),
        Err(e) => error_response(&e),
    }
}

struct WatchState {
    backlog: VecDeque<Bytes>,
    rx: broadcast::Receiver<Arc<Change>>,
    after: u64,
    resource: ResourceId,
    namespace: Option<String>,
    labels: LabelQuery,
    fields: FieldQuery,
    deadline: tokio::time::Instant,
}

impl WatchState {
    /// Whether the watch's namespace and selectors select this state of an object.
    fn selects(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The event this watch sends for a change, as the API server's watch cache does: a
    /// modification that makes an object enter the selection is `ADDED`, one that makes it
    /// leave is `DELETED` (the object as it was, at the change's resourceVersion).
    fn event(&self, c: &Change) -> Option<Bytes> {
        if c.resource != self.resource {
            return None;
        }
        let now = self.selects(&c.object);
        if c.kind != "MODIFIED" {
            return now.then(|| event_line(c.kind, &c.object));
        }
        let before = c.previous.as_ref().is_some_and(|p| self.selects(p));
        match (before, now) {
            (true, true) => Some(event_line("MODIFIED", &c.object)),
            (false, true) => Some(event_line("ADDED", &c.object)),
            (true, false) => {
                let mut gone = c.previous.clone().unwrap_or_default();
                gone["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                Some(event_line("DELETED", &gone))
            }
            (false, false) => None,
        }
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A watch: the changes after `resourceVersion` (or every current object as `ADDED` when none
/// is given), then live changes as JSON lines until `timeoutSeconds`.
fn watch(
    shared: &Arc<Shared>,
    resource: ResourceId,
    namespace: Option<String>,
    labels: LabelQuery,
    fields: FieldQuery,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let from = query
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1800);
    let (backlog, rx, after) = {
        let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let rx = shared.changes.subscribe();
        let backlog: Vec<Change> = match from {
            Some(rv) => state.history_after(rv),
            None => state
                .list(resource, namespace.as_deref(), &labels, &fields)
                .into_iter()
                .map(|object| Change {
                    rv: 0,
                    resource,
                    kind: "ADDED",
                    object,
                    previous: None,
                })
                .collect(),
        };
        (backlog, rx, state.resource_version())
    };
    let mut st = WatchState {
        backlog: VecDeque::new(),
        rx,
        after,
        resource,
        namespace,
        labels,
        fields,
        deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(timeout),
    };
    st.backlog = backlog.iter().filter_map(|c| st.event(c)).collect();
    let stream = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(line) = st.backlog.pop_front() {
                return Some((Ok::<_, Infallible>(Frame::data(line)), st));
            }
            let next = tokio::time::timeout_at(st.deadline, st.rx.recv()).await;
            let change = match next {
                Ok(Ok(c)) => c,
                // Timed out, lagged behind or shut down: end the stream; clients re-watch.
                _ => return None,
            };
            if change.rv <= st.after {
                continue;
            }
            st.after = change.rv;
            if let Some(line) = st.event(&change) {
                return Some((Ok(Frame::data(line)), st));
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .expect("valid response")
}
