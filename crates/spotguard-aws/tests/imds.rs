//! The notice watcher with the real aws-config IMDS client against the local IMDS server.

use std::time::{Duration, UNIX_EPOCH};

use spotguard_aws::{AwsError, NoticeWatcher, NoticeWatcherBuilder};
use spotguard_core::notice::NoticeKind;
use spotguard_testkit_aws::{free_port, ImdsServer};
use tokio::sync::{mpsc, oneshot};

const INSTANCE: &str = "i-0spotguard000001";
const REBALANCE_PATH: &str = "/latest/meta-data/events/recommendations/rebalance";
const ACTION_PATH: &str = "/latest/meta-data/spot/instance-action";

fn watcher(imds: &ImdsServer) -> NoticeWatcherBuilder {
    NoticeWatcher::builder().endpoint(imds.url())
}

/// 2020-10-27T08:22:00Z
fn notice_time() -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_603_786_920)
}

#[tokio::test]
async fn reads_the_instance_id_once_and_404_is_no_notice() {
    let imds = ImdsServer::start(INSTANCE).await;
    let mut w = watcher(&imds).connect().await.unwrap();
    assert_eq!(w.instance_id(), INSTANCE);

    for _ in 0..5 {
        let report = w.poll_once().await;
        assert!(report.notices.is_empty());
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
    assert_eq!(imds.gets("/latest/meta-data/instance-id"), 1);
    assert_eq!(imds.gets(REBALANCE_PATH), 5);
    assert_eq!(imds.gets(ACTION_PATH), 5);
    assert_eq!(imds.tokens_issued(), 1, "one session token for all reads");
    let counts = w.stats().snapshot();
    assert_eq!((counts.polls, counts.notices, counts.errors), (5, 0, 0));
}

#[tokio::test]
async fn a_rebalance_recommendation_is_emitted_once_across_polls() {
    let imds = ImdsServer::start(INSTANCE).await;
    let mut w = watcher(&imds).connect().await.unwrap();
    imds.set_rebalance("2020-10-27T08:22:00Z");

    let mut notices = Vec::new();
    for _ in 0..10 {
        notices.extend(w.poll_once().await.notices);
    }
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].instance_id, INSTANCE);
    assert_eq!(notices[0].kind, NoticeKind::Rebalance);
    assert_eq!(notices[0].notice_time, notice_time());
    assert_eq!(w.stats().snapshot().notices, 1);

    // Gone and back with the same time: still the same notice. A new time is a new one.
    imds.clear_notices();
    assert!(w.poll_once().await.notices.is_empty());
    imds.set_rebalance("2020-10-27T08:22:00Z");
    assert!(w.poll_once().await.notices.is_empty());
    imds.set_rebalance("2020-10-27T09:00:00Z");
    assert_eq!(w.poll_once().await.notices.len(), 1);
}

#[tokio::test]
async fn an_interruption_notice_is_parsed_and_emitted_once() {
    let imds = ImdsServer::start(INSTANCE).await;
    let mut w = watcher(&imds).connect().await.unwrap();
    imds.set_rebalance("2020-10-27T08:22:00Z");
    imds.set_interruption("terminate", "2020-10-27T08:24:00Z");

    let first = w.poll_once().await;
    assert_eq!(first.notices.len(), 2, "both notices in one poll");
    let interruption = first
        .notices
        .iter()
        .find(|n| n.kind != NoticeKind::Rebalance)
        .unwrap();
    assert_eq!(
        interruption.kind,
        NoticeKind::Interruption {
            action: "terminate".into(),
            deadline: notice_time() + Duration::from_secs(120),
        }
    );
    assert_eq!(
        interruption.deadline(),
        Some(notice_time() + Duration::from_secs(120))
    );
    for _ in 0..5 {
        assert!(w.poll_once().await.notices.is_empty());
    }
}

#[tokio::test]
async fn notices_are_not_emitted_again_after_a_restart() {
    let imds = ImdsServer::start(INSTANCE).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("notices.json");
    imds.set_rebalance("2020-10-27T08:22:00Z");

    let mut first = watcher(&imds).state_file(&state).connect().await.unwrap();
    let emitted = first.poll_once().await.notices;
    assert_eq!(emitted.len(), 1);
    drop(first);

    let mut restarted = watcher(&imds).state_file(&state).connect().await.unwrap();
    assert!(restarted.poll_once().await.notices.is_empty());
    imds.set_interruption("stop", "2020-10-27T08:24:00Z");
    assert_eq!(
        restarted.poll_once().await.notices.len(),
        1,
        "a new notice still comes"
    );
    drop(restarted);

    // Without a state file, the caller can seed what it already handled.
    let key = spotguard_aws::notice_key(&emitted[0]);
    let mut seeded = watcher(&imds).handled([key]).connect().await.unwrap();
    let report = seeded.poll_once().await;
    assert_eq!(report.notices.len(), 1);
    assert!(matches!(
        report.notices[0].kind,
        NoticeKind::Interruption { .. }
    ));
}

