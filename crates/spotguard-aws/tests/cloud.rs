//! `AwsCloud` against moto in server mode, through the fault-injection proxy.

use std::time::{Duration, SystemTime};

use spotguard_aws::AwsError;
use spotguard_core::model::{ActivityStatus, HealthStatus, LifecycleState};
use spotguard_core::ports::{Cloud, CloudError};
use spotguard_testkit_aws::{ErrorReply, GroupSpec, TestCloud, Until};

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn unknown_group(group: &str) -> CloudError {
    CloudError::UnknownGroup {
        group: group.to_string(),
    }
}

const DESCRIBE: &str = "DescribeAutoScalingGroups";
const SET: &str = "SetDesiredCapacity";
const ACTIVITIES: &str = "DescribeScalingActivities";
const TERMINATE: &str = "TerminateInstanceInAutoScalingGroup";

#[tokio::test]
async fn describe_groups_maps_groups_in_one_call() {
    let t = TestCloud::start().await;
    t.moto
        .create_groups(&[
            GroupSpec::spot("web-spot", 1, 4, 2).with_capacity_rebalance(),
            GroupSpec::on_demand("web-od", 0, 3, 1),
        ])
        .await;

    let groups = t
        .cloud
        .describe_groups(&names(&["web-od", "web-spot", "web-od"]))
        .await
        .unwrap();

    assert_eq!(t.cloud.counter().snapshot().get(DESCRIBE).operations, 1);
    assert_eq!(
        groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        ["web-od", "web-spot"],
        "in the order asked, each once"
    );
    let od = &groups[0];
    assert_eq!((od.min, od.max, od.desired), (0, 3, 1));
    assert!(!od.capacity_rebalance);
    let spot = &groups[1];
    assert_eq!((spot.min, spot.max, spot.desired), (1, 4, 2));
    assert!(spot.capacity_rebalance);
    assert_eq!(spot.instances.len(), 2);
    for instance in &spot.instances {
        assert!(instance.id.starts_with("i-"), "{instance:?}");
        assert_eq!(instance.lifecycle, LifecycleState::InService);
        assert_eq!(instance.health, HealthStatus::Healthy);
    }
    assert_eq!(spot.serving_count(), 2);
}

