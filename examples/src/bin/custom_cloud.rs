//! A `Cloud` of your own: Spot Guard over another capacity API than Auto Scaling (here an
//! in-memory "fleet" of pools with a target capacity each), driving phase 1 and the monitor.
//!
//! The story it runs, start to end, with no AWS account and no cluster:
//! 1. the spot pool has no capacity; a rebalance recommendation arrives for spot node 0;
//! 2. the engine raises the spot pool, sees the launch fail, falls back to the on-demand pool
//!    and drains the at-risk node;
//! 3. spot capacity comes back; the monitor waits until the spot pool has been healthy for the
//!    stability time, then drains and removes the on-demand node: the fallback is paid back.
//!
//! ```text
//! cargo run -p spotguard-examples --bin custom_cloud
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::executor::block_on;
use spotguard_core::memory::{AutoClock, MemoryCluster, MemoryLedgerStore};
use spotguard_core::model::{
    Activity, ActivityStatus, CapacityType, Group, HealthStatus, Instance, LifecycleState,
    SizeBounds,
};
use spotguard_core::{
    Clock, Cloud, CloudError, Config, Engine, EntryState, GroupPair, LocalScaleLock, Notice,
    NoticeKind, RebalanceOutcome, Replacement,
};

/// One pool of the fleet API.
struct Pool {
    bounds: SizeBounds,
    target: u32,
    instances: Vec<String>,
    spot: bool,
}

/// The capacity API: pools with a target capacity. A spot pool launches only while
/// `spot_available`; a launch that cannot be served is reported as a failed activity.
struct Fleet {
    state: Mutex<FleetState>,
    clock: AutoClock,
}

struct FleetState {
    pools: BTreeMap<String, Pool>,
    activities: Vec<Activity>,
    spot_available: bool,
    launched: u32,
}

impl Fleet {
    fn state(&self) -> std::sync::MutexGuard<'_, FleetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings each pool to its target, as the fleet service would.
    fn converge(&self, st: &mut FleetState) {
        let now = self.clock.now();
        let names: Vec<String> = st.pools.keys().cloned().collect();
        for name in names {
            loop {
                let pool = &st.pools[&name];
                if pool.instances.len() as u32 >= pool.target {
                    break;
                }
                if pool.spot && !st.spot_available {
                    st.activities
                        .push(activity(&name, ActivityStatus::Failed, now));
                    break;
                }
                st.launched += 1;
                let id = format!("i-{name}-{}", st.launched);
                st.pools.get_mut(&name).unwrap().instances.push(id);
                st.activities
                    .push(activity(&name, ActivityStatus::Successful, now));
            }
            let pool = st.pools.get_mut(&name).unwrap();
            let target = pool.target as usize;
            pool.instances.truncate(target);
        }
    }
}

fn activity(pool: &str, status: ActivityStatus, at: SystemTime) -> Activity {
    let message = (status == ActivityStatus::Failed)
        .then(|| "InsufficientInstanceCapacity: no spot capacity in this pool".to_string());
    Activity {
        id: format!(
            "{pool}-{}",
            at.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ),
        group: pool.to_string(),
        status,
        start: at,
        end: Some(at),
        description: "Launching a new instance".into(),
        status_message: message,
    }
}

#[async_trait]
impl Cloud for Fleet {
    async fn describe_groups(&self, names: &[String]) -> Result<Vec<Group>, CloudError> {
        let st = self.state();
        names
            .iter()
            .map(|name| {
                let pool = st.pools.get(name).ok_or_else(|| CloudError::UnknownGroup {
                    group: name.clone(),
                })?;
                Ok(Group {
                    name: name.clone(),
                    min: pool.bounds.min,
                    max: pool.bounds.max,
                    desired: pool.target,
                    instances: pool
                        .instances
                        .iter()
                        .map(|id| Instance {
                            id: id.clone(),
                            lifecycle: LifecycleState::InService,
                            health: HealthStatus::Healthy,
                        })
                        .collect(),
                    capacity_rebalance: false,
                })
            })
            .collect()
    }

    async fn set_desired_capacity(&self, group: &str, desired: u32) -> Result<(), CloudError> {
        let mut st = self.state();
        let pool = st
            .pools
            .get_mut(group)
            .ok_or_else(|| CloudError::UnknownGroup {
                group: group.to_string(),
            })?;
        // The same bounds check every Cloud makes.
        pool.bounds.check(group, desired)?;
        pool.target = desired;
        self.converge(&mut st);
        Ok(())
    }

