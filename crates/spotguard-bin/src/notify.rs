//! Webhook notifications of the engine's actions (Slack, Microsoft Teams, or any URL with a
//! template of its own), as aws-node-termination-handler users get them.
//!
//! The observer hands each event to [`Notifier::notify`], which only copies it into a bounded
//! queue (`webhook.queue`): it never waits, and an event that finds the queue full is dropped
//! and counted (`spotguard_notifications_total{outcome="dropped"}`). One task sends the queue
//! in order, each message with a timeout and retried with exponential backoff; a message that
//! fails every attempt is logged and counted (`outcome="failed"`). So a slow or failing
//! endpoint delays only the notifications, never a notice, a drain or the monitor.

use std::sync::Arc;
use std::time::SystemTime;

use spotguard_core::events::Event;
use tokio::sync::mpsc;

use crate::metrics::{Metrics, OutcomeLabel};
use crate::webhook::{render, Notification, WebhookSettings};

/// The observer's side: queues notifications without waiting.
pub struct Notifier {
    settings: Arc<WebhookSettings>,
    queue: mpsc::Sender<Notification>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Starts the sending task for `settings` (whose `url` must be set and which must be
    /// valid) and returns the queue's end.
    pub fn start(settings: WebhookSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        let url = settings
            .url
            .clone()
            .ok_or_else(|| "webhook.url is not set".to_string())?;
        let mut client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("spotguard/", env!("CARGO_PKG_VERSION")));
        if let Some(proxy) = &settings.proxy {
            let proxy =
                reqwest::Proxy::all(proxy).map_err(|e| format!("webhook.proxy {proxy:?}: {e}"))?;
            client = client.proxy(proxy);
        }
        let client = client
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        let (queue, receiver) = mpsc::channel(settings.queue);
        let settings = Arc::new(settings);
        tokio::spawn(send_all(
            Sender {
                client,
                url,
                settings: settings.clone(),
                metrics: metrics.clone(),
            },
            receiver,
        ));
        Ok(Self {
            settings,
            queue,
            metrics,
        })
    }

    /// Queues a notification of `event` if it is one to send; never waits.
    pub fn notify(&self, at: SystemTime, event: &Event) {
        if !self.settings.wants(event) {
            return;
        }
        let n = Notification::of(at, event, self.settings.cluster.as_deref());
        if self.queue.try_send(n).is_err() {
            self.count("dropped");
        }
    }

    fn count(&self, outcome: &str) {
        count(&self.metrics, outcome);
    }
}

fn count(metrics: &Metrics, outcome: &str) {
    metrics
        .notifications
        .get_or_create(&OutcomeLabel {
            outcome: outcome.into(),
        })
        .inc();
}

struct Sender {
    client: reqwest::Client,
    url: String,
    settings: Arc<WebhookSettings>,
    metrics: Arc<Metrics>,
}

impl Sender {
    /// One POST: `Ok` on a 2xx answer.
    async fn post(&self, body: &str) -> Result<(), String> {
        let mut request = self.client.post(&self.url).body(body.to_string());
        if !self
            .settings
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in &self.settings.headers {
            request = request.header(name, value);
        }
        let answer = request.send().await.map_err(|e| {
            // reqwest's Display leaves out the cause ("error sending request"): add it.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            message
        })?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            let text = answer.text().await.unwrap_or_default();
            Err(format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ))
        }
    }

    /// Sends `n`, retrying with backoff; counts the outcome.
    async fn deliver(&self, n: &Notification) {
        let s = &self.settings;
        let body = match render(s.body_template(), n) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(event = %n.event, error = %e, "webhook template failed; notification not sent");
                count(&self.metrics, "failed");
                return;
            }
        };
        let mut pause = s.backoff;
        for attempt in 1..=s.attempts {
            match self.post(&body).await {
                Ok(()) => {
                    count(&self.metrics, "sent");
                    return;
                }
                Err(e) if attempt == s.attempts => {
                    tracing::warn!(event = %n.event, attempts = attempt, error = %e, "webhook notification failed; given up");
                    count(&self.metrics, "failed");
                }
                Err(e) => {
                    tracing::debug!(event = %n.event, attempt, error = %e, "webhook notification failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(s.max_backoff);
                }
            }
        }
    }
}