#[tokio::test]
async fn malformed_payloads_are_counted_errors_and_never_notices() {
    let imds = ImdsServer::start(INSTANCE).await;
    let mut w = watcher(&imds).connect().await.unwrap();
    imds.set_rebalance_payload(Some("<html>not json</html>".into()));
    imds.set_instance_action_payload(Some(r#"{"action": "terminate"}"#.into()));

    for poll in 1..=3u64 {
        let report = w.poll_once().await;
        assert!(report.notices.is_empty());
        assert_eq!(report.errors.len(), 2);
        for error in &report.errors {
            match error {
                AwsError::MalformedNotice {
                    instance,
                    path,
                    payload,
                    ..
                } => {
                    assert_eq!(instance, INSTANCE);
                    assert!(path == REBALANCE_PATH || path == ACTION_PATH, "{path}");
                    assert!(!payload.is_empty());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(w.stats().snapshot().malformed, 2 * poll);
    }
    assert_eq!(w.stats().snapshot().notices, 0);

    imds.set_rebalance("2020-10-27T08:22:00Z");
    imds.set_instance_action_payload(Some(r#"{"action": "terminate", "time": "soon"}"#.into()));
    let report = w.poll_once().await;
    assert_eq!(report.notices.len(), 1);
    assert_eq!(report.errors.len(), 1);
    assert!(
        report.errors[0].to_string().contains("\"soon\""),
        "{}",
        report.errors[0]
    );
}

#[tokio::test]
async fn slow_answers_within_the_timeout_work_and_slower_ones_are_errors() {
    let imds = ImdsServer::start(INSTANCE).await;
    let mut w = watcher(&imds)
        .read_timeout(Duration::from_millis(1000))
        .connect()
        .await
        .unwrap();
    imds.set_rebalance("2020-10-27T08:22:00Z");

    imds.set_delay(Duration::from_millis(1500));
    let report = w.poll_once().await;
    assert!(report.notices.is_empty());
    assert_eq!(report.errors.len(), 2);
    match &report.errors[0] {
        AwsError::Imds { endpoint, path, .. } => {
            assert_eq!(endpoint, &imds.url());
            assert_eq!(path, REBALANCE_PATH);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(w.stats().snapshot().errors, 2);

    imds.set_delay(Duration::from_millis(300));
    let report = w.poll_once().await;
    assert_eq!(report.notices.len(), 1, "{:?}", report.errors);
    assert!(report.errors.is_empty());
}

#[tokio::test]
async fn expiring_tokens_are_renewed_by_the_client() {
    let imds = ImdsServer::start(INSTANCE).await;
    // Tokens live 2 s; the polls span 3 s. The client renews a token once it is within two
    // minutes of expiring, so every read gets a fresh one and none is refused.
    imds.set_token_ttl_cap(Some(2));
    let mut w = watcher(&imds).connect().await.unwrap();

    for _ in 0..3 {
        let report = w.poll_once().await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    imds.set_rebalance("2020-10-27T08:22:00Z");
    assert_eq!(w.poll_once().await.notices.len(), 1);
    assert_eq!(imds.unauthorized(), 0);
    assert!(imds.tokens_issued() >= 3, "issued {}", imds.tokens_issued());
}

#[tokio::test]
async fn a_revoked_token_is_replaced_on_the_next_poll() {
    let imds = ImdsServer::start(INSTANCE).await;
    let mut w = watcher(&imds).connect().await.unwrap();
    assert!(w.poll_once().await.errors.is_empty());

    imds.revoke_tokens();
    imds.set_rebalance("2020-10-27T08:22:00Z");
    let refused = w.poll_once().await;
    assert!(refused.notices.is_empty());
    assert!(!refused.errors.is_empty());
    assert!(
        refused.errors[0].to_string().contains("HTTP 401"),
        "{}",
        refused.errors[0]
    );
    assert!(imds.unauthorized() >= 1);
    assert_eq!(w.stats().snapshot().token_resets, 1);

    let report = w.poll_once().await;
    assert_eq!(report.notices.len(), 1, "{:?}", report.errors);
    assert_eq!(imds.tokens_issued(), 2);
}

#[tokio::test]
async fn run_sends_each_notice_once_and_stops_on_shutdown() {
    let imds = ImdsServer::start(INSTANCE).await;
    let w = watcher(&imds).connect().await.unwrap();
    let stats = w.stats();
    let (sender, mut receiver) = mpsc::channel(4);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(w.run(Duration::from_millis(20), sender, async {
        let _ = stopped.await;
    }));

    imds.set_rebalance("2020-10-27T08:22:00Z");
    let notice = tokio::time::timeout(Duration::from_secs(5), receiver.recv())
        .await
        .expect("a notice within 5 s")
        .expect("channel open");
    assert_eq!(notice.kind, NoticeKind::Rebalance);

    let polls = stats.snapshot().polls;
    while stats.snapshot().polls < polls + 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(receiver.try_recv().is_err(), "emitted once");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops on shutdown")
        .unwrap();
    assert_eq!(stats.snapshot().notices, 1);
}

#[tokio::test]
async fn connect_errors_name_the_endpoint_and_path() {
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let err = NoticeWatcher::builder()
        .endpoint(&nowhere)
        .connect()
        .await
        .unwrap_err();
    match err {
        AwsError::Imds { endpoint, path, .. } => {
            assert_eq!(endpoint, nowhere);
            assert_eq!(path, "/latest/meta-data/instance-id");
        }
        other => panic!("unexpected {other:?}"),
    }

    let err = NoticeWatcher::builder()
        .endpoint("not a uri at all")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, AwsError::ImdsEndpoint { .. }), "{err:?}");
}