#[tokio::test]
async fn unknown_groups_are_named() {
    let t = TestCloud::start().await;
    t.moto
        .create_group(&GroupSpec::spot("known", 0, 2, 0))
        .await;

    let err = t
        .cloud
        .describe_groups(&names(&["known", "missing-a", "missing-b"]))
        .await
        .unwrap_err();
    assert_eq!(err, unknown_group("missing-a"));

    // The start-up check lists every missing group, in the configured order.
    let err = t
        .cloud
        .check_groups(&names(&["missing-b", "known", "missing-a"]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AwsError::MissingGroups {
            groups: names(&["missing-b", "missing-a"])
        }
    );
    assert_eq!(
        err.to_string(),
        "auto scaling groups not found: missing-b, missing-a"
    );
    let ok = t.cloud.check_groups(&names(&["known"])).await.unwrap();
    assert_eq!(ok[0].name, "known");

    // Scaling an unknown group changes nothing and names it.
    let err = t
        .cloud
        .set_desired_capacity("missing-a", 1)
        .await
        .unwrap_err();
    assert_eq!(err, unknown_group("missing-a"));
    assert_eq!(t.cloud.counter().snapshot().get(SET).operations, 0);
}

#[tokio::test]
async fn set_desired_capacity_reuses_recent_bounds() {
    let t = TestCloud::start().await;
    t.moto.create_group(&GroupSpec::spot("g", 1, 5, 1)).await;
    let counter = t.cloud.counter().clone();

    // No bounds known yet: describe, then set.
    t.cloud.set_desired_capacity("g", 2).await.unwrap();
    let first = counter.snapshot();
    assert_eq!(first.get(DESCRIBE).operations, 1);
    assert_eq!(first.get(SET).operations, 1);
    let g = t.moto.group("g").await;
    assert_eq!(g.desired, 2);
    assert_eq!(g.instances.len(), 2);

    // Phase 1 reads the group, then sets desired + 1: the read's bounds are reused.
    let groups = t.cloud.describe_groups(&names(&["g"])).await.unwrap();
    let before = counter.snapshot();
    t.cloud
        .set_desired_capacity("g", groups[0].desired + 1)
        .await
        .unwrap();
    let spent = counter.snapshot().since(&before);
    assert_eq!(spent.total(), 1, "{spent:?}");
    assert_eq!(spent.get(SET).operations, 1);
    assert_eq!(t.moto.group("g").await.desired, 3);
}

#[tokio::test]
async fn out_of_bounds_capacity_makes_no_mutating_call() {
    let t = TestCloud::start().await;
    t.moto.create_group(&GroupSpec::spot("g", 1, 3, 2)).await;
    t.cloud.describe_groups(&names(&["g"])).await.unwrap();

    // moto would accept 4 > max 3; the cloud refuses it itself.
    let err = t.cloud.set_desired_capacity("g", 4).await.unwrap_err();
    assert_eq!(
        err,
        CloudError::AboveMax {
            group: "g".into(),
            desired: 4,
            max: 3
        }
    );
    let err = t.cloud.set_desired_capacity("g", 0).await.unwrap_err();
    assert_eq!(
        err,
        CloudError::BelowMin {
            group: "g".into(),
            desired: 0,
            min: 1
        }
    );
    let calls = t.cloud.counter().snapshot();
    assert_eq!(calls.get(SET).operations, 0);
    assert_eq!(t.proxy.received(SET), 0);
    assert_eq!(t.moto.group("g").await.desired, 2);

    // A refusal is always confirmed with fresh bounds: after the maximum was raised
    // elsewhere, the same value goes through.
    t.moto
        .client()
        .update_auto_scaling_group()
        .auto_scaling_group_name("g")
        .max_size(6)
        .send()
        .await
        .unwrap();
    t.cloud.set_desired_capacity("g", 4).await.unwrap();
    assert_eq!(t.moto.group("g").await.desired, 4);
}

#[tokio::test]
async fn terminate_instance_with_and_without_decrement() {
    let t = TestCloud::start().await;
    t.moto
        .create_group(&GroupSpec::on_demand("od", 1, 5, 3))
        .await;
    let ids = t.moto.group("od").await.instance_ids();

    t.cloud.terminate_instance(&ids[0], true).await.unwrap();
    let g = t.moto.group("od").await;
    assert_eq!(g.desired, 2, "decremented");
    assert!(!g.holds(&ids[0]));

    t.cloud.terminate_instance(&ids[1], false).await.unwrap();
    let g = t.moto.group("od").await;
    assert_eq!(g.desired, 2, "not decremented");
    assert!(!g.holds(&ids[1]));

    // Not in any group: named, and no terminate call.
    let before = t.cloud.counter().snapshot();
    let err = t
        .cloud
        .terminate_instance("i-0123456789abcdef0", true)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CloudError::UnknownInstance {
            instance: "i-0123456789abcdef0".into()
        }
    );
    assert_eq!(
        t.cloud
            .counter()
            .snapshot()
            .since(&before)
            .get(TERMINATE)
            .operations,
        0
    );

    // Decrementing at the minimum would break it (moto would allow it; AWS refuses).
    t.moto
        .create_group(&GroupSpec::on_demand("small", 1, 2, 1))
        .await;
    let only = t.moto.group("small").await.instance_ids();
    let err = t
        .cloud
        .terminate_instance(&only[0], true)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CloudError::BelowMin {
            group: "small".into(),
            desired: 0,
            min: 1
        }
    );
    assert_eq!(t.proxy.received(TERMINATE), 2);
    assert_eq!(t.moto.group("small").await.desired, 1);
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_into_exactly_one_scale_up() {
    let t = TestCloud::start().await;
    t.moto.create_group(&GroupSpec::spot("g", 1, 10, 2)).await;
    t.proxy.throttle(DESCRIBE, 1);
    let before = t.cloud.describe_groups(&names(&["g"])).await.unwrap()[0].desired;

    // Four failures, then success on the fifth and last attempt.
    t.proxy.throttle(SET, 2);
    t.proxy.server_error(SET, 2);
    t.cloud.set_desired_capacity("g", before + 1).await.unwrap();

    assert_eq!(t.moto.group("g").await.desired, before + 1, "exactly +1");
    assert_eq!(t.proxy.injected(SET), 4);
    assert_eq!(t.proxy.forwarded(SET), 1, "one effective call reached moto");
    let calls = t.cloud.counter().snapshot();
    assert_eq!(calls.get(SET).operations, 1);
    assert_eq!(calls.get(SET).attempts, 5);
    assert_eq!(calls.get(SET).failures, 0);
    assert_eq!(
        calls.get(DESCRIBE).attempts,
        2,
        "describe retried after throttling"
    );
}

