//! In-memory ports for the monitor benchmark: a cloud of spot and on-demand groups, a cluster
//! snapshot, a versioned ledger store and a settable clock. Reads answer from memory; every
//! mutating call is counted, so a benchmark can assert its steady state mutates nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use spotguard_core::config::{Config, DrainOptions, GroupPair};
use spotguard_core::ledger::{Entry, EntryKind, EntryState, Ledger};
use spotguard_core::model::*;
use spotguard_core::ports::*;
use spotguard_core::view::ClusterView;

/// Counts mutating calls made through any of the ports.
#[derive(Debug, Default)]
pub struct Mutations(AtomicUsize);

impl Mutations {
    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Mutating calls so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Auto Scaling groups held in memory; no scaling activities.
#[derive(Debug)]
pub struct MemCloud {
    groups: BTreeMap<String, Group>,
    /// Mutating calls (set desired capacity, terminate).
    pub mutations: Mutations,
}

#[async_trait]
impl Cloud for MemCloud {
    async fn describe_groups(&self, names: &[String]) -> Result<Vec<Group>, CloudError> {
        names
            .iter()
            .map(|n| {
                self.groups
                    .get(n)
                    .cloned()
                    .ok_or_else(|| CloudError::UnknownGroup { group: n.clone() })
            })
            .collect()
    }

    async fn set_desired_capacity(&self, _group: &str, _desired: u32) -> Result<(), CloudError> {
        self.mutations.add();
        Ok(())
    }

    async fn terminate_instance(
        &self,
        _instance: &str,
        _decrement: bool,
    ) -> Result<(), CloudError> {
        self.mutations.add();
        Ok(())
    }

    async fn scaling_activities(
        &self,
        _groups: &[String],
        _since: SystemTime,
    ) -> Result<Vec<Activity>, CloudError> {
        Ok(Vec::new())
    }
}

/// A fixed cluster snapshot, shared as a watch-backed cache shares it while the cluster does
/// not change.
#[derive(Debug)]
pub struct MemCluster {
    snapshot: Arc<ClusterView>,
    /// Mutating calls (taint, untaint, cordon, annotate, drain).
    pub mutations: Mutations,
}

#[async_trait]
impl Cluster for MemCluster {
    async fn snapshot(&self) -> Result<Arc<ClusterView>, ClusterError> {
        Ok(Arc::clone(&self.snapshot))
    }

    async fn taint(&self, _node: &str, _taint: &Taint) -> Result<(), ClusterError> {
        self.mutations.add();
        Ok(())
    }

    async fn untaint(&self, _node: &str, _key: &str) -> Result<(), ClusterError> {
        self.mutations.add();
        Ok(())
    }

    async fn set_unschedulable(
        &self,
        _node: &str,
        _unschedulable: bool,
    ) -> Result<(), ClusterError> {
        self.mutations.add();
        Ok(())
    }

    async fn annotate(
        &self,
        _node: &str,
        _key: &str,
        _value: Option<String>,
    ) -> Result<(), ClusterError> {
        self.mutations.add();
        Ok(())
    }

    async fn drain(
        &self,
        node: &str,
        _options: &DrainOptions,
    ) -> Result<DrainReport, ClusterError> {
        self.mutations.add();
        Ok(DrainReport {
            node: node.to_string(),
            pods: Vec::new(),
        })
    }
}

/// A clock that stands still until told to move; `sleep` returns at once.
#[derive(Debug)]
pub struct MemClock(Mutex<SystemTime>);

impl MemClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

#[async_trait]
impl Clock for MemClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn sleep(&self, _duration: Duration) {}
}

/// A versioned ledger in memory, with compare-and-swap saves.
#[derive(Debug, Default)]
pub struct MemStore {
    state: Mutex<(Ledger, u64)>,
    /// Saves.
    pub mutations: Mutations,
}

