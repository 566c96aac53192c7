//! The API fault proxy forwards to the real API server (lists, watches, evictions) and
//! answers by rule: injected `Status` errors, watches ended by an error event, delays, and
//! nothing once cleared.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{EvictParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::Api;
use serde_json::json;
use spotguard_testkit_k8s::{ApiFaultProxy, ApiRule, ControlPlane, StatusReply};

const WAIT: Duration = Duration::from_secs(30);

/// A client through the proxy that sees every answer (no retry layer).
fn client(proxy: &ApiFaultProxy) -> kube::Client {
    let mut config = proxy.admin_config();
    config.default_retry = false;
    kube::Client::try_from(config).expect("a client through the proxy")
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}}))
        .expect("a ConfigMap")
}

fn api_status(error: kube::Error) -> kube::core::Status {
    match error {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn forwards_lists_and_streams_watches() {
    let cp = ControlPlane::shared();
    let proxy = ApiFaultProxy::start(cp).await;
    assert!(proxy.url().starts_with("http://127.0.0.1:"));
    let client = client(&proxy);

    let pods: Api<Pod> = Api::all(client.clone());
    pods.list(&ListParams::default().limit(5))
        .await
        .expect("pods listed through the proxy");

    let ns = cp.create_namespace("proxy-watch").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let version = maps
        .list(&ListParams::default())
        .await
        .expect("config maps listed")
        .metadata
        .resource_version
        .expect("a resource version");
    let mut events = maps
        .watch(&WatchParams::default().timeout(60), &version)
        .await
        .expect("a watch through the proxy")
        .boxed();
    // Created after the watch is open (and not through the proxy).
    let direct: Api<ConfigMap> = Api::namespaced(cp.admin_client(), &ns);
    direct
        .create(&PostParams::default(), &config_map("watched"))
        .await
        .expect("a config map created");
    let added = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next().await {
            if let WatchEvent::Added(map) = event.expect("a watch event") {
                return map;
            }
        }
        panic!("the watch ended without an event");
    })
    .await
    .expect("a watch event through the proxy in time");
    assert_eq!(added.metadata.name.as_deref(), Some("watched"));

    let requests = proxy.requests();
    assert!(
        requests
            .iter()
            .any(|(m, p, s)| m == "GET" && p.starts_with("/api/v1/pods") && *s == 200),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|(m, p, s)| m == "GET" && p.contains("watch=true") && *s == 200),
        "{requests:?}"
    );
    assert_eq!(proxy.injected("", ""), 0);
    assert_eq!(proxy.received(), proxy.forwarded());
}

#[tokio::test]
async fn injected_503_is_an_api_error_then_requests_pass() {
    let cp = ControlPlane::shared();
    let ns = cp.create_namespace("proxy-503").await;
    let proxy = ApiFaultProxy::start(cp).await;
    let maps: Api<ConfigMap> = Api::namespaced(client(&proxy), &ns);
    let path = format!("/api/v1/namespaces/{ns}/configmaps");
    proxy.inject("GET", &path, StatusReply::service_unavailable(), 1);

    let status = api_status(maps.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(status.code, 503);
    assert_eq!(status.reason, "ServiceUnavailable");
    maps.list(&ListParams::default())
        .await
        .expect("the next request is forwarded");

    assert_eq!(proxy.injected("GET", "/configmaps"), 1);
    assert_eq!(proxy.injected("POST", "/configmaps"), 0);
    let answers: Vec<(String, u16)> = proxy
        .requests()
        .into_iter()
        .map(|(m, p, s)| {
            assert!(p.starts_with(&path), "{p}");
            (m, s)
        })
        .collect();
    assert_eq!(answers, [("GET".into(), 503), ("GET".into(), 200)]);
    assert_eq!((proxy.received(), proxy.forwarded()), (2, 1));
}

#[tokio::test]
async fn eviction_429_has_a_status_body_and_retry_after_until_cleared() {
    let cp = ControlPlane::shared();
    let ns = cp.create_namespace("proxy-429").await;
    let proxy = ApiFaultProxy::start(cp).await;
    proxy.add(ApiRule::reply(
        "POST",
        "/eviction",
        StatusReply::too_many_requests(Some(7)),
    ));
    let client = client(&proxy);

    // Raw, to see the header and the body as sent.
    let eviction = json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "absent", "namespace": ns},
    });
    let request = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/absent/eviction"))
        .header("content-type", "application/json")
        .body(kube::client::Body::from(
            serde_json::to_vec(&eviction).expect("json"),
        ))
        .expect("a request");
    let response = client.send(request).await.expect("an answer");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["status"], "Failure");
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(body["code"], 429);
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));

    // Through kube's eviction call: still 429 (the rule lasts until cleared).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let status = api_status(
        pods.evict("absent", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (429, "TooManyRequests")
    );
    assert_eq!(proxy.injected("POST", "/eviction"), 2);
    assert_eq!(proxy.forwarded(), 0);

    // Cleared: the API server answers (the pod does not exist).
    proxy.clear();
    assert!(proxy.rules().is_empty());
    let status = api_status(
        pods.evict("absent", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 404);
    assert_eq!(proxy.injected("POST", "/eviction"), 2);
    let statuses: Vec<u16> = proxy.requests().into_iter().map(|(_, _, s)| s).collect();
    assert_eq!(statuses, [429, 429, 404]);
}

