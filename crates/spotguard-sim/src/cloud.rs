//! The simulated cloud: Auto Scaling groups that behave like AWS's.
//!
//! - Raising desired capacity launches instances: `Pending` for the launch delay, then
//!   `InService`, with an `InProgress` → `Successful` scaling activity. While a spot outage lasts,
//!   a spot launch fails at once with an `InsufficientInstanceCapacity` activity and the group
//!   retries after `launch_retry`, as an ASG does.
//! - Lowering desired capacity below the instances a group has terminates the newest ones.
//! - `terminate_instance` with decrement lowers desired capacity; without, the group launches a
//!   replacement. An interrupted spot instance is terminated by EC2 and replaced the same way.
//! - Desired capacity above max or below min is refused ([`CloudError::AboveMax`],
//!   [`CloudError::BelowMin`]).
//!
//! [`SimCloud`] is the [`Cloud`] port over this state.

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;

use super::scenario::{Capacity, CloudSettings, InstanceType, Scenario};
use super::world::{Happening, Shared, World};
use spotguard_core::model::{
    Activity, ActivityStatus, Group, HealthStatus, Instance, InstanceId, LifecycleState, SizeBounds,
};
use spotguard_core::ports::{Cloud, CloudError};

/// The message of a spot launch that fails for lack of capacity, as Auto Scaling words it.
pub const INSUFFICIENT_CAPACITY: &str =
    "InsufficientInstanceCapacity: there is no Spot capacity available that matches your request";

/// One Auto Scaling group.
#[derive(Debug)]
pub(crate) struct GroupState {
    pub name: String,
    pub capacity: Capacity,
    pub instance_type: usize,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    /// Instance ids in launch order, leaving ones included until they are gone.
    pub members: Vec<InstanceId>,
    pub activities: Vec<Activity>,
    /// Nested spot outages in force.
    pub outages: u32,
    /// A launch retry is scheduled.
    pub retry_pending: bool,
    node_seq: u32,
}

impl GroupState {
    fn bounds(&self) -> SizeBounds {
        SizeBounds {
            min: self.min,
            max: self.max,
        }
    }
}

/// One instance.
#[derive(Debug)]
pub(crate) struct InstanceState {
    pub group: usize,
    pub lifecycle: LifecycleState,
    /// Node name it registers as.
    pub node: String,
    /// Index of its launch activity in the group's activities.
    launch_activity: Option<usize>,
    /// Index of its termination activity.
    termination_activity: Option<usize>,
}

/// The state of every group and instance.
#[derive(Debug)]
pub(crate) struct CloudState {
    pub settings: CloudSettings,
    pub types: Vec<(String, InstanceType)>,
    pub groups: Vec<GroupState>,
    by_name: HashMap<String, usize>,
    pub instances: HashMap<InstanceId, InstanceState>,
    next_instance: u64,
    next_activity: u64,
    /// Billed instances (launching, running or terminating) per instance type: spot, on-demand.
    pub billed: Vec<[u32; 2]>,
}

