//! A fault-injection HTTP proxy in front of moto.
//!
//! The Auto Scaling API uses the AWS Query protocol: every call is a form-encoded POST whose
//! `Action` names the operation (`Action=SetDesiredCapacity&AutoScalingGroupName=...`), and
//! errors are XML bodies (`<ErrorResponse><Error><Code>Throttling</Code>...`). The proxy reads
//! the action and group names of each request, then either answers with an injected error or
//! forwards the request unchanged and, for a few rules, rewrites moto's answer.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::http::{reply, Listener, Reply};

const XMLNS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";
/// Prefix of the `NextToken`s the proxy hands out for its own activity pages.
const TOKEN_PREFIX: &str = "spotguard-proxy-page-";

/// An error answer in the Query protocol's XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// HTTP status.
    pub status: u16,
    /// Error code (`Throttling`, `InternalFailure`, `ValidationError`, ...).
    pub code: String,
    /// Error message.
    pub message: String,
}

impl ErrorReply {
    /// `400 Throttling: Rate exceeded`, as Auto Scaling throttles.
    pub fn throttling() -> Self {
        Self::new(400, "Throttling", "Rate exceeded")
    }

    /// `500 InternalFailure`.
    pub fn internal_error() -> Self {
        Self::new(500, "InternalFailure", "An internal error occurred")
    }

    /// `400 ValidationError` with this message.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(400, "ValidationError", message)
    }

    /// Any status, code and message.
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    fn xml(&self, request_id: u64) -> String {
        let kind = if self.status >= 500 {
            "Receiver"
        } else {
            "Sender"
        };
        format!(
            "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>{kind}</Type><Code>{}</Code>\
             <Message>{}</Message></Error><RequestId>spotguard-proxy-{request_id}</RequestId>\
             </ErrorResponse>",
            escape(&self.code),
            escape(&self.message)
        )
    }
}

/// How long a rule lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Until cleared.
    Cleared,
    /// For this long from now.
    Elapsed(Duration),
    /// For this many matching responses.
    Responses(u32),
}

#[derive(Debug)]
struct Lifetime {
    deadline: Option<Instant>,
    remaining: Option<u32>,
}

impl Lifetime {
    fn new(until: Until) -> Self {
        match until {
            Until::Cleared => Self {
                deadline: None,
                remaining: None,
            },
            Until::Elapsed(d) => Self {
                deadline: Some(Instant::now() + d),
                remaining: None,
            },
            Until::Responses(n) => Self {
                deadline: None,
                remaining: Some(n),
            },
        }
    }

    fn active(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() < d) && self.remaining != Some(0)
    }

    fn used(&mut self) {
        if let Some(n) = &mut self.remaining {
            *n = n.saturating_sub(1);
        }
    }
}

#[derive(Debug)]
struct ErrorRule {
    action: String,
    group: Option<String>,
    reply: ErrorReply,
    lifetime: Lifetime,
}

#[derive(Debug)]
struct InServiceDelay {
    group: String,
    except: HashSet<String>,
    lifetime: Lifetime,
}

#[derive(Debug, Clone)]
struct InjectedActivity {
    id: String,
    group: String,
    status_code: String,
    start: SystemTime,
    end: Option<SystemTime>,
    description: String,
    status_message: Option<String>,
}

impl InjectedActivity {
    fn xml(&self) -> String {
        let end = self
            .end
            .map(|t| format!("<EndTime>{}</EndTime>", humantime::format_rfc3339_millis(t)))
            .unwrap_or_default();
        let message = self
            .status_message
            .as_ref()
            .map(|m| format!("<StatusMessage>{}</StatusMessage>", escape(m)))
            .unwrap_or_default();
        format!(
            "<member><ActivityId>{}</ActivityId><AutoScalingGroupName>{}</AutoScalingGroupName>\
             <Description>{}</Description><Cause>injected by the test proxy</Cause>\
             <StartTime>{}</StartTime>{end}<StatusCode>{}</StatusCode>{message}\
             <Progress>100</Progress></member>",
            escape(&self.id),
            escape(&self.group),
            escape(&self.description),
            humantime::format_rfc3339_millis(self.start),
            escape(&self.status_code),
        )
    }
}

