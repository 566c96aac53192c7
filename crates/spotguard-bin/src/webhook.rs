//! What a webhook notification says and where it goes: the `[webhook]` table, the body
//! templates (Slack, Microsoft Teams, JSON, or one of your own) and their rendering. Sending
//! is the daemon's notifier's (`notify.rs`); this part is also what `check-config` validates.

// Without the daemon only the settings are used (`check-config`).
#![cfg_attr(not(feature = "daemon"), allow(dead_code))]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use minijinja::Environment;
use serde::{Deserialize, Serialize};
use spotguard_core::config::ConfigError;
use spotguard_core::events::Event;

/// Slack's incoming webhooks: one line of text.
pub const SLACK_TEMPLATE: &str = r#"{"text": {{ ((":warning: " if warning else "") ~ "*Spot Guard*" ~ (" (" ~ cluster ~ ")" if cluster else "") ~ ": " ~ message) | tojson }}}"#;

/// Microsoft Teams (Workflows and incoming-webhook connectors): an Adaptive Card.
pub const TEAMS_TEMPLATE: &str = r#"{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "weight": "Bolder", "color": {{ ("Warning" if warning else "Default") | tojson }}, "text": {{ ("Spot Guard" ~ (" (" ~ cluster ~ ")" if cluster else "") ~ ": " ~ event) | tojson }}}, {"type": "TextBlock", "wrap": true, "text": {{ message | tojson }}}]}}]}"#;

/// The message body's shape when no `template` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookFormat {
    /// `{"text": "..."}` ([`SLACK_TEMPLATE`]); Mattermost and Rocket.Chat take it too.
    Slack,
    /// An Adaptive Card for Microsoft Teams ([`TEAMS_TEMPLATE`]).
    Teams,
    /// The notification's fields as a JSON object ([`Notification`]).
    Json,
}

/// The `[webhook]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Where to POST each notification (default: none, no notifications). A secret in most
    /// services: the chart can take it from a Secret (`SPOTGUARD_WEBHOOK_URL`).
    pub url: Option<String>,
    /// The body when no `template` is given: `slack` (default), `teams` or `json`.
    pub format: WebhookFormat,
    /// A body template of your own (minijinja, Jinja2 syntax) over the fields of
    /// [`Notification`], e.g. `{"msg": {{ message | tojson }}}`; wins over `format`.
    pub template: Option<String>,
    /// Headers sent with each request (`Content-Type: application/json` unless given).
    pub headers: BTreeMap<String, String>,
    /// Proxy for the requests, e.g. `http://proxy:3128` (default: `HTTPS_PROXY`,
    /// `HTTP_PROXY` and `NO_PROXY` from the environment).
    pub proxy: Option<String>,
    /// The events to send, by name (`ScaledUp`, `FallbackRecorded`, `PaidBack`, ...;
    /// default: every action).
    pub events: Vec<String>,
    /// Cluster name shown in each message (default: none).
    pub cluster: Option<String>,
    /// How long one request may take (default 10s).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per notification, the first included (default 5).
    pub attempts: u32,
    /// Pause before the first retry, doubled for each next one (default 1s).
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// The longest pause between attempts (default 30s).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Notifications waiting to be sent at most; more are dropped and counted (default 1000).
    pub queue: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            url: None,
            format: WebhookFormat::Slack,
            template: None,
            headers: BTreeMap::new(),
            proxy: None,
            events: Vec::new(),
            cluster: None,
            timeout: Duration::from_secs(10),
            attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            queue: 1000,
        }
    }
}

/// Whether `url` is an absolute http(s) URL with a host.
fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or_default();
        let host = host.rsplit('@').next().unwrap_or_default();
        !host.is_empty() && !host.starts_with(':') && !r.chars().any(char::is_whitespace)
    })
}

/// `https://host/(redacted)`: scheme and host kept, credentials, path and query hidden.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(redacted)".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = rest[..end].rsplit('@').next().unwrap_or_default();
    if end == rest.len() || rest[end..] == *"/" {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/(redacted)")
    }
}

/// An HTTP header name (RFC 9110 token) and a value without control characters.
fn is_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

impl WebhookSettings {
    /// The body template in use: `template`, else the one of `format` (`None` for `json`).
    pub fn body_template(&self) -> Option<&str> {
        match (&self.template, self.format) {
            (Some(t), _) => Some(t),
            (None, WebhookFormat::Slack) => Some(SLACK_TEMPLATE),
            (None, WebhookFormat::Teams) => Some(TEAMS_TEMPLATE),
            (None, WebhookFormat::Json) => None,
        }
    }

    /// The settings with their secrets hidden, for printing: the URL's path and query (the
    /// token of a Slack or Teams webhook), its credentials and every header value.
    pub fn redacted(&self) -> Self {
        let mut out = self.clone();
        out.url = self.url.as_deref().map(redact_url);
        out.proxy = self.proxy.as_deref().map(redact_url);
        for value in out.headers.values_mut() {
            *value = "(redacted)".into();
        }
        out
    }