impl CloudState {
    /// Groups from the scenario, with no instances yet.
    pub fn new(scenario: &Scenario) -> Self {
        let types: Vec<(String, InstanceType)> = scenario
            .instance_types
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        let groups: Vec<GroupState> = scenario
            .groups
            .iter()
            .map(|g| GroupState {
                name: g.name.clone(),
                capacity: g.capacity,
                instance_type: types
                    .iter()
                    .position(|(n, _)| *n == g.instance_type)
                    .expect("validated instance type"),
                min: g.min,
                max: g.max,
                desired: g.desired,
                members: Vec::new(),
                activities: Vec::new(),
                outages: 0,
                retry_pending: false,
                node_seq: 0,
            })
            .collect();
        let by_name = groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.clone(), i))
            .collect();
        Self {
            settings: scenario.cloud.clone(),
            billed: vec![[0, 0]; types.len()],
            types,
            groups,
            by_name,
            instances: HashMap::new(),
            next_instance: 0,
            next_activity: 0,
        }
    }

    /// The index of a group.
    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    fn bill(&mut self, group: usize, delta: i32) {
        let g = &self.groups[group];
        let slot = match g.capacity {
            Capacity::Spot => 0,
            Capacity::OnDemand => 1,
        };
        let b = &mut self.billed[g.instance_type][slot];
        *b = b.saturating_add_signed(delta);
    }

    /// Current cost rate in USD per hour, and the instance counts (spot, on-demand).
    pub fn rate(&self) -> (f64, u32, u32) {
        let mut usd = 0.0;
        let (mut spot, mut od) = (0, 0);
        for ((_, t), [s, o]) in self.types.iter().zip(&self.billed) {
            usd += f64::from(*s) * t.spot_price + f64::from(*o) * t.on_demand_price;
            spot += s;
            od += o;
        }
        (usd, spot, od)
    }

    fn new_instance(&mut self, group: usize, lifecycle: LifecycleState) -> InstanceId {
        self.next_instance += 1;
        let id = format!("i-{:05}", self.next_instance);
        let g = &mut self.groups[group];
        g.node_seq += 1;
        let node = format!("{}-{}", g.name, g.node_seq);
        g.members.push(id.clone());
        self.instances.insert(
            id.clone(),
            InstanceState {
                group,
                lifecycle,
                node,
                launch_activity: None,
                termination_activity: None,
            },
        );
        self.bill(group, 1);
        id
    }

    /// An instance already InService at the start (no activity); returns it and its node.
    pub fn seed_instance(&mut self, group: usize) -> (InstanceId, String) {
        let id = self.new_instance(group, LifecycleState::InService);
        let node = self.instances[&id].node.clone();
        (id, node)
    }

    fn activity(
        &mut self,
        group: usize,
        status: ActivityStatus,
        now: SystemTime,
        description: String,
        status_message: Option<String>,
    ) -> usize {
        self.next_activity += 1;
        let g = &mut self.groups[group];
        let done = status != ActivityStatus::InProgress;
        g.activities.push(Activity {
            id: format!("act-{:06}", self.next_activity),
            group: g.name.clone(),
            status,
            start: now,
            end: done.then_some(now),
            description,
            status_message,
        });
        g.activities.len() - 1
    }

    fn finish_activity(&mut self, group: usize, index: usize, now: SystemTime) {
        if let Some(a) = self.groups[group].activities.get_mut(index) {
            a.status = ActivityStatus::Successful;
            a.end = Some(now);
        }
    }

    /// Instances of the group that count towards desired capacity (not leaving).
    pub fn live_count(&self, group: usize) -> u32 {
        self.groups[group]
            .members
            .iter()
            .filter(|id| !self.instances[*id].lifecycle.is_leaving())
            .count() as u32
    }

    /// The instance's lifecycle, when it still exists.
    pub fn lifecycle(&self, id: &str) -> Option<&LifecycleState> {
        self.instances.get(id).map(|i| &i.lifecycle)
    }
}

impl World {
    /// The ASG's control loop for one group: launch or terminate towards desired capacity.
    pub(crate) fn reconcile(&mut self, group: usize, now: SystemTime) {
        let live = self.cloud.live_count(group);
        let desired = self.cloud.groups[group].desired;
        if desired > live {
            let missing = desired - live;
            let g = &self.cloud.groups[group];
            if g.capacity == Capacity::Spot && g.outages > 0 {
                let (name, ty) = (g.name.clone(), self.cloud.types[g.instance_type].0.clone());
                self.cloud.activity(
                    group,
                    ActivityStatus::Failed,
                    now,
                    format!("Launching {missing} new EC2 instance(s) of type {ty}: failed"),
                    Some(INSUFFICIENT_CAPACITY.to_string()),
                );
                self.note_launch_failure(&name, now);
                if !self.cloud.groups[group].retry_pending {
                    self.cloud.groups[group].retry_pending = true;
                    let at = now + self.cloud.settings.launch_retry;
                    self.queue.push(at, Happening::LaunchRetry(group));
                }
                return;
            }
            let name = self.cloud.groups[group].name.clone();
            self.note_launch_success(&name);
            for _ in 0..missing {
                let id = self.cloud.new_instance(group, LifecycleState::Pending);
                let a = self.cloud.activity(
                    group,
                    ActivityStatus::InProgress,
                    now,
                    format!("Launching a new EC2 instance: {id}"),
                    None,
                );
                if let Some(i) = self.cloud.instances.get_mut(&id) {
                    i.launch_activity = Some(a);
                }
                let at = now + self.cloud.settings.launch_delay;
                self.queue.push(at, Happening::InService(id));
            }
        } else if desired < live {
            // Newest first, pending ones before those in service.
            let mut victims: Vec<InstanceId> = self.cloud.groups[group]
                .members
                .iter()
                .rev()
                .filter(|id| !self.cloud.instances[*id].lifecycle.is_leaving())
                .cloned()
                .collect();
            victims.sort_by_key(|id| !self.cloud.instances[id].lifecycle.is_pending());
            for id in victims.into_iter().take((live - desired) as usize) {
                self.begin_termination(&id, "desired capacity lowered", now);
            }
        }
    }