#[tokio::test]
async fn permanent_failures_name_the_group_and_say_whether_to_retry() {
    let t = TestCloud::start().await;
    t.moto.create_group(&GroupSpec::spot("g", 1, 10, 2)).await;
    t.cloud.describe_groups(&names(&["g"])).await.unwrap();

    t.proxy.server_error(SET, u32::MAX);
    match t.cloud.set_desired_capacity("g", 3).await.unwrap_err() {
        CloudError::Api {
            operation,
            target,
            message,
            retryable,
            source,
            ..
        } => {
            assert_eq!(operation, SET);
            assert_eq!(target, "group g");
            assert!(message.contains("InternalFailure"), "{message}");
            assert!(retryable);
            // The SDK's own error is kept as the source, for an embedder to inspect.
            let source = source.expect("the SDK error is kept");
            let sdk = source
                .get()
                .downcast_ref::<aws_sdk_autoscaling::error::SdkError<
                    aws_sdk_autoscaling::operation::set_desired_capacity::SetDesiredCapacityError,
                    aws_sdk_autoscaling::config::http::HttpResponse,
                >>()
                .expect("an SdkError of SetDesiredCapacity");
            assert_eq!(sdk.raw_response().map(|r| r.status().as_u16()), Some(500));
        }
        other => panic!("unexpected {other:?}"),
    }
    let calls = t.cloud.counter().snapshot().get(SET);
    assert_eq!(
        (calls.operations, calls.attempts, calls.failures),
        (1, 5, 1)
    );

    t.proxy.clear();
    t.proxy.inject(
        SET,
        Some("g"),
        ErrorReply::validation("New SetDesiredCapacity value 3 is above max value 2"),
        1,
    );
    match t.cloud.set_desired_capacity("g", 3).await.unwrap_err() {
        CloudError::Api {
            target,
            message,
            retryable,
            ..
        } => {
            assert_eq!(target, "group g");
            assert!(
                message.starts_with("ValidationError: New SetDesiredCapacity"),
                "{message}"
            );
            assert!(!retryable);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        t.cloud.counter().snapshot().get(SET).attempts,
        6,
        "not retried"
    );
    assert_eq!(t.proxy.forwarded(SET), 0);
    assert_eq!(t.moto.group("g").await.desired, 2, "nothing changed");

    // Throttled on every attempt: retryable, and the batch of groups is named.
    t.proxy.throttle(DESCRIBE, u32::MAX);
    let before = t.cloud.counter().snapshot();
    let err = t
        .cloud
        .describe_groups(&names(&["g", "h"]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CloudError::Api { operation, target, message, retryable: true, source: Some(_) }
                if operation == DESCRIBE && target == "groups g, h" && message == "Throttling: Rate exceeded"
        ),
        "{err:?}"
    );
    let spent = t.cloud.counter().snapshot().since(&before).get(DESCRIBE);
    assert_eq!(
        (spent.operations, spent.attempts, spent.failures),
        (1, 5, 1)
    );
}

#[tokio::test]
async fn delayed_instances_show_as_pending() {
    let t = TestCloud::start().await;
    t.moto.create_group(&GroupSpec::spot("g", 1, 5, 1)).await;
    let existing = t.moto.group("g").await.instance_ids();
    t.cloud.set_desired_capacity("g", 2).await.unwrap();
    // The new instance stays Pending for the next two answers that hold the group.
    t.proxy
        .delay_in_service("g", &existing, Until::Responses(2));
    for _ in 0..2 {
        let g = &t.cloud.describe_groups(&names(&["g"])).await.unwrap()[0];
        assert_eq!(g.instances.len(), 2);
        assert_eq!(g.serving_count(), 1);
        let new = g.instances.iter().find(|i| i.id != existing[0]).unwrap();
        assert!(new.lifecycle.is_pending(), "{new:?}");
    }
    let g = &t.cloud.describe_groups(&names(&["g"])).await.unwrap()[0];
    assert_eq!(g.serving_count(), 2, "in service once the delay is over");
}

#[tokio::test]
async fn scaling_activities_of_one_or_many_groups() {
    let t = TestCloud::start().await;
    let now = SystemTime::now();
    let hour_ago = now - Duration::from_secs(3600);
    t.proxy.add_failed_activity(
        "a",
        "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available.",
    );
    t.proxy
        .add_failed_activity("b", "InsufficientInstanceCapacity");
    t.proxy
        .add_failed_activity("other", "InsufficientInstanceCapacity");
    t.proxy
        .add_activity("a", "Successful", hour_ago, Some(hour_ago), None);
    t.proxy
        .add_activity("a", "InProgress", now - Duration::from_secs(5), None, None);
    let since = now - Duration::from_secs(600);

    let one = t
        .cloud
        .scaling_activities(&names(&["a"]), since)
        .await
        .unwrap();
    assert_eq!(one.len(), 2, "{one:?}");
    assert!(one.iter().all(|a| a.group == "a"));
    let failed = one
        .iter()
        .find(|a| a.status == ActivityStatus::Failed)
        .unwrap();
    assert!(failed
        .status_message
        .as_deref()
        .unwrap()
        .contains("InsufficientInstanceCapacity"));
    assert!(failed.end.is_some());
    assert!(failed.start >= since);
    assert_eq!(failed.description, "Launching a new EC2 instance");
    let running = one
        .iter()
        .find(|a| a.status == ActivityStatus::InProgress)
        .unwrap();
    assert_eq!(running.end, None);

    let many = t
        .cloud
        .scaling_activities(&names(&["a", "b"]), since)
        .await
        .unwrap();
    let mut groups: Vec<&str> = many.iter().map(|a| a.group.as_str()).collect();
    groups.sort();
    assert_eq!(groups, ["a", "a", "b"], "other groups filtered out");

    let older = t
        .cloud
        .scaling_activities(&names(&["a"]), hour_ago - Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(older.len(), 3);
    assert_eq!(t.cloud.counter().snapshot().get(ACTIVITIES).operations, 3);
    assert!(t
        .cloud
        .scaling_activities(&[], since)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(t.cloud.counter().snapshot().get(ACTIVITIES).operations, 3);
}

#[tokio::test]
async fn scaling_activities_read_further_pages_only_when_needed() {
    let t = TestCloud::start().await;
    let now = SystemTime::now();
    // 150 activities, one a second, newest first: two pages of 100.
    for age in 0..150u64 {
        let start = now - Duration::from_secs(age);
        t.proxy
            .add_activity("g", "Successful", start, Some(start), None);
    }
    let counter = t.cloud.counter().clone();

    // (since, activities returned, calls so far): the first page is enough when it already
    // reaches back past `since`; otherwise the second page is read too.
    for (since, returned, calls) in [
        (now - Duration::from_millis(30_500), 31, 1),
        (now - Duration::from_secs(3600), 150, 3),
    ] {
        let activities = t
            .cloud
            .scaling_activities(&names(&["g", "h"]), since)
            .await
            .unwrap();
        assert_eq!(activities.len(), returned);
        assert_eq!(counter.snapshot().get(ACTIVITIES).operations, calls);
    }
}