#[async_trait]
impl LedgerStore for MemStore {
    async fn load(&self) -> Result<Versioned<Ledger>, StoreError> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Versioned {
            value: st.0.clone(),
            version: Some(st.1.to_string()),
        })
    }

    async fn save(&self, ledger: &Ledger, expected: Option<String>) -> Result<String, StoreError> {
        self.mutations.add();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if expected != Some(st.1.to_string()) {
            return Err(StoreError::Conflict { expected });
        }
        st.0 = ledger.clone();
        st.1 += 1;
        Ok(st.1.to_string())
    }
}

/// Everything a monitor tick runs over.
#[derive(Debug)]
pub struct World {
    /// Configuration: one group pair per entry.
    pub config: Config,
    /// The cloud.
    pub cloud: MemCloud,
    /// The cluster.
    pub cluster: MemCluster,
    /// The clock, at the time the ledger entries were written.
    pub clock: MemClock,
    /// The ledger store, holding `pairs` active fallback entries.
    pub store: MemStore,
}

fn serving(id: String) -> Instance {
    Instance {
        id,
        lifecycle: LifecycleState::InService,
        health: HealthStatus::Healthy,
    }
}

/// A steady state for the monitor: `pairs` spot / on-demand group pairs over the cluster of
/// [`crate::cluster`] with `nodes` nodes (30 pods per node, `nodes / 5` PDBs). On-demand group
/// `od-k` holds the on-demand node `k`, whose fallback entry is Active in the ledger; spot group
/// `spot-k` holds an equal share of the spot nodes, all Ready and InService, with no scaling
/// activity. The capacity buffer is 99%, so after health and stability pass, safety waits:
/// every tick evaluates health, stability and safety for every entry and mutates nothing.
pub fn steady_world(nodes: usize, pairs: usize) -> World {
    assert!(nodes >= pairs * 2, "need at least two nodes per pair");
    let snapshot = crate::cluster(nodes, 30, nodes / 5, pairs);
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut config = Config::default();
    config.capacity_buffer.cpu_percent = 99;
    config.capacity_buffer.memory_percent = 99;
    let mut groups = BTreeMap::new();
    let mut ledger = Ledger::default();
    let spot_nodes: Vec<&Node> = snapshot.nodes[pairs..].iter().collect();
    let share = spot_nodes.len() / pairs;
    for k in 0..pairs {
        let (spot, od) = (format!("spot-{k}"), format!("od-{k}"));
        config.groups.push(GroupPair {
            spot: spot.clone(),
            on_demand: od.clone(),
        });
        let od_instance = snapshot.nodes[k]
            .instance_id
            .clone()
            .expect("synthetic nodes have instance ids");
        groups.insert(
            od.clone(),
            Group {
                name: od.clone(),
                min: 0,
                max: 10,
                desired: 1,
                instances: vec![serving(od_instance.clone())],
                capacity_rebalance: false,
            },
        );
        let spot_instances: Vec<Instance> = spot_nodes[k * share..(k + 1) * share]
            .iter()
            .filter_map(|n| n.instance_id.clone())
            .map(serving)
            .collect();
        groups.insert(
            spot.clone(),
            Group {
                name: spot.clone(),
                min: 0,
                max: 1_000,
                desired: spot_instances.len() as u32,
                instances: spot_instances,
                capacity_rebalance: false,
            },
        );
        ledger.next_id += 1;
        ledger.entries.push(Entry {
            id: format!("fb-{k}"),
            kind: EntryKind::Fallback,
            group: od,
            spot_group: spot,
            at_risk_instance: format!("i-gone-{k}"),
            instance: Some(od_instance),
            desired_before: 0,
            instances_before: Vec::new(),
            state: EntryState::Active,
            created_at: t0,
            updated_at: t0,
            note: "spot capacity unavailable; on-demand fallback launched".into(),
            payback: None,
            scale_downs: 0,
        });
    }
    World {
        config,
        cloud: MemCloud {
            groups,
            mutations: Mutations::default(),
        },
        cluster: MemCluster {
            snapshot: Arc::new(crate::grouped_view(&snapshot)),
            mutations: Mutations::default(),
        },
        clock: MemClock(Mutex::new(t0)),
        store: MemStore {
            state: Mutex::new((ledger, 1)),
            mutations: Mutations::default(),
        },
    }
}