    /// A launch retry came due.
    pub(crate) fn retry_launch(&mut self, group: usize, now: SystemTime) {
        self.cloud.groups[group].retry_pending = false;
        self.reconcile(group, now);
    }

    /// A launching instance reached InService: its node registers (not Ready yet).
    pub(crate) fn instance_in_service(&mut self, id: &str, now: SystemTime) {
        let Some(inst) = self.cloud.instances.get_mut(id) else {
            return;
        };
        if inst.lifecycle != LifecycleState::Pending {
            return;
        }
        inst.lifecycle = LifecycleState::InService;
        let (group, activity, node) = (inst.group, inst.launch_activity, inst.node.clone());
        if let Some(a) = activity {
            self.cloud.finish_activity(group, a, now);
        }
        let g = &self.cloud.groups[group];
        let (capacity, itype, gname) = (g.capacity, g.instance_type, g.name.clone());
        self.join_node(&node, id, &gname, capacity, itype, now);
        let at = now + self.cluster.settings.node_ready_delay;
        self.queue.push(at, Happening::NodeReady(node));
    }

    /// Starts terminating an instance: it leaves its group's count at once, its node leaves
    /// the cluster (pods on it are lost), and it is gone after the termination delay.
    pub(crate) fn begin_termination(&mut self, id: &str, cause: &str, now: SystemTime) {
        let Some(inst) = self.cloud.instances.get_mut(id) else {
            return;
        };
        if inst.lifecycle.is_leaving() {
            return;
        }
        let was_pending = inst.lifecycle.is_pending();
        inst.lifecycle = LifecycleState::Terminating;
        let (group, launch, node) = (inst.group, inst.launch_activity, inst.node.clone());
        if was_pending {
            if let Some(a) = launch {
                self.cloud.finish_activity(group, a, now);
            }
        }
        let a = self.cloud.activity(
            group,
            ActivityStatus::InProgress,
            now,
            format!("Terminating EC2 instance: {id} ({cause})"),
            None,
        );
        if let Some(i) = self.cloud.instances.get_mut(id) {
            i.termination_activity = Some(a);
        }
        self.leave_node(&node, now);
        let gone_at = now + self.cloud.settings.termination_delay;
        self.queue
            .push(gone_at, Happening::TerminationDone(id.to_string()));
    }

    /// A terminating instance is gone: it leaves its group and stops being billed.
    pub(crate) fn termination_done(&mut self, id: &str, now: SystemTime) {
        let Some(inst) = self.cloud.instances.remove(id) else {
            return;
        };
        if let Some(a) = inst.termination_activity {
            self.cloud.finish_activity(inst.group, a, now);
        }
        self.cloud.groups[inst.group].members.retain(|m| m != id);
        self.cloud.bill(inst.group, -1);
    }

    /// A spot outage of the group begins or ends.
    pub(crate) fn set_outage(&mut self, group: usize, begins: bool, now: SystemTime) {
        let g = &mut self.cloud.groups[group];
        if begins {
            g.outages += 1;
        } else {
            g.outages = g.outages.saturating_sub(1);
            if g.outages == 0 && !g.retry_pending {
                self.reconcile(group, now);
            }
        }
    }

    fn describe_group(&self, group: usize) -> Group {
        let g = &self.cloud.groups[group];
        Group {
            name: g.name.clone(),
            min: g.min,
            max: g.max,
            desired: g.desired,
            instances: g
                .members
                .iter()
                .map(|id| Instance {
                    id: id.clone(),
                    lifecycle: self.cloud.instances[id].lifecycle.clone(),
                    health: HealthStatus::Healthy,
                })
                .collect(),
            capacity_rebalance: false,
        }
    }