#[tokio::test]
async fn delay_rule_holds_matching_requests() {
    let cp = ControlPlane::shared();
    let ns = cp.create_namespace("proxy-delay").await;
    let proxy = ApiFaultProxy::start(cp).await;
    let maps: Api<ConfigMap> = Api::namespaced(client(&proxy), &ns);
    let delay = Duration::from_millis(1500);
    proxy.delay("GET", "/configmaps", delay, 2);
    // Other requests pass at once.
    proxy.add(ApiRule::delay("POST", "/nodes", Duration::from_secs(60)));

    let started = Instant::now();
    maps.list(&ListParams::default()).await.expect("a list");
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());

    // A delay and an error on the same request: held, then answered by the rule.
    proxy.inject("GET", "/configmaps", StatusReply::internal_error(), 1);
    let started = Instant::now();
    let status = api_status(maps.list(&ListParams::default()).await.unwrap_err());
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    assert_eq!(
        (status.code, status.reason.as_str()),
        (500, "InternalError")
    );

    // Both rules used up.
    let started = Instant::now();
    maps.list(&ListParams::default()).await.expect("a list");
    assert!(started.elapsed() < delay, "{:?}", started.elapsed());

    // A rule until cleared, then cleared.
    proxy.add(ApiRule::delay("GET", "/configmaps", delay));
    let started = Instant::now();
    maps.list(&ListParams::default()).await.expect("a list");
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    proxy.clear();
    let started = Instant::now();
    maps.list(&ListParams::default()).await.expect("a list");
    assert!(started.elapsed() < delay, "{:?}", started.elapsed());

    let statuses: Vec<u16> = proxy.requests().into_iter().map(|(_, _, s)| s).collect();
    assert_eq!(statuses, [200, 500, 200, 200, 200]);
    assert_eq!(proxy.injected("GET", "/configmaps"), 1);
}

#[tokio::test]
async fn max_in_flight_counts_the_matching_requests_held_at_once() {
    let cp = ControlPlane::shared();
    let ns = cp.create_namespace("proxy-in-flight").await;
    let proxy = ApiFaultProxy::start(cp).await;
    let maps: Api<ConfigMap> = Api::namespaced(client(&proxy), &ns);
    assert_eq!(proxy.max_in_flight("GET", "/configmaps"), 0, "nothing yet");

    // One after the other: never more than one at a time.
    for _ in 0..3 {
        maps.list(&ListParams::default()).await.expect("a list");
    }
    assert_eq!(proxy.max_in_flight("GET", "/configmaps"), 1);

    // Three at once, each held long enough for all three to arrive before any is answered.
    proxy.delay("GET", "/configmaps", Duration::from_secs(3), 3);
    let params = ListParams::default();
    let lists = (0..3).map(|_| maps.list(&params));
    for list in futures::future::join_all(lists).await {
        list.expect("a held list");
    }
    assert_eq!(proxy.max_in_flight("GET", "/configmaps"), 3);
    assert_eq!(proxy.max_in_flight("", "/configmaps"), 3, "any method");
    assert_eq!(
        proxy.max_in_flight("POST", "/configmaps"),
        0,
        "another method"
    );
    assert_eq!(proxy.max_in_flight("GET", "/secrets"), 0, "another path");
}

#[tokio::test]
async fn watch_error_rule_ends_a_watch_with_an_error_event() {
    let cp = ControlPlane::shared();
    let proxy = ApiFaultProxy::start(cp).await;
    let ns = cp.create_namespace("proxy-gone").await;
    proxy.add(
        ApiRule::watch_error(
            "GET",
            "watch=true",
            StatusReply::new(410, "Expired", "too old resource version: 1 (2)"),
        )
        .times(1),
    );
    let maps: Api<ConfigMap> = Api::namespaced(client(&proxy), &ns);
    let mut events = maps
        .watch(&WatchParams::default().timeout(60), "0")
        .await
        .expect("the watch is answered 200")
        .boxed();
    match tokio::time::timeout(WAIT, events.next()).await {
        Ok(Some(Ok(WatchEvent::Error(status)))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(WAIT, events.next())
            .await
            .expect("the stream ends")
            .is_none(),
        "nothing after the error"
    );
    assert_eq!(proxy.injected("GET", "watch=true"), 1);
    // The next watch is forwarded.
    let _forwarded = maps
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .expect("a forwarded watch");
    assert_eq!(proxy.injected("GET", "watch=true"), 1);
}
