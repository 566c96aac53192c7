//! Health of a spot group: InService == desired, no activity in progress, no failed activity
//! within the error window.

use std::time::SystemTime;

use super::{elapsed, Reason, Verdict};
use crate::config::Config;
use crate::model::{Activity, ActivityStatus, Group};

/// Judges the health of `group` from its description and its recent `activities` (activities
/// of other groups are ignored).
///
/// ```
/// use std::time::SystemTime;
/// use spotguard_core::config::Config;
/// use spotguard_core::model::Group;
/// use spotguard_core::predicates::{health, Reason, Verdict};
/// let g = Group { name: "web-spot".into(), min: 0, max: 5, desired: 1, instances: vec![], capacity_rebalance: false };
/// let v = health(&g, &[], SystemTime::UNIX_EPOCH, &Config::default());
/// assert_eq!(v, Verdict::Wait(vec![Reason::CapacityMismatch { group: "web-spot".into(), in_service: 0, desired: 1 }]));
/// ```
pub fn health(group: &Group, activities: &[Activity], now: SystemTime, config: &Config) -> Verdict {
    let mut reasons = Vec::new();
    let in_service = group.serving_count();
    if in_service != group.desired {
        reasons.push(Reason::CapacityMismatch {
            group: group.name.clone(),
            in_service,
            desired: group.desired,
        });
    }
    let window = config.timings.error_window;
    for a in activities.iter().filter(|a| a.group == group.name) {
        match a.status {
            ActivityStatus::InProgress => reasons.push(Reason::ActivityInProgress {
                group: group.name.clone(),
                description: a.description.clone(),
            }),
            ActivityStatus::Failed if elapsed(now, a.last_change()) < window => {
                reasons.push(Reason::RecentFailure {
                    group: group.name.clone(),
                    ago: elapsed(now, a.last_change()),
                    message: a.status_message.clone().unwrap_or_default(),
                })
            }
            _ => {}
        }
    }
    Verdict::from_reasons(reasons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predicates::fixtures::*;
    use std::time::Duration;

    #[test]
    fn healthy_group_is_go() {
        let g = group("s", 3, 3);
        assert_eq!(health(&g, &[], t(0), &Config::default()), Verdict::Go);
    }

    #[test]
    fn capacity_mismatch() {
        let g = group("s", 3, 2);
        let v = health(&g, &[], t(0), &Config::default());
        assert_eq!(
            v.reasons(),
            [Reason::CapacityMismatch {
                group: "s".into(),
                in_service: 2,
                desired: 3
            }]
        );
        assert_eq!(v.to_string(), "wait: group s has 2/3 instances InService");
    }

    #[test]
    fn unhealthy_instance_does_not_count() {
        let mut g = group("s", 2, 2);
        g.instances[1].health = crate::model::HealthStatus::Unhealthy;
        assert!(!health(&g, &[], t(0), &Config::default()).is_go());
    }

    #[test]
    fn activity_in_progress() {
        let g = group("s", 1, 1);
        let a = activity("s", ActivityStatus::InProgress, t(0));
        let v = health(&g, &[a], t(5), &Config::default());
        assert!(matches!(v.reasons(), [Reason::ActivityInProgress { group, .. }] if group == "s"));
    }

    #[test]
    fn failed_activity_within_window_only() {
        let g = group("s", 1, 1);
        let mut a = activity("s", ActivityStatus::Failed, t(0));
        a.end = Some(t(10));
        let config = Config::default();
        let v = health(&g, std::slice::from_ref(&a), t(70), &config);
        assert_eq!(
            v.reasons(),
            [Reason::RecentFailure {
                group: "s".into(),
                ago: Duration::from_secs(60),
                message: "We currently do not have sufficient capacity".into()
            }]
        );
        let later = t(10) + config.timings.error_window;
        assert!(health(&g, &[a], later, &config).is_go());
    }

    #[test]
    fn other_groups_activities_are_ignored() {
        let g = group("s", 1, 1);
        let a = activity("other", ActivityStatus::InProgress, t(0));
        assert!(health(&g, &[a], t(1), &Config::default()).is_go());
    }
}