    fn set_desired(&mut self, name: &str, desired: u32, now: SystemTime) -> Result<(), CloudError> {
        let group = self
            .cloud
            .group_index(name)
            .ok_or_else(|| CloudError::UnknownGroup {
                group: name.to_string(),
            })?;
        let g = &mut self.cloud.groups[group];
        g.bounds().check(name, desired)?;
        g.desired = desired;
        self.reconcile(group, now);
        Ok(())
    }

    fn terminate(&mut self, id: &str, decrement: bool, now: SystemTime) -> Result<(), CloudError> {
        let unknown = || CloudError::UnknownInstance {
            instance: id.to_string(),
        };
        let inst = self.cloud.instances.get(id).ok_or_else(unknown)?;
        if inst.lifecycle.is_leaving() {
            return Err(unknown());
        }
        let group = inst.group;
        let g = &mut self.cloud.groups[group];
        if decrement {
            g.desired = g.bounds().decrement(&g.name, g.desired)?;
        }
        let how = if decrement {
            "terminated by request, desired capacity decremented"
        } else {
            "terminated by request, to be replaced"
        };
        self.begin_termination(id, how, now);
        self.reconcile(group, now);
        Ok(())
    }
}

/// The [`Cloud`] port over the simulated groups.
#[derive(Clone)]
pub struct SimCloud {
    pub(crate) world: Shared,
}

impl std::fmt::Debug for SimCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimCloud")
    }
}

#[async_trait]
impl Cloud for SimCloud {
    async fn describe_groups(&self, names: &[String]) -> Result<Vec<Group>, CloudError> {
        let w = self.world.lock();
        names
            .iter()
            .map(|n| {
                w.cloud
                    .group_index(n)
                    .map(|g| w.describe_group(g))
                    .ok_or_else(|| CloudError::UnknownGroup { group: n.clone() })
            })
            .collect()
    }

    async fn set_desired_capacity(&self, group: &str, desired: u32) -> Result<(), CloudError> {
        let mut w = self.world.lock();
        let now = w.now();
        w.set_desired(group, desired, now)
    }

    async fn terminate_instance(&self, instance: &str, decrement: bool) -> Result<(), CloudError> {
        let mut w = self.world.lock();
        let now = w.now();
        w.terminate(instance, decrement, now)
    }

