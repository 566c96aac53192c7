//! The monitor benchmark's world, over the core's in-memory ports ([`spotguard_core::memory`]):
//! a cloud of spot and on-demand groups, a cluster whose snapshot is shared until it changes,
//! a versioned ledger store and a virtual clock. Every mutating call is counted, so a
//! benchmark can assert its steady state mutates nothing.

use spotguard_core::config::{Config, GroupPair};
use spotguard_core::ledger::{Entry, EntryKind, EntryState, Ledger};
use spotguard_core::memory::{
    start_time, AutoClock, MemoryCloud, MemoryCluster, MemoryLedgerStore,
};
use spotguard_core::model::*;

/// Everything a monitor tick runs over.
#[derive(Debug)]
pub struct World {
    /// Configuration: one group pair per entry.
    pub config: Config,
    /// The cloud.
    pub cloud: MemoryCloud,
    /// The cluster.
    pub cluster: MemoryCluster,
    /// The clock, at the time the ledger entries were written.
    pub clock: AutoClock,
    /// The ledger store, holding `pairs` active fallback entries.
    pub store: MemoryLedgerStore,
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
    let t0 = start_time();
    let mut config = Config::default();
    config.capacity_buffer.cpu_percent = 99;
    config.capacity_buffer.memory_percent = 99;
    let mut groups = Vec::new();
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
        groups.push(Group {
            name: od.clone(),
            min: 0,
            max: 10,
            desired: 1,
            instances: vec![serving(od_instance.clone())],
            capacity_rebalance: false,
        });
        let spot_instances: Vec<Instance> = spot_nodes[k * share..(k + 1) * share]
            .iter()
            .filter_map(|n| n.instance_id.clone())
            .map(serving)
            .collect();
        groups.push(Group {
            name: spot.clone(),
            min: 0,
            max: 1_000,
            desired: spot_instances.len() as u32,
            instances: spot_instances,
            capacity_rebalance: false,
        });
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
        cloud: MemoryCloud::from_groups(groups),
        cluster: MemoryCluster::new(snapshot),
        clock: AutoClock::default(),
        store: MemoryLedgerStore::with_ledger(ledger),
    }
}
