//! API call budget of the monitor's steady state, counted by the SDK interceptor.

use std::time::{Duration, SystemTime};

use spotguard_core::ports::Cloud;
use spotguard_testkit_aws::{GroupSpec, TestCloud};

async fn groups(t: &TestCloud, count: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(count);
    for i in 0..count {
        let spec = if i % 2 == 0 {
            GroupSpec::spot(format!("pool-{i:03}-spot"), 0, 3, 1)
        } else {
            GroupSpec::on_demand(format!("pool-{i:03}-od"), 0, 3, 0)
        };
        t.moto.create_group(&spec).await;
        names.push(spec.name);
    }
    names
}

#[tokio::test]
async fn a_monitor_cycle_over_50_groups_costs_two_calls() {
    let t = TestCloud::start().await;
    let names = groups(&t, 50).await;
    t.proxy
        .add_failed_activity(&names[0], "InsufficientInstanceCapacity");
    t.proxy
        .add_failed_activity("not-configured", "InsufficientInstanceCapacity");
    let counter = t.cloud.counter().clone();

    for cycle in 1..=3u64 {
        let before = counter.snapshot();
        let described = t.cloud.describe_groups(&names).await.unwrap();
        let since = SystemTime::now() - Duration::from_secs(600);
        let activities = t.cloud.scaling_activities(&names, since).await.unwrap();
        let spent = counter.snapshot().since(&before);

        assert_eq!(described.len(), 50);
        assert_eq!(activities.len(), 1);
        assert_eq!(activities[0].group, names[0]);
        assert!(spent.total() <= 2, "cycle {cycle}: {spent:?}");
        assert_eq!(spent.get("DescribeAutoScalingGroups").operations, 1);
        assert_eq!(spent.get("DescribeScalingActivities").operations, 1);
        assert_eq!(counter.total(), 2 * cycle);
    }
    assert_eq!(counter.total_attempts(), 6, "no retries");
}

#[tokio::test]
async fn more_than_100_groups_are_described_in_batches_of_100() {
    let t = TestCloud::start().await;
    let names = groups(&t, 120).await;

    let described = t.cloud.describe_groups(&names).await.unwrap();

    assert_eq!(described.len(), 120);
    assert_eq!(described[119].name, names[119]);
    assert_eq!(
        t.cloud
            .counter()
            .snapshot()
            .get("DescribeAutoScalingGroups")
            .operations,
        2
    );
}