    /// Checks every field, the template by compiling it; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, value: &dyn std::fmt::Debug, problem: &str| ConfigError {
            field: field.into(),
            value: format!("{value:?}"),
            problem: problem.to_string(),
        };
        for (field, value) in [("webhook.url", &self.url), ("webhook.proxy", &self.proxy)] {
            if let Some(url) = value {
                if !is_http_url(url) {
                    return Err(bad(field, url, "must be an http:// or https:// URL"));
                }
            }
        }
        if let Some(t) = &self.template {
            if let Err(e) = environment().template_from_str(t) {
                return Err(bad(
                    "webhook.template",
                    t,
                    &format!("is not a valid template: {e}"),
                ));
            }
        }
        for name in &self.events {
            if !Event::NAMES.contains(&name.as_str()) {
                return Err(bad(
                    "webhook.events",
                    name,
                    &format!("is no event; known: {}", Event::NAMES.join(", ")),
                ));
            }
        }
        for (name, value) in &self.headers {
            if !is_header(name, value) {
                return Err(bad("webhook.headers", name, "is not a valid HTTP header"));
            }
        }
        if self.attempts == 0 {
            return Err(bad("webhook.attempts", &0, "must be at least 1"));
        }
        if self.queue == 0 {
            return Err(bad("webhook.queue", &0, "must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(bad("webhook.timeout", &"0s", "must be greater than zero"));
        }
        Ok(())
    }

    /// Whether `event` is one to send.
    pub fn wants(&self, event: &Event) -> bool {
        if self.events.is_empty() {
            event.is_action()
        } else {
            self.events.iter().any(|n| n == event.name())
        }
    }
}

/// The template environment: JSON bodies, so no HTML escaping.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Bodies are JSON, not HTML: values are escaped where the template says (`tojson`).
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

/// What a template sees: one engine event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// The event's name (`ScaledUp`, ...).
    pub event: String,
    /// What happened, as one line.
    pub message: String,
    /// Whether it went wrong or was refused.
    pub warning: bool,
    /// When, RFC 3339.
    pub time: String,
    /// `webhook.cluster`, if set.
    pub cluster: Option<String>,
    /// The instance the event names, if any.
    pub instance: Option<String>,
    /// The node, if any.
    pub node: Option<String>,
    /// The group, if any.
    pub group: Option<String>,
    /// The ledger entry, if any.
    pub entry: Option<String>,
}

impl Notification {
    /// The notification of `event` at `at`.
    pub fn of(at: SystemTime, event: &Event, cluster: Option<&str>) -> Self {
        let s = event.subjects();
        Self {
            event: event.name().to_string(),
            message: event.to_string(),
            warning: event.is_warning(),
            time: humantime::format_rfc3339_seconds(at).to_string(),
            cluster: cluster.map(str::to_string),
            instance: s.instance.map(str::to_string),
            node: s.node.map(str::to_string),
            group: s.group.map(str::to_string),
            entry: s.entry.map(str::to_string),
        }
    }
}

/// The body of `n` with `template` (or the JSON of its fields without one).
pub fn render(template: Option<&str>, n: &Notification) -> Result<String, String> {
    match template {
        None => serde_json::to_string(n).map_err(|e| e.to_string()),
        Some(t) => environment()
            .render_str(t, minijinja::Value::from(minijinja::value::Serde(n)))
            .map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> WebhookSettings {
        WebhookSettings {
            url: Some(url.into()),
            ..WebhookSettings::default()
        }
    }

    fn fallback() -> Event {
        Event::FallbackRecorded {
            entry: "fb-1".into(),
            group: "web-od".into(),
        }
    }

    #[test]
    fn bad_settings_name_the_field() {
        type Breaks = fn(&mut WebhookSettings);
        let cases: [(&str, Breaks); 6] = [
            ("webhook.url", |s| s.url = Some("hooks.slack.com/x".into())),
            ("webhook.proxy", |s| s.proxy = Some("proxy:3128".into())),
            ("webhook.template", |s| {
                s.template = Some("{{ message ".into())
            }),
            ("webhook.events", |s| s.events = vec!["Scaled".into()]),
            ("webhook.headers", |s| {
                s.headers.insert("bad header".into(), "x".into());
            }),
            ("webhook.attempts", |s| s.attempts = 0),
        ];
        for (field, break_it) in cases {
            let mut s = settings("https://hooks.slack.com/services/x");
            assert_eq!(s.validate(), Ok(()));
            break_it(&mut s);
            assert_eq!(s.validate().unwrap_err().field, field);
        }
        let mut s = settings("https://example.com/x");
        s.events = vec!["PaidBack".into()];
        assert!(s.wants(&Event::PaidBack {
            entry: "e".into(),
            group: "g".into(),
            how: "h".into(),
            held: Duration::ZERO
        }));
        assert!(!s.wants(&fallback()));
    }

    #[test]
    fn printing_hides_the_secrets() {
        let mut s = settings("https://hooks.slack.com/services/T0/B0/secret?x=1");
        s.proxy = Some("http://user:pass@proxy:3128".into());
        s.headers
            .insert("Authorization".into(), "Bearer t0ken".into());
        let r = s.redacted();
        assert_eq!(r.url.as_deref(), Some("https://hooks.slack.com/(redacted)"));
        assert_eq!(r.proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!(r.headers["Authorization"], "(redacted)");
        let printed = format!("{r:?}");
        for secret in ["secret", "pass", "t0ken"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn urls_and_headers() {
        for good in [
            "https://hooks.slack.com/services/T/B/x",
            "http://127.0.0.1:8080/hook",
            "http://u:p@proxy:3128",
        ] {
            assert!(is_http_url(good), "{good}");
        }
        for bad in [
            "hooks.slack.com/x",
            "https://",
            "https://:80/x",
            "ftp://x/y",
            "https://a b/",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
        assert!(is_header("X-Api-Key", "secret value"));
        assert!(!is_header("X Api", "v"));
        assert!(!is_header("X-Api", "line\nbreak"));
    }
}