#[derive(Debug, Default)]
struct State {
    errors: Vec<ErrorRule>,
    delays: Vec<InServiceDelay>,
    /// Newest first, as Auto Scaling returns them.
    activities: Vec<InjectedActivity>,
    received: BTreeMap<String, u32>,
    forwarded: BTreeMap<String, u32>,
    injected: BTreeMap<String, u32>,
    next_id: u64,
}

impl State {
    fn take_error(&mut self, action: &str, groups: &[String]) -> Option<ErrorReply> {
        let rule = self.errors.iter_mut().find(|r| {
            r.action == action
                && r.lifetime.active()
                && r.group.as_ref().is_none_or(|g| groups.contains(g))
        })?;
        rule.lifetime.used();
        Some(rule.reply.clone())
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// The fault-injection proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    state: Arc<Mutex<State>>,
    listener: Listener,
}

impl FaultProxy {
    /// Starts a proxy forwarding to `upstream` (`http://127.0.0.1:<port>`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let handler_state = state.clone();
        let listener = Listener::serve("fault proxy", move |request| {
            handle(handler_state.clone(), upstream.clone(), request)
        })
        .await;
        FaultProxy { state, listener }
    }

    /// `http://127.0.0.1:<port>`: the endpoint to give the SDK.
    pub fn url(&self) -> String {
        self.listener.url()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Answers the next `times` requests of `action` (about `group`, when given) with `reply`
    /// instead of forwarding them. `u32::MAX` is "always".
    pub fn inject(&self, action: &str, group: Option<&str>, reply: ErrorReply, times: u32) {
        self.state().errors.push(ErrorRule {
            action: action.to_string(),
            group: group.map(str::to_string),
            reply,
            lifetime: Lifetime::new(Until::Responses(times)),
        });
    }

    /// Throttles the next `times` requests of `action`.
    pub fn throttle(&self, action: &str, times: u32) {
        self.inject(action, None, ErrorReply::throttling(), times);
    }

    /// Answers the next `times` requests of `action` with a 500.
    pub fn server_error(&self, action: &str, times: u32) {
        self.inject(action, None, ErrorReply::internal_error(), times);
    }

    /// Reports the group's `InService` instances as `Pending` in `DescribeAutoScalingGroups`
    /// answers (except the instances listed), until `until`; [`Until::Responses`] counts the
    /// answers that held the group.
    pub fn delay_in_service(&self, group: &str, except: &[String], until: Until) {
        self.state().delays.push(InServiceDelay {
            group: group.to_string(),
            except: except.iter().cloned().collect(),
            lifetime: Lifetime::new(until),
        });
    }

    /// Adds a failed launch (`StatusCode` `Failed`, the given `StatusMessage`, e.g. an
    /// `InsufficientInstanceCapacity` text) to the group's scaling activities, started now.
    /// Returns the activity id.
    pub fn add_failed_activity(&self, group: &str, status_message: &str) -> String {
        let now = SystemTime::now();
        self.add_activity(group, "Failed", now, Some(now), Some(status_message))
    }

    /// Adds a scaling activity with any status code and times. Returns its id.
    pub fn add_activity(
        &self,
        group: &str,
        status_code: &str,
        start: SystemTime,
        end: Option<SystemTime>,
        status_message: Option<&str>,
    ) -> String {
        let mut state = self.state();
        let id = format!("spotguard-activity-{}", state.id());
        state.activities.push(InjectedActivity {
            id: id.clone(),
            group: group.to_string(),
            status_code: status_code.to_string(),
            start,
            end,
            description: "Launching a new EC2 instance".to_string(),
            status_message: status_message.map(str::to_string),
        });
        state.activities.sort_by_key(|a| std::cmp::Reverse(a.start));
        id
    }

    /// Removes every rule and injected activity (the counts stay).
    pub fn clear(&self) {
        let mut state = self.state();
        state.errors.clear();
        state.delays.clear();
        state.activities.clear();
    }

    /// Requests of `action` the proxy received.
    pub fn received(&self, action: &str) -> u32 {
        self.state().received.get(action).copied().unwrap_or(0)
    }

    /// Requests of `action` that reached moto.
    pub fn forwarded(&self, action: &str) -> u32 {
        self.state().forwarded.get(action).copied().unwrap_or(0)
    }

    /// Requests of `action` answered with an injected error.
    pub fn injected(&self, action: &str) -> u32 {
        self.state().injected.get(action).copied().unwrap_or(0)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump(counts: &mut BTreeMap<String, u32>, action: &str) {
    *counts.entry(action.to_string()).or_default() += 1;
}

async fn handle(state: Arc<Mutex<State>>, upstream: String, request: Request<Incoming>) -> Reply {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return reply(400, "text/plain", format!("unreadable request body: {e}")),
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let action = param("Action").unwrap_or_default().to_string();
    let groups: Vec<String> = params
        .iter()
        .filter(|(k, _)| {
            k == "AutoScalingGroupName" || k.starts_with("AutoScalingGroupNames.member.")
        })
        .map(|(_, v)| v.clone())
        .collect();

    let injected = {
        let mut s = lock(&state);
        bump(&mut s.received, &action);
        let error = s.take_error(&action, &groups);
        if error.is_some() {
            bump(&mut s.injected, &action);
        }
        error.map(|e| (e.clone(), s.id()))
    };
    if let Some((error, id)) = injected {
        return reply(error.status, "text/xml", error.xml(id));
    }

    let page = ActivityPage::of(
        &action,
        param("AutoScalingGroupName"),
        param("MaxRecords"),
        param("NextToken"),
    );
    if let Some(page) = &page {
        if page.offset > 0 {
            // A page of the proxy's own activities: moto knows nothing of that token.
            let mut s = lock(&state);
            let (members, next) = page.members(&s);
            let id = s.id();
            return reply(200, "text/xml", activities_response(&members, next, id));
        }
    }

    let (status, headers, upstream_body) = match forward(&upstream, &parts, body).await {
        Ok(answer) => answer,
        Err(e) => return reply(502, "text/plain", format!("moto at {upstream} failed: {e}")),
    };
    let mut text = String::from_utf8_lossy(&upstream_body).into_owned();
    {
        let mut s = lock(&state);
        bump(&mut s.forwarded, &action);
        if status.is_success() {
            if action == "DescribeAutoScalingGroups" {
                text = delay_in_service(&mut s, &text);
            }
            if let Some(page) = &page {
                let (members, next) = page.members(&s);
                text = add_activities(&text, &members, next);
            }
        }
    }
    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        let skip = [
            "content-length",
            "transfer-encoding",
            "connection",
            "x-amz-crc32",
        ];
        if !skip.contains(&name.as_str()) {
            response = response.header(name, value);
        }
    }
    response
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|e| reply(502, "text/plain", format!("bad answer from moto: {e}")))
}

async fn forward(
    upstream: &str,
    parts: &Parts,
    body: Bytes,
) -> Result<(hyper::StatusCode, hyper::HeaderMap, Bytes), String> {
    let stream = TcpStream::connect(upstream)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    *request.headers_mut() = parts.headers.clone();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (answer, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((answer.status, answer.headers, body))
}

/// Rewrites `InService` to `Pending` for delayed groups.
fn delay_in_service(state: &mut State, xml: &str) -> String {
    state.delays.retain(|d| d.lifetime.active());
    if state.delays.is_empty() {
        return xml.to_string();
    }
    let mut out = xml.to_string();
    // Right to left, so earlier ranges stay valid.
    for group_range in members(xml, "AutoScalingGroups").into_iter().rev() {
        let group_xml = &xml[group_range.clone()];
        let Some(name) = text_of(group_xml, "AutoScalingGroupName") else {
            continue;
        };
        let Some(delay) = state
            .delays
            .iter_mut()
            .find(|d| d.group == name && d.lifetime.active())
        else {
            continue;
        };
        delay.lifetime.used();
        let mut rewritten = group_xml.to_string();
        for instance in members(group_xml, "Instances").into_iter().rev() {
            let instance_xml = &group_xml[instance.clone()];
            if text_of(instance_xml, "InstanceId").is_some_and(|id| delay.except.contains(id)) {
                continue;
            }
            let pending = instance_xml.replace(
                "<LifecycleState>InService</LifecycleState>",
                "<LifecycleState>Pending</LifecycleState>",
            );
            rewritten.replace_range(instance, &pending);
        }
        out.replace_range(group_range, &rewritten);
    }
    out
}

/// The proxy's share of one `DescribeScalingActivities` answer.
struct ActivityPage {
    group: Option<String>,
    offset: usize,
    max: usize,
}

impl ActivityPage {
    fn of(
        action: &str,
        group: Option<&str>,
        max_records: Option<&str>,
        next_token: Option<&str>,
    ) -> Option<Self> {
        (action == "DescribeScalingActivities").then(|| ActivityPage {
            group: group.map(str::to_string),
            offset: next_token
                .and_then(|t| t.strip_prefix(TOKEN_PREFIX))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            max: max_records
                .and_then(|m| m.parse().ok())
                .filter(|m| *m > 0)
                .unwrap_or(100),
        })
    }

    /// The members of this page and the token of the next one.
    fn members(&self, state: &State) -> (String, Option<String>) {
        let matching: Vec<&InjectedActivity> = state
            .activities
            .iter()
            .filter(|a| self.group.as_ref().is_none_or(|g| *g == a.group))
            .collect();
        let end = (self.offset + self.max).min(matching.len());
        let members = matching
            .get(self.offset..end)
            .unwrap_or_default()
            .iter()
            .map(|a| a.xml())
            .collect();
        let next = (end < matching.len()).then(|| format!("{TOKEN_PREFIX}{end}"));
        (members, next)
    }
}

fn activities_response(members: &str, next: Option<String>, request_id: u64) -> String {
    let next = next
        .map(|t| format!("<NextToken>{t}</NextToken>"))
        .unwrap_or_default();
    format!(
        "<DescribeScalingActivitiesResponse xmlns=\"{XMLNS}\"><DescribeScalingActivitiesResult>\
         <Activities>{members}</Activities>{next}</DescribeScalingActivitiesResult>\
         <ResponseMetadata><RequestId>spotguard-proxy-{request_id}</RequestId>\
         </ResponseMetadata></DescribeScalingActivitiesResponse>"
    )
}

/// Puts the members first in moto's `<Activities>` list, and the next token after it.
fn add_activities(xml: &str, members: &str, next: Option<String>) -> String {
    let mut out = if xml.contains("<Activities/>") {
        xml.replacen(
            "<Activities/>",
            &format!("<Activities>{members}</Activities>"),
            1,
        )
    } else {
        xml.replacen("<Activities>", &format!("<Activities>{members}"), 1)
    };
    if let Some(token) = next {
        out = out.replacen(
            "</DescribeScalingActivitiesResult>",
            &format!("<NextToken>{token}</NextToken></DescribeScalingActivitiesResult>"),
            1,
        );
    }
    out
}

/// Byte ranges of the top-level `<member>` elements of the first `<section>` element.
fn members(xml: &str, section: &str) -> Vec<Range<usize>> {
    const OPEN: &str = "<member>";
    const CLOSE: &str = "</member>";
    let Some(start) = xml.find(&format!("<{section}>")) else {
        return Vec::new();
    };
    let section_end = format!("</{section}>");
    let mut ranges = Vec::new();
    let mut depth = 0usize;
    let mut member_start = 0;
    let mut pos = start + section.len() + 2;
    while let Some(offset) = xml[pos..].find('<') {
        let at = pos + offset;
        let rest = &xml[at..];
        if rest.starts_with(OPEN) {
            if depth == 0 {
                member_start = at;
            }
            depth += 1;
            pos = at + OPEN.len();
        } else if rest.starts_with(CLOSE) {
            depth = depth.saturating_sub(1);
            pos = at + CLOSE.len();
            if depth == 0 {
                ranges.push(member_start..pos);
            }
        } else if depth == 0 && rest.starts_with(&section_end) {
            break;
        } else {
            pos = at + 1;
        }
    }
    ranges
}

/// The text of the first `<tag>` element.
fn text_of<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..end])
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUPS: &str = "<R><AutoScalingGroups>\
        <member><AutoScalingGroupName>a</AutoScalingGroupName><AvailabilityZones><member>z</member></AvailabilityZones>\
        <Instances><member><InstanceId>i-1</InstanceId><LifecycleState>InService</LifecycleState></member>\
        <member><InstanceId>i-2</InstanceId><LifecycleState>InService</LifecycleState></member></Instances></member>\
        <member><AutoScalingGroupName>b</AutoScalingGroupName><Instances><member><InstanceId>i-3</InstanceId>\
        <LifecycleState>InService</LifecycleState></member></Instances></member>\
        </AutoScalingGroups></R>";

    #[test]
    fn members_are_found_at_the_top_level_only() {
        let groups = members(GROUPS, "AutoScalingGroups");
        assert_eq!(groups.len(), 2);
        assert_eq!(
            text_of(&GROUPS[groups[1].clone()], "AutoScalingGroupName"),
            Some("b")
        );
        assert_eq!(members(&GROUPS[groups[0].clone()], "Instances").len(), 2);
        assert!(members("<X><Instances/></X>", "Instances").is_empty());
    }

    #[test]
    fn delays_rewrite_only_the_group_and_spare_the_exceptions() {
        let mut state = State::default();
        state.delays.push(InServiceDelay {
            group: "a".into(),
            except: ["i-1".to_string()].into(),
            lifetime: Lifetime::new(Until::Responses(1)),
        });
        let out = delay_in_service(&mut state, GROUPS);
        assert!(out.contains("<InstanceId>i-1</InstanceId><LifecycleState>InService<"));
        assert!(out.contains("<InstanceId>i-2</InstanceId><LifecycleState>Pending<"));
        assert!(out.contains("<InstanceId>i-3</InstanceId><LifecycleState>InService<"));
        // Used up after one answer.
        assert_eq!(delay_in_service(&mut state, GROUPS), GROUPS);
    }

    #[test]
    fn activities_go_into_empty_and_full_lists() {
        let out = add_activities(
            "<R><DescribeScalingActivitiesResult><Activities/></DescribeScalingActivitiesResult></R>",
            "<member>x</member>",
            Some("t".into()),
        );
        assert!(out.contains("<Activities><member>x</member></Activities><NextToken>t</NextToken>"));
        let out = add_activities(
            "<Activities><member>y</member></Activities>",
            "<member>x</member>",
            None,
        );
        assert_eq!(
            out,
            "<Activities><member>x</member><member>y</member></Activities>"
        );
    }

    #[test]
    fn error_replies_escape_their_text() {
        let xml = ErrorReply::validation("a < b").xml(7);
        assert!(xml.contains("<Code>ValidationError</Code><Message>a &lt; b</Message>"));
        assert!(xml.contains("<Type>Sender</Type>"));
        assert!(ErrorReply::internal_error()
            .xml(1)
            .contains("<Type>Receiver</Type>"));
    }
}