    async fn scaling_activities(
        &self,
        groups: &[String],
        since: SystemTime,
    ) -> Result<Vec<Activity>, CloudError> {
        let w = self.world.lock();
        let mut out = Vec::new();
        for n in groups {
            let g = w
                .cloud
                .group_index(n)
                .ok_or_else(|| CloudError::UnknownGroup { group: n.clone() })?;
            out.extend(
                w.cloud.groups[g]
                    .activities
                    .iter()
                    .filter(|a| a.status == ActivityStatus::InProgress || a.last_change() >= since)
                    .cloned(),
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::executor::block_on;

    use super::*;
    use crate::scenario::fixtures::small;
    use crate::world::Shared;

    fn cloud(world: &Shared) -> SimCloud {
        SimCloud {
            world: world.clone(),
        }
    }

    fn group(world: &Shared, name: &str) -> Group {
        block_on(cloud(world).describe_groups(&[name.to_string()])).unwrap()[0].clone()
    }

    fn after(world: &Shared, secs: u64) {
        let mut w = world.lock();
        let to = w.now() + Duration::from_secs(secs);
        w.run_until(to);
    }

    #[test]
    fn desired_capacity_outside_the_bounds_is_refused() {
        let world = World::seeded(&small(""));
        let c = cloud(&world);
        assert_eq!(
            block_on(c.set_desired_capacity("s", 5)),
            Err(CloudError::AboveMax {
                group: "s".into(),
                desired: 5,
                max: 4
            })
        );
        assert!(matches!(
            block_on(c.set_desired_capacity("s", 0)),
            Err(CloudError::BelowMin { .. })
        ));
        assert!(matches!(
            block_on(c.describe_groups(&["nope".into()])),
            Err(CloudError::UnknownGroup { .. })
        ));
        assert_eq!(group(&world, "s").desired, 2, "nothing changed");
    }

    #[test]
    fn a_launch_is_pending_then_in_service_and_its_node_gets_ready() {
        let world = World::seeded(&small(""));
        block_on(cloud(&world).set_desired_capacity("s", 3)).unwrap();
        let g = group(&world, "s");
        assert_eq!(g.instances.len(), 3);
        assert_eq!(g.instances[2].lifecycle, LifecycleState::Pending);
        let since = world.lock().now();
        let acts = block_on(cloud(&world).scaling_activities(&["s".into()], since)).unwrap();
        assert_eq!(acts.len(), 1);
        assert_eq!(acts[0].status, ActivityStatus::InProgress);

        after(&world, 90);
        let g = group(&world, "s");
        assert_eq!(g.serving_count(), 3);
        let acts = block_on(cloud(&world).scaling_activities(&["s".into()], since)).unwrap();
        assert_eq!(acts[0].status, ActivityStatus::Successful);
        let node = world.lock().cluster.snapshot(since).nodes[2].clone();
        assert!(!node.ready, "registered, not Ready yet");
        after(&world, 40);
        let now = world.lock().now();
        assert!(world.lock().cluster.snapshot(now).nodes[2].ready);
    }

    #[test]
    fn spot_launches_fail_during_an_outage_and_are_retried() {
        let world = World::seeded(&small(""));
        let (g, start) = {
            let mut w = world.lock();
            let g = w.cloud.group_index("s").unwrap();
            let now = w.now();
            w.set_outage(g, true, now);
            (g, now)
        };
        block_on(cloud(&world).set_desired_capacity("s", 3)).unwrap();
        let acts = block_on(cloud(&world).scaling_activities(&["s".into()], start)).unwrap();
        assert_eq!(acts.len(), 1);
        assert_eq!(acts[0].status, ActivityStatus::Failed);
        assert_eq!(
            acts[0].status_message.as_deref(),
            Some(INSUFFICIENT_CAPACITY)
        );
        after(&world, 60);
        let acts = block_on(cloud(&world).scaling_activities(&["s".into()], start)).unwrap();
        assert_eq!(acts.len(), 2, "retried after launch_retry");
        {
            let mut w = world.lock();
            let now = w.now();
            w.set_outage(g, false, now);
        }
        after(&world, 60 + 90);
        assert_eq!(group(&world, "s").serving_count(), 3);
        // On-demand launches never fail.
        block_on(cloud(&world).set_desired_capacity("o", 1)).unwrap();
        after(&world, 90);
        assert_eq!(group(&world, "o").serving_count(), 1);
    }

    #[test]
    fn terminate_with_and_without_decrement() {
        let world = World::seeded(&small(""));
        let ids = group(&world, "s").instance_ids();
        block_on(cloud(&world).terminate_instance(&ids[0], false)).unwrap();
        let g = group(&world, "s");
        assert_eq!(g.desired, 2);
        assert!(!g.holds(&ids[0]));
        assert_eq!(
            g.instances
                .iter()
                .filter(|i| i.lifecycle.is_pending())
                .count(),
            1,
            "a replacement is launching"
        );
        after(&world, 120);
        assert_eq!(group(&world, "s").instances.len(), 2, "the old one is gone");

        block_on(cloud(&world).terminate_instance(&ids[1], true)).unwrap();
        let g = group(&world, "s");
        assert_eq!(g.desired, 1);
        assert!(!g.instances.iter().any(|i| i.lifecycle.is_pending()));
        assert_eq!(
            block_on(cloud(&world).terminate_instance(&ids[1], true)),
            Err(CloudError::UnknownInstance {
                instance: ids[1].clone()
            })
        );
        let g = group(&world, "s");
        let last = g
            .instances
            .iter()
            .find(|i| g.holds(&i.id))
            .unwrap()
            .id
            .clone();
        assert!(matches!(
            block_on(cloud(&world).terminate_instance(&last, true)),
            Err(CloudError::BelowMin { .. })
        ));
    }

    #[test]
    fn billing_counts_launching_and_running_instances() {
        let world = World::seeded(&small(""));
        assert_eq!(world.lock().cloud.rate(), (0.04, 2, 0));
        block_on(cloud(&world).set_desired_capacity("o", 1)).unwrap();
        let (usd, spot, od) = world.lock().cloud.rate();
        assert!((usd - 0.09).abs() < 1e-9);
        assert_eq!((spot, od), (2, 1));
    }
}