/// Sends the queue in order until every [`Notifier`] is dropped.
async fn send_all(sender: Sender, mut queue: mpsc::Receiver<Notification>) {
    while let Some(n) = queue.recv().await {
        sender.deliver(&n).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::TEAMS_TEMPLATE;
    use std::time::Duration;

    use std::sync::Mutex;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    /// A local HTTP server: records each request (its request-target, headers and body) and
    /// answers with `answer(n)` for the n-th (from 0) after `delay`.
    struct Hook {
        url: String,
        seen: Arc<Mutex<Vec<(String, hyper::HeaderMap, String)>>>,
    }

    async fn hook(answer: fn(usize) -> u16, delay: Duration) -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<(String, hyper::HeaderMap, String)>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let target = req.uri().to_string();
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let n = {
                                let mut log = log.lock().unwrap();
                                log.push((target, headers, String::from_utf8_lossy(&body).into()));
                                log.len() - 1
                            };
                            tokio::time::sleep(delay).await;
                            let mut response = hyper::Response::new(Full::new(Bytes::from("ok")));
                            *response.status_mut() =
                                hyper::StatusCode::from_u16(answer(n)).unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Hook { url, seen }
    }

    impl Hook {
        fn bodies(&self) -> Vec<String> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .map(|(_, _, b)| b.clone())
                .collect()
        }
    }

    fn settings(url: &str) -> WebhookSettings {
        WebhookSettings {
            url: Some(url.into()),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            timeout: Duration::from_secs(2),
            ..WebhookSettings::default()
        }
    }

    fn fallback() -> Event {
        Event::FallbackRecorded {
            entry: "fb-1".into(),
            group: "web-od".into(),
        }
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} did not happen within 5s");
    }

    fn counted(metrics: &Metrics, outcome: &str) -> bool {
        metrics.encode().contains(&format!(
            "spotguard_notifications_total{{outcome=\"{outcome}\"}}"
        ))
    }

    #[tokio::test]
    async fn actions_reach_the_webhook_as_slack_messages_and_bookkeeping_does_not() {
        let hook = hook(|_| 200, Duration::ZERO).await;
        let metrics = Metrics::new("all", false);
        let mut s = settings(&hook.url);
        s.cluster = Some("prod-eu".into());
        s.headers
            .insert("Authorization".into(), "Bearer t0ken".into());
        let notifier = Notifier::start(s, metrics.clone()).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        notifier.notify(at, &Event::LedgerCleaned { removed: 2 });
        notifier.notify(at, &fallback());
        notifier.notify(
            at,
            &Event::ScaleUpFailed {
                group: "web-spot".into(),
                reason: "no \"spot\" capacity".into(),
            },
        );
        until("two messages", || hook.bodies().len() == 2).await;
        let bodies: Vec<serde_json::Value> = hook
            .bodies()
            .iter()
            .map(|b| serde_json::from_str(b).expect("a JSON body"))
            .collect();
        assert_eq!(
            bodies[0]["text"],
            "*Spot Guard* (prod-eu): fallback to web-od recorded as fb-1"
        );
        assert_eq!(
            bodies[1]["text"],
            ":warning: *Spot Guard* (prod-eu): scale-up of web-spot failed: no \"spot\" capacity"
        );
        let (_, headers, _) = hook.seen.lock().unwrap()[0].clone();
        assert_eq!(headers["authorization"], "Bearer t0ken");
        assert_eq!(headers["content-type"], "application/json");
        until("counted", || {
            metrics
                .encode()
                .contains("spotguard_notifications_total{outcome=\"sent\"} 2")
        })
        .await;
    }

    #[tokio::test]
    async fn teams_json_and_custom_templates_render_the_event() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let n = Notification::of(at, &fallback(), Some("prod"));
        let teams: serde_json::Value =
            serde_json::from_str(&render(Some(TEAMS_TEMPLATE), &n).unwrap()).unwrap();
        let card = &teams["attachments"][0]["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(
            card["body"][0]["text"],
            "Spot Guard (prod): FallbackRecorded"
        );
        assert_eq!(
            card["body"][1]["text"],
            "fallback to web-od recorded as fb-1"
        );
        let json: serde_json::Value = serde_json::from_str(&render(None, &n).unwrap()).unwrap();
        assert_eq!(json["entry"], "fb-1");
        assert_eq!(json["group"], "web-od");
        assert_eq!(json["time"], "2027-01-15T08:00:00Z");
        let custom = r#"{"summary": {{ message | tojson }}, "on": {{ group | tojson }}{% if warning %}, "alert": true{% endif %}}"#;
        assert_eq!(
            render(Some(custom), &n).unwrap(),
            r#"{"summary": "fallback to web-od recorded as fb-1", "on": "web-od"}"#
        );
    }

    #[tokio::test]
    async fn a_failing_endpoint_is_retried_with_backoff_then_given_up() {
        // 503 twice, then 200: delivered on the third attempt.
        let flaky = hook(|n| if n < 2 { 503 } else { 200 }, Duration::ZERO).await;
        let metrics = Metrics::new("all", false);
        let notifier = Notifier::start(settings(&flaky.url), metrics.clone()).unwrap();
        notifier.notify(SystemTime::now(), &fallback());
        until("delivered on the third attempt", || {
            counted(&metrics, "sent")
        })
        .await;
        assert_eq!(flaky.bodies().len(), 3);
        // Always 500: every attempt made, then counted as failed.
        let down = hook(|_| 500, Duration::ZERO).await;
        let metrics = Metrics::new("all", false);
        let mut s = settings(&down.url);
        s.attempts = 3;
        let notifier = Notifier::start(s, metrics.clone()).unwrap();
        notifier.notify(SystemTime::now(), &fallback());
        until("given up", || counted(&metrics, "failed")).await;
        assert_eq!(down.bodies().len(), 3);
        assert!(!counted(&metrics, "sent"));
        // Nothing listening at all: connection errors are retried and given up the same way.
        let metrics = Metrics::new("all", false);
        let mut s = settings("http://127.0.0.1:9/hook");
        s.attempts = 2;
        let notifier = Notifier::start(s, metrics.clone()).unwrap();
        notifier.notify(SystemTime::now(), &fallback());
        until("given up on a closed port", || counted(&metrics, "failed")).await;
    }

    #[tokio::test]
    async fn a_slow_endpoint_never_blocks_the_caller_and_overflow_is_counted() {
        let slow = hook(|_| 200, Duration::from_millis(500)).await;
        let metrics = Metrics::new("all", false);
        let mut s = settings(&slow.url);
        s.queue = 2;
        let notifier = Notifier::start(s, metrics.clone()).unwrap();
        notifier.notify(SystemTime::now(), &fallback());
        until("the first one in flight", || slow.bodies().len() == 1).await;
        // `notify` only copies into the queue (it is not async: it cannot wait on the
        // endpoint). With one in flight, two fit in the queue and the other seven are
        // dropped and counted at once.
        for _ in 0..9 {
            notifier.notify(SystemTime::now(), &fallback());
        }
        assert!(
            metrics
                .encode()
                .contains("spotguard_notifications_total{outcome=\"dropped\"} 7"),
            "{}",
            metrics.encode()
        );
        until("the queued ones sent", || {
            metrics
                .encode()
                .contains("spotguard_notifications_total{outcome=\"sent\"} 3")
        })
        .await;
        assert_eq!(slow.bodies().len(), 3);
    }

    #[tokio::test]
    async fn requests_go_through_the_configured_proxy() {
        // The local server plays the proxy: a request through an HTTP proxy carries the
        // absolute URL of its destination, which need not resolve here.
        let proxy = hook(|_| 200, Duration::ZERO).await;
        let metrics = Metrics::new("all", false);
        let mut s = settings("http://hooks.example.invalid/services/T000/B000");
        s.proxy = Some(proxy.url.trim_end_matches("/hook").to_string());
        let notifier = Notifier::start(s, metrics.clone()).unwrap();
        notifier.notify(SystemTime::now(), &fallback());
        until("the request at the proxy", || !proxy.bodies().is_empty()).await;
        let (target, _, _) = proxy.seen.lock().unwrap()[0].clone();
        assert_eq!(target, "http://hooks.example.invalid/services/T000/B000");
    }
}
