//! # spotguard-sim
//!
//! The simulator: Spot Guard's real engine, end to end, over an in-memory cloud and cluster
//! in virtual time. It backs `spotguard simulate`, the tests and the benchmarks, and needs no
//! AWS account and no cluster.
//!
//! - [`SimCloud`]: Auto Scaling groups with a launch delay (`Pending` → `InService`), scaling
//!   activities, spot capacity outages (launches fail with `InsufficientInstanceCapacity` and
//!   are retried), termination with or without decrement, interruptions.
//! - [`SimCluster`]: nodes that register when their instance is `InService` and get Ready
//!   later, Deployment pods recreated and scheduled by the same fit rules as the safety
//!   predicate, DaemonSet pods on every node, PDBs enforced on eviction.
//! - [`SimClock`]: virtual time; a simulated day takes as long as the work in it.
//! - [`simulate`] / [`compare`]: run a [`Scenario`] under Spot Guard and under two baselines
//!   computed by the same simulator — *all on-demand* and *no Spot Guard* (a plain termination
//!   handler: cordon and drain on the interruption notice, the group replaces the instance
//!   after EC2 took it).
//!
//! ```
//! use spotguard_sim::{compare, Scenario};
//! let comparison = compare(&Scenario::builtin(), &mut |_| {});
//! let sg = &comparison.spot_guard.summary;
//! assert_eq!(sg.pdb_violations, 0);
//! assert!(sg.cost_usd < comparison.all_on_demand.summary.cost_usd);
//! println!("{}", comparison.spot_guard.timeline_text());
//! println!("{}", comparison.table());
//! ```
//!
//! # Scenario files
//!
//! A scenario is a TOML file; unknown keys are errors that name the key and the line. Times
//! on the timeline (`at`) are offsets from the start, written `"HH:MM"`, `"HH:MM:SS"` or as a
//! duration (`"90m"`); durations are human-readable (`"90s"`, `"2m"`, `"3h 30m"`).
//!
//! ```toml
//! name = "interruption-wave"          # required
//! description = "..."                 # optional
//! duration = "12h"                    # simulated length (default "24h")
//!
//! [cloud]                             # optional, defaults shown
//! launch_delay = "90s"                # Pending → InService
//! launch_retry = "1m"                 # a group retries failed launches this often
//! termination_delay = "30s"           # Terminating → gone (the node leaves at once)
//! interruption_notice = "2m"          # lead time of an interruption notice
//!
//! [cluster]                           # optional, defaults shown
//! node_ready_delay = "40s"            # node registered → Ready
//! pod_start_delay = "15s"             # pod bound → Ready (counted by PDBs)
//! eviction_retry = "5s"               # a drain retries PDB-refused evictions this often
//!
//! [spotguard]                         # optional: Spot Guard's configuration, the same keys
//! [spotguard.timings]                 # as the daemon's file except `groups`
//! stability = "2m"
//!
//! [instance_types."m5.xlarge"]        # one table per type
//! cpu_millis = 4000                   # allocatable CPU
//! memory_mib = 15000                  # allocatable memory
//! max_pods = 58                       # default 110
//! spot_price = 0.0768                 # USD per hour
//! on_demand_price = 0.192             # USD per hour
//!
//! [[groups]]                          # Auto Scaling groups
//! name = "workers-spot"
//! capacity = "spot"                   # "spot" or "on-demand"
//! instance_type = "m5.xlarge"
//! min = 0                             # default 0
//! max = 20
//! desired = 10                        # InService at the start (default 0)
//!
//! [[groups]]
//! name = "workers-od"
//! capacity = "on-demand"
//! instance_type = "m5.xlarge"
//! max = 10
//! fallback_for = "workers-spot"       # makes the pair Spot Guard manages
//!
//! [[workloads]]                       # pods carry the label app = <name>
//! name = "web"
//! namespace = "default"               # default "default"
//! kind = "deployment"                 # "deployment" (default) or "daemonset"
//! replicas = 24                       # deployments only
//! cpu_millis = 500                    # requests of each pod
//! memory_mib = 512
//! node_selector = { "eks.amazonaws.com/capacityType" = "SPOT" }   # optional
//! labels = { tier = "frontend" }      # optional extra labels
//!
//! [[pdbs]]
//! name = "web"
//! workload = "web"                    # or selector = { app = "web" }
//! min_available = 20                  # Ready pods the budget keeps
//!
//! [[timeline]]
//! at = "01:00"
//! event = "rebalance"                 # rebalance recommendation(s)
//! group = "workers-spot"              # default: the only spot group
//! count = 3                           # default 1: the oldest InService instances not
//!                                     # noticed before
//! interruption_after = "10m"          # optional: the same instances are interrupted later
//!
//! [[timeline]]
//! at = "05:00"
//! event = "interruption"              # 2-minute notice, then EC2 reclaims the instance
//! count = 2
//!
//! [[timeline]]
//! at = "08:00"
//! event = "spot-outage"               # spot launches fail for `duration`
//! duration = "3h"
//!
//! [[timeline]]
//! at = "09:00"
//! event = "controller-restart"        # a new engine over the same ledger store
//! ```
//!
//! Nodes carry the labels `kubernetes.io/hostname`, `node.kubernetes.io/instance-type`,
//! `eks.amazonaws.com/capacityType` (`SPOT` / `ON_DEMAND`) and `eks.amazonaws.com/nodegroup`
//! (the group name), for node selectors.
//!
//! # What is measured
//!
//! - **cost**: instance-seconds by type times the spot or on-demand hourly price, from launch
//!   until the instance is gone.
//! - **pending pod-minutes**: the integral of Deployment pods without a node — evicted pods
//!   waiting for room, and pods lost with an interrupted node.
//! - **evictions**, **pods lost with their node**.
//! - **PDB violations**: pods lost while their budget was at or below `min_available` (an
//!   eviction never causes one: the budget refuses it).
//! - **peak nodes**: the most nodes in the cluster at once.

mod clock;
mod cloud;
mod cluster;
mod driver;
mod report;
mod scenario;
mod world;

pub use clock::{SimClock, Sleep};
pub use cloud::{SimCloud, INSUFFICIENT_CAPACITY};
pub use cluster::SimCluster;
pub use driver::{compare, simulate, simulate_with_progress, Progress, Strategy};
pub use report::{
    Comparison, LedgerEnd, NodeCount, RunReport, Sample, Source, Summary, TimelineEntry,
};
pub use scenario::{
    clock_text, Capacity, CloudSettings, ClusterSettings, EventKind, GroupSpec, InstanceType,
    PdbSpec, Scenario, ScenarioError, TimelineEvent, Workload, WorkloadKind, BUILTIN, EXAMPLES,
};
