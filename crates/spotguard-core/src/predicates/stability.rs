//! Stability of a spot group: healthy continuously for the minimum duration, no recent scaling
//! activity, and every spot instance's node Ready.

use std::time::SystemTime;

use super::{elapsed, Reason, Verdict};
use crate::config::Config;
use crate::model::{Activity, Group};
use crate::view::ClusterView;

/// Judges stability. `healthy_since` is when the monitor first saw the group healthy in the
/// current unbroken run of healthy observations (`None` when it is not healthy now).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use spotguard_core::config::Config;
/// use spotguard_core::model::Group;
/// use spotguard_core::predicates::{stability, Reason};
/// use spotguard_core::view::ClusterView;
/// let g = Group { name: "web-spot".into(), min: 0, max: 5, desired: 0, instances: vec![], capacity_rebalance: false };
/// let t0 = SystemTime::UNIX_EPOCH;
/// let v = stability(&g, &[], Some(t0), &ClusterView::default(), t0 + Duration::from_secs(60), &Config::default());
/// assert!(matches!(v.reasons(), [Reason::HealthyTooShort { .. }]));
/// ```
pub fn stability(
    group: &Group,
    activities: &[Activity],
    healthy_since: Option<SystemTime>,
    cluster: &ClusterView,
    now: SystemTime,
    config: &Config,
) -> Verdict {
    let required = config.timings.stability;
    let mut reasons = Vec::new();
    match healthy_since {
        None => reasons.push(Reason::NotHealthy {
            group: group.name.clone(),
        }),
        Some(since) if elapsed(now, since) < required => reasons.push(Reason::HealthyTooShort {
            group: group.name.clone(),
            healthy_for: elapsed(now, since),
            required,
        }),
        Some(_) => {}
    }
    if let Some(last) = activities
        .iter()
        .filter(|a| a.group == group.name)
        .map(Activity::last_change)
        .max()
        .filter(|last| elapsed(now, *last) < required)
    {
        reasons.push(Reason::RecentScalingActivity {
            group: group.name.clone(),
            ago: elapsed(now, last),
        });
    }
    for instance in group.instances.iter().filter(|i| i.is_serving()) {
        match cluster.node_for_instance(&instance.id) {
            None => reasons.push(Reason::InstanceWithoutNode {
                instance: instance.id.clone(),
            }),
            Some(node) if !node.ready => reasons.push(Reason::NodeNotReady {
                node: node.name.clone(),
            }),
            Some(_) => {}
        }
    }
    Verdict::from_reasons(reasons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ActivityStatus, ClusterSnapshot};
    use crate::predicates::fixtures::*;
    use std::time::Duration;

    fn cluster_for(g: &Group) -> ClusterSnapshot {
        ClusterSnapshot {
            nodes: g
                .instances
                .iter()
                .map(|i| {
                    let mut n = node(&format!("n-{}", i.id), 2000, 8);
                    n.instance_id = Some(i.id.clone());
                    n
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn stable_after_minimum_duration() {
        let g = group("s", 2, 2);
        let c = cluster_for(&g);
        let v = stability(
            &g,
            &[],
            Some(t(0)),
            &ClusterView::new(c.clone()),
            t(120),
            &Config::default(),
        );
        assert_eq!(v, Verdict::Go);
    }

    #[test]
    fn not_healthy() {
        let g = group("s", 2, 2);
        let v = stability(
            &g,
            &[],
            None,
            &ClusterView::new(cluster_for(&g)),
            t(0),
            &Config::default(),
        );
        assert_eq!(v.reasons(), [Reason::NotHealthy { group: "s".into() }]);
    }

    #[test]
    fn healthy_too_short() {
        let g = group("s", 2, 2);
        let v = stability(
            &g,
            &[],
            Some(t(0)),
            &ClusterView::new(cluster_for(&g)),
            t(90),
            &Config::default(),
        );
        assert_eq!(
            v.reasons(),
            [Reason::HealthyTooShort {
                group: "s".into(),
                healthy_for: Duration::from_secs(90),
                required: Duration::from_secs(120)
            }]
        );
        assert_eq!(
            v.to_string(),
            "wait: group s healthy for 1m 30s of the required 2m"
        );
    }

    #[test]
    fn recent_scaling_activity() {
        let g = group("s", 2, 2);
        let mut a = activity("s", ActivityStatus::Successful, t(100));
        a.end = Some(t(150));
        let v = stability(
            &g,
            &[a],
            Some(t(0)),
            &ClusterView::new(cluster_for(&g)),
            t(200),
            &Config::default(),
        );
        assert_eq!(
            v.reasons(),
            [Reason::RecentScalingActivity {
                group: "s".into(),
                ago: Duration::from_secs(50)
            }]
        );
    }

    #[test]
    fn spot_node_not_ready_or_missing() {
        let g = group("s", 2, 2);
        let mut c = cluster_for(&g);
        c.nodes[0].ready = false;
        c.nodes.pop();
        let v = stability(
            &g,
            &[],
            Some(t(0)),
            &ClusterView::new(c.clone()),
            t(500),
            &Config::default(),
        );
        assert_eq!(
            v.reasons(),
            [
                Reason::NodeNotReady {
                    node: "n-i-s-0".into()
                },
                Reason::InstanceWithoutNode {
                    instance: "i-s-1".into()
                }
            ]
        );
    }
}