    async fn terminate_instance(&self, instance: &str, decrement: bool) -> Result<(), CloudError> {
        let mut st = self.state();
        let (name, pool) = st
            .pools
            .iter_mut()
            .find(|(_, p)| p.instances.iter().any(|i| i == instance))
            .ok_or_else(|| CloudError::UnknownInstance {
                instance: instance.to_string(),
            })?;
        if decrement {
            pool.target = pool.bounds.decrement(name, pool.target)?;
        }
        pool.instances.retain(|i| i != instance);
        self.converge(&mut st);
        Ok(())
    }

    async fn scaling_activities(
        &self,
        groups: &[String],
        since: SystemTime,
    ) -> Result<Vec<Activity>, CloudError> {
        Ok(self
            .state()
            .activities
            .iter()
            .filter(|a| groups.contains(&a.group) && a.last_change() >= since)
            .cloned()
            .collect())
    }
}

/// Registers a node for every instance of the fleet and removes the nodes of gone instances,
/// as kubelets and the node lifecycle controller would.
fn sync_nodes(fleet: &Fleet, cluster: &MemoryCluster) {
    let live = fleet
        .state()
        .pools
        .values()
        .flat_map(|p| {
            let ct = if p.spot {
                CapacityType::Spot
            } else {
                CapacityType::OnDemand
            };
            p.instances.iter().map(move |i| (i.clone(), ct))
        })
        .collect();
    cluster.sync_instances(live);
}

fn main() {
    let pool = |target: u32, spot: bool, prefix: &str| Pool {
        bounds: SizeBounds { min: 0, max: 10 },
        target,
        instances: (0..target).map(|i| format!("i-{prefix}-{i}")).collect(),
        spot,
    };
    let fleet = Fleet {
        state: Mutex::new(FleetState {
            pools: BTreeMap::from([
                ("web-spot".to_string(), pool(3, true, "web-spot")),
                ("web-od".to_string(), pool(0, false, "web-od")),
            ]),
            activities: Vec::new(),
            spot_available: false,
            launched: 0,
        }),
        clock: AutoClock::default(),
    };
    let cluster = MemoryCluster::default();
    sync_nodes(&fleet, &cluster);
    cluster.add_pod("web-1", "node-i-web-spot-0", 500);
    let mut config = Config {
        groups: vec![GroupPair {
            spot: "web-spot".into(),
            on_demand: "web-od".into(),
        }],
        ..Config::default()
    };
    config.capacity_buffer.cpu_percent = 0;
    config.capacity_buffer.memory_percent = 0;
    let store = MemoryLedgerStore::default();
    let clock = &fleet.clock;
    let engine = Engine::new(
        config,
        &fleet,
        &cluster,
        clock,
        &store,
        LocalScaleLock::default(),
    );

    // 1-2. A rebalance recommendation while the spot pool has no capacity.
    let notice = Notice {
        instance_id: "i-web-spot-0".into(),
        kind: NoticeKind::Rebalance,
        notice_time: clock.now(),
    };
    let outcome = block_on(engine.handle_rebalance(&notice)).expect("phase 1");
    let RebalanceOutcome::Handled {
        replacement: Replacement::OnDemand { instance, entry },
        ..
    } = &outcome
    else {
        panic!("expected an on-demand fallback, got {outcome:?}");
    };
    println!("phase 1: spot had no capacity; {instance} stands in ({entry})");
    sync_nodes(&fleet, &cluster);

    // 3. Spot capacity comes back; the monitor pays the fallback back once it is safe.
    fleet.state().spot_available = true;
    fleet.converge(&mut fleet.state());
    sync_nodes(&fleet, &cluster);
    let mut last = String::new();
    for tick in 1..=60 {
        let report = block_on(engine.monitor_tick()).expect("monitor tick");
        sync_nodes(&fleet, &cluster);
        if !report.released.is_empty() {
            println!("monitor tick {tick}: released {:?}", report.released);
            break;
        }
        if let Some((id, verdict)) = report.waiting.first() {
            // The first reason, each time the monitor waits for another reason.
            if let Some(reason) = verdict.reasons().first() {
                let kind = format!("{:?}", std::mem::discriminant(reason));
                if kind != last {
                    println!("monitor tick {tick}: {id} waits: {reason}");
                    last = kind;
                }
            }
        } else if !report.draining.is_empty() {
            println!("monitor tick {tick}: draining {:?}", report.draining);
        }
        clock.advance(Duration::from_secs(30));
    }
    let ledger = store.ledger();
    let open = ledger
        .entries
        .iter()
        .filter(|e| e.state != EntryState::Released)
        .count();
    let od = fleet.state().pools["web-od"].target;
    println!("end: {open} open ledger entries, on-demand pool at {od}");
    assert_eq!((open, od), (0, 0), "the fallback was paid back");
}
