//! Scenario files: the cluster, its Auto Scaling groups, prices, workloads, PDBs and a
//! timeline of what EC2 does to it. The schema is documented in [`crate`] and in
//! `docs/scenarios.md`.
//!
//! ```
//! use spotguard_sim::Scenario;
//! let s = Scenario::from_toml(r#"
//!     name = "tiny"
//!     duration = "1h"
//!     [instance_types."m5.large"]
//!     cpu_millis = 2000
//!     memory_mib = 8192
//!     spot_price = 0.04
//!     on_demand_price = 0.096
//!     [[groups]]
//!     name = "web-spot"
//!     capacity = "spot"
//!     instance_type = "m5.large"
//!     max = 5
//!     desired = 2
//!     [[groups]]
//!     name = "web-od"
//!     capacity = "on-demand"
//!     instance_type = "m5.large"
//!     max = 5
//!     fallback_for = "web-spot"
//!     [[timeline]]
//!     at = "00:10"
//!     event = "rebalance"
//! "#, "tiny.toml").unwrap();
//! assert_eq!(s.engine_config().groups[0].on_demand, "web-od");
//! assert_eq!(s.timeline[0].at.as_secs(), 600);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use spotguard_core::config::{Config, GroupPair};

/// The built-in scenario `spotguard simulate` runs when no file is given.
pub const BUILTIN: &str = include_str!("../scenarios/mixed-day.toml");

/// The example scenarios shipped with Spot Guard, by name (the file stem under
/// `crates/spotguard-sim/scenarios/`).
pub const EXAMPLES: &[(&str, &str)] = &[
    ("mixed-day", BUILTIN),
    ("quiet-day", include_str!("../scenarios/quiet-day.toml")),
    (
        "interruption-wave",
        include_str!("../scenarios/interruption-wave.toml"),
    ),
    (
        "spot-drought",
        include_str!("../scenarios/spot-drought.toml"),
    ),
];

/// A scenario that could not be read, parsed or validated. Every variant names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {file}: {message}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        message: String,
    },
    /// The file is not valid TOML for the schema (unknown field, wrong type, bad duration).
    #[error("scenario {file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message, which names the field and the line.
        message: String,
    },
    /// A value is legal TOML but makes no sense (unknown group, min above max, ...).
    #[error("scenario {file}: {field}: {problem}")]
    Invalid {
        /// The file.
        file: String,
        /// Dotted path of the field (`timeline[2].group`).
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// No built-in example has this name.
    #[error("no example scenario named {name:?} (known: {known})")]
    UnknownExample {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
}

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, shown in reports.
    pub name: String,
    /// What the scenario shows.
    #[serde(default)]
    pub description: String,
    /// Simulated length (default `24h`).
    #[serde(default = "default_duration", with = "humantime_serde")]
    pub duration: Duration,
    /// How the simulated Auto Scaling behaves.
    #[serde(default)]
    pub cloud: CloudSettings,
    /// How the simulated Kubernetes cluster behaves.
    #[serde(default)]
    pub cluster: ClusterSettings,
    /// Spot Guard's configuration, with the same keys as the daemon's configuration file
    /// except `groups`, which come from the `fallback_for` keys of [`Scenario::groups`].
    #[serde(default)]
    pub spotguard: Config,
    /// Instance types by name.
    pub instance_types: BTreeMap<String, InstanceType>,
    /// Auto Scaling groups.
    pub groups: Vec<GroupSpec>,
    /// Workloads (Deployments and DaemonSets).
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// PodDisruptionBudgets.
    #[serde(default)]
    pub pdbs: Vec<PdbSpec>,
    /// What EC2 does, and when.
    #[serde(default)]
    pub timeline: Vec<TimelineEvent>,
}

fn default_duration() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Behaviour of the simulated Auto Scaling groups and EC2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudSettings {
    /// From launch (`Pending`) to `InService` (default `90s`).
    #[serde(with = "humantime_serde")]
    pub launch_delay: Duration,
    /// A group retries a failed launch after this long (default `1m`).
    #[serde(with = "humantime_serde")]
    pub launch_retry: Duration,
    /// From `Terminating` to gone (default `30s`); the node leaves the cluster at once.
    #[serde(with = "humantime_serde")]
    pub termination_delay: Duration,
    /// Lead time of a spot interruption notice (default `2m`, as EC2 gives).
    #[serde(with = "humantime_serde")]
    pub interruption_notice: Duration,
}

impl Default for CloudSettings {
    fn default() -> Self {
        Self {
            launch_delay: Duration::from_secs(90),
            launch_retry: Duration::from_secs(60),
            termination_delay: Duration::from_secs(30),
            interruption_notice: Duration::from_secs(120),
        }
    }
}

/// Behaviour of the simulated cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// From `InService` (the node registers) to the node being Ready (default `40s`).
    #[serde(with = "humantime_serde")]
    pub node_ready_delay: Duration,
    /// From a pod being bound to a node to it being Ready, which is when PDBs count it
    /// (default `15s`).
    #[serde(with = "humantime_serde")]
    pub pod_start_delay: Duration,
    /// A drain retries evictions a PDB refused after this long (default `5s`, as
    /// `kubectl drain` does).
    #[serde(with = "humantime_serde")]
    pub eviction_retry: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            node_ready_delay: Duration::from_secs(40),
            pod_start_delay: Duration::from_secs(15),
            eviction_retry: Duration::from_secs(5),
        }
    }
}

/// An EC2 instance type: allocatable resources and hourly prices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    /// Allocatable CPU in millicores.
    pub cpu_millis: u64,
    /// Allocatable memory in MiB.
    pub memory_mib: u64,
    /// Pod slots (default 110).
    #[serde(default = "default_max_pods")]
    pub max_pods: u64,
    /// Spot price in USD per hour.
    pub spot_price: f64,
    /// On-demand price in USD per hour.
    pub on_demand_price: f64,
}

fn default_max_pods() -> u64 {
    110
}

/// Spot or on-demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capacity {
    /// Spot instances.
    Spot,
    /// On-demand instances.
    OnDemand,
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Spot => "spot",
            Self::OnDemand => "on-demand",
        })
    }
}

/// An Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Group name.
    pub name: String,
    /// Purchase option of its instances.
    pub capacity: Capacity,
    /// Instance type (a key of `instance_types`).
    pub instance_type: String,
    /// Minimum size (default 0).
    #[serde(default)]
    pub min: u32,
    /// Maximum size.
    pub max: u32,
    /// Desired capacity at the start; that many instances are InService then (default 0).
    #[serde(default)]
    pub desired: u32,
    /// On an on-demand group: the spot group it stands in for. This makes the pair Spot Guard
    /// manages.
    #[serde(default)]
    pub fallback_for: Option<String>,
}

/// How a workload's pods are run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// A Deployment: `replicas` pods, recreated and rescheduled when evicted or lost.
    #[default]
    Deployment,
    /// A DaemonSet: one pod on every node, never evicted.
    Daemonset,
}

/// A workload. Its pods carry the label `app = <name>` plus `labels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Name.
    pub name: String,
    /// Namespace (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Deployment (default) or DaemonSet.
    #[serde(default)]
    pub kind: WorkloadKind,
    /// Pods of a Deployment.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// CPU request of each pod, in millicores.
    pub cpu_millis: u64,
    /// Memory request of each pod, in MiB.
    pub memory_mib: u64,
    /// `spec.nodeSelector` (node labels: `eks.amazonaws.com/capacityType`,
    /// `node.kubernetes.io/instance-type`, `eks.amazonaws.com/nodegroup`).
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Extra pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".into()
}

/// A PodDisruptionBudget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdbSpec {
    /// Name.
    pub name: String,
    /// Namespace (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Selects the pods of this workload (`app = <workload>`); give this or `selector`.
    #[serde(default)]
    pub workload: Option<String>,
    /// `matchLabels`; give this or `workload`.
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// Ready pods the budget keeps; evictions that would go below are refused, and a
    /// termination that does is counted as a PDB violation.
    pub min_available: u32,
}

impl PdbSpec {
    /// The labels the budget selects on.
    pub fn match_labels(&self) -> BTreeMap<String, String> {
        match (&self.selector, &self.workload) {
            (Some(s), _) => s.clone(),
            (None, Some(w)) => BTreeMap::from([("app".to_string(), w.clone())]),
            (None, None) => BTreeMap::new(),
        }
    }
}

/// What happens at a point of the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EventKind {
    /// EC2 sends rebalance recommendations to `count` instances of the group.
    Rebalance,
    /// EC2 sends `count` instances of the group a 2-minute interruption notice, then
    /// terminates them.
    Interruption,
    /// Spot launches of the group fail with `InsufficientInstanceCapacity` for `duration`.
    SpotOutage,
    /// Spot Guard restarts: a new engine over the same ledger store, which recovers it.
    ControllerRestart,
}

/// One entry of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineEvent {
    /// When, from the start: `"HH:MM"`, `"HH:MM:SS"` or a duration such as `"90m"`.
    #[serde(with = "offset")]
    pub at: Duration,
    /// What happens.
    pub event: EventKind,
    /// The spot group (default: the only spot group).
    #[serde(default)]
    pub group: Option<String>,
    /// How many instances (default 1). The oldest InService instances not noticed before are
    /// picked.
    #[serde(default)]
    pub count: Option<u32>,
    /// `rebalance` only: the same instances get an interruption notice this long after the
    /// recommendation.
    #[serde(default, with = "humantime_serde")]
    pub interruption_after: Option<Duration>,
    /// `spot-outage` only: how long spot capacity stays unavailable.
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
}

/// `at` offsets: `HH:MM`, `HH:MM:SS` or a humantime duration.
mod offset {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::clock_text(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        if t.contains(':') {
            let parts: Vec<&str> = t.split(':').collect();
            let nums: Option<Vec<u64>> = parts.iter().map(|p| p.parse::<u64>().ok()).collect();
            match nums.as_deref() {
                Some([h, m]) if *m < 60 => Ok(Duration::from_secs(h * 3600 + m * 60)),
                Some([h, m, s]) if *m < 60 && *s < 60 => {
                    Ok(Duration::from_secs(h * 3600 + m * 60 + s))
                }
                _ => Err(format!(
                    "invalid time {text:?}: expected HH:MM, HH:MM:SS or a duration such as \"90m\""
                )),
            }
        } else {
            humantime::parse_duration(t).map_err(|e| {
                format!(
                    "invalid time {text:?}: {e}; expected HH:MM, HH:MM:SS or a duration such as \"90m\""
                )
            })
        }
    }
}

/// Formats an offset from the start as `HH:MM:SS` (hours may exceed 24).
pub fn clock_text(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl Scenario {
    /// Parses and validates a scenario; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        scenario.validate(file)?;
        Ok(scenario)
    }

    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text, &file)
    }

    /// The built-in scenario (`crates/spotguard-sim/scenarios/mixed-day.toml`).
    pub fn builtin() -> Self {
        Self::from_toml(BUILTIN, "crates/spotguard-sim/scenarios/mixed-day.toml")
            .expect("the built-in scenario is valid")
    }

    /// One of the shipped example scenarios by name (`quiet-day`, `interruption-wave`,
    /// `spot-drought`, `mixed-day`).
    pub fn example(name: &str) -> Result<Self, ScenarioError> {
        let (stem, text) = EXAMPLES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            ScenarioError::UnknownExample {
                name: name.to_string(),
                known: EXAMPLES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })?;
        Self::from_toml(text, &format!("crates/spotguard-sim/scenarios/{stem}.toml"))
    }

    /// Spot Guard's configuration for this scenario: `[spotguard]` with the group pairs.
    pub fn engine_config(&self) -> Config {
        let mut config = self.spotguard.clone();
        config.groups = self
            .groups
            .iter()
            .filter_map(|g| {
                g.fallback_for.as_ref().map(|spot| GroupPair {
                    spot: spot.clone(),
                    on_demand: g.name.clone(),
                })
            })
            .collect();
        config
    }

    /// The group with this name.
    pub fn group(&self, name: &str) -> Option<&GroupSpec> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The spot group a timeline event is about.
    pub fn event_group(&self, event: &TimelineEvent) -> Option<&GroupSpec> {
        match &event.group {
            Some(name) => self.group(name),
            None => {
                let mut spot = self.groups.iter().filter(|g| g.capacity == Capacity::Spot);
                match (spot.next(), spot.next()) {
                    (Some(g), None) => Some(g),
                    _ => None,
                }
            }
        }
    }

    /// Checks everything the parser cannot: references, bounds, event fields.
    pub fn validate(&self, file: &str) -> Result<(), ScenarioError> {
        let invalid = |field: String, problem: String| ScenarioError::Invalid {
            file: file.to_string(),
            field,
            problem,
        };
        if self.duration.is_zero() {
            return Err(invalid(
                "duration".into(),
                "must be greater than zero".into(),
            ));
        }
        for (name, t) in &self.instance_types {
            let field = |f: &str| format!("instance_types.{name:?}.{f}");
            if t.cpu_millis == 0 || t.memory_mib == 0 || t.max_pods == 0 {
                return Err(invalid(
                    field("cpu_millis"),
                    "cpu_millis, memory_mib and max_pods must be greater than zero".into(),
                ));
            }
            for (f, p) in [
                ("spot_price", t.spot_price),
                ("on_demand_price", t.on_demand_price),
            ] {
                if !p.is_finite() || p < 0.0 {
                    return Err(invalid(field(f), format!("{p} is not a price")));
                }
            }
        }
        let mut names = BTreeSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            let field = |f: &str| format!("groups[{i}].{f}");
            if g.name.trim().is_empty() {
                return Err(invalid(field("name"), "group name is empty".into()));
            }
            if !names.insert(g.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    format!("group {:?} is listed twice", g.name),
                ));
            }
            if !self.instance_types.contains_key(&g.instance_type) {
                return Err(invalid(
                    field("instance_type"),
                    format!(
                        "no instance type {:?} in [instance_types] (known: {})",
                        g.instance_type,
                        self.instance_types
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if g.min > g.max {
                return Err(invalid(
                    field("min"),
                    format!("min {} is above max {}", g.min, g.max),
                ));
            }
            if g.desired < g.min || g.desired > g.max {
                return Err(invalid(
                    field("desired"),
                    format!(
                        "desired {} is outside min {} .. max {}",
                        g.desired, g.min, g.max
                    ),
                ));
            }
        }
        for (i, g) in self.groups.iter().enumerate() {
            let Some(spot) = &g.fallback_for else {
                continue;
            };
            let field = format!("groups[{i}].fallback_for");
            if g.capacity != Capacity::OnDemand {
                return Err(invalid(
                    field,
                    "only an on-demand group can be a fallback".into(),
                ));
            }
            match self.group(spot) {
                Some(s) if s.capacity == Capacity::Spot => {}
                Some(_) => return Err(invalid(field, format!("{spot:?} is not a spot group"))),
                None => return Err(invalid(field, format!("no group named {spot:?}"))),
            }
        }
        if let Err(e) = self.engine_config().validate() {
            return Err(invalid(
                format!("spotguard.{}", e.field),
                format!("{} ({})", e.problem, e.value),
            ));
        }
        if !self.spotguard.groups.is_empty() {
            return Err(invalid(
                "spotguard.groups".into(),
                "pairs come from the fallback_for key of on-demand groups; remove this".into(),
            ));
        }

        let mut workloads = BTreeSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let field = |f: &str| format!("workloads[{i}].{f}");
            if !workloads.insert((w.namespace.as_str(), w.name.as_str())) {
                return Err(invalid(
                    field("name"),
                    format!("workload {}/{} is listed twice", w.namespace, w.name),
                ));
            }
            match (w.kind, w.replicas) {
                (WorkloadKind::Deployment, None | Some(0)) => {
                    return Err(invalid(
                        field("replicas"),
                        "a deployment needs replicas of at least 1".into(),
                    ))
                }
                (WorkloadKind::Daemonset, Some(_)) => {
                    return Err(invalid(
                        field("replicas"),
                        "a daemonset runs one pod per node and takes no replicas".into(),
                    ))
                }
                _ => {}
            }
            let fits = self
                .instance_types
                .values()
                .any(|t| t.cpu_millis >= w.cpu_millis && t.memory_mib >= w.memory_mib);
            if !fits {
                return Err(invalid(
                    field("cpu_millis"),
                    format!(
                        "a pod requesting {}m CPU and {}Mi memory fits on no instance type",
                        w.cpu_millis, w.memory_mib
                    ),
                ));
            }
        }
        for (i, p) in self.pdbs.iter().enumerate() {
            let field = |f: &str| format!("pdbs[{i}].{f}");
            match (&p.workload, &p.selector) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(invalid(
                        field("workload"),
                        "give exactly one of workload and selector".into(),
                    ))
                }
                (Some(w), None) => {
                    if !self
                        .workloads
                        .iter()
                        .any(|x| &x.name == w && x.namespace == p.namespace)
                    {
                        return Err(invalid(
                            field("workload"),
                            format!("no workload {}/{w}", p.namespace),
                        ));
                    }
                }
                (None, Some(_)) => {}
            }
            let labels = p.match_labels();
            let mut selected = 0u32;
            for w in &self.workloads {
                let mut pod_labels = w.labels.clone();
                pod_labels.insert("app".into(), w.name.clone());
                let matches = labels.iter().all(|(k, v)| pod_labels.get(k) == Some(v));
                if w.namespace == p.namespace && matches {
                    if w.kind == WorkloadKind::Daemonset {
                        return Err(invalid(
                            field("selector"),
                            format!(
                                "selects daemonset {}; only deployments are budgeted",
                                w.name
                            ),
                        ));
                    }
                    selected += w.replicas.unwrap_or(0);
                }
            }
            if p.min_available > selected {
                return Err(invalid(
                    field("min_available"),
                    format!(
                        "{} is more than the {selected} pods the budget selects",
                        p.min_available
                    ),
                ));
            }
        }
        for (i, e) in self.timeline.iter().enumerate() {
            let field = |f: &str| format!("timeline[{i}].{f}");
            if e.at > self.duration {
                return Err(invalid(
                    field("at"),
                    format!(
                        "{} is after the end of the scenario ({})",
                        clock_text(e.at),
                        clock_text(self.duration)
                    ),
                ));
            }
            if e.event == EventKind::ControllerRestart {
                if e.group.is_some() || e.count.is_some() {
                    return Err(invalid(
                        field("group"),
                        "controller-restart takes no group or count".into(),
                    ));
                }
            } else {
                match self.event_group(e) {
                    Some(g) if g.capacity == Capacity::Spot => {}
                    Some(g) => {
                        return Err(invalid(
                            field("group"),
                            format!("{:?} is not a spot group", g.name),
                        ))
                    }
                    None => {
                        return Err(invalid(
                            field("group"),
                            match &e.group {
                                Some(n) => format!("no group named {n:?}"),
                                None => "more than one spot group (or none): name the group".into(),
                            },
                        ))
                    }
                }
            }
            if e.count == Some(0) {
                return Err(invalid(field("count"), "must be at least 1".into()));
            }
            if e.interruption_after.is_some() && e.event != EventKind::Rebalance {
                return Err(invalid(
                    field("interruption_after"),
                    "only a rebalance event takes interruption_after".into(),
                ));
            }
            match (e.event, e.duration) {
                (EventKind::SpotOutage, None) => {
                    return Err(invalid(
                        field("duration"),
                        "a spot-outage needs a duration".into(),
                    ))
                }
                (EventKind::SpotOutage, Some(_)) if e.count.is_some() => {
                    return Err(invalid(
                        field("count"),
                        "a spot-outage is about a group, not instances".into(),
                    ))
                }
                (EventKind::SpotOutage, Some(_)) => {}
                (_, Some(_)) => {
                    return Err(invalid(
                        field("duration"),
                        "only a spot-outage takes a duration".into(),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Small scenarios for the simulator's tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::Scenario;

    /// Two spot nodes (2 CPU, 4 GiB) with an empty on-demand fallback group, a 3-replica
    /// `web` deployment, and `extra` TOML appended.
    pub const SMALL: &str = r#"
        name = "small"
        duration = "2h"
        [instance_types.small]
        cpu_millis = 2000
        memory_mib = 4096
        max_pods = 20
        spot_price = 0.02
        on_demand_price = 0.05
        [[groups]]
        name = "s"
        capacity = "spot"
        instance_type = "small"
        min = 1
        max = 4
        desired = 2
        [[groups]]
        name = "o"
        capacity = "on-demand"
        instance_type = "small"
        max = 4
        fallback_for = "s"
        [[workloads]]
        name = "web"
        replicas = 3
        cpu_millis = 500
        memory_mib = 256
    "#;

    /// [`SMALL`] with `extra` appended.
    pub fn small(extra: &str) -> Scenario {
        Scenario::from_toml(&format!("{SMALL}\n{extra}"), "small.toml").unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = fixtures::SMALL;

    fn parse(extra: &str) -> Result<Scenario, ScenarioError> {
        Scenario::from_toml(&format!("{BASE}\n{extra}"), "t.toml")
    }

    fn field_of(e: ScenarioError) -> String {
        match e {
            ScenarioError::Invalid { field, .. } => field,
            other => panic!("not an Invalid error: {other}"),
        }
    }

    #[test]
    fn examples_parse() {
        for (name, _) in EXAMPLES {
            let s = Scenario::example(name).unwrap();
            assert_eq!(&s.name, name);
        }
        assert!(matches!(
            Scenario::example("nope"),
            Err(ScenarioError::UnknownExample { .. })
        ));
    }

    #[test]
    fn unknown_field_names_file_and_field() {
        let e = parse("[cloud]\nlaunch_dealy = \"1m\"").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("t.toml") && text.contains("launch_dealy"),
            "{text}"
        );
        let e = parse("[[timeline]]\nat = \"1:00\"\nevent = \"meteor\"").unwrap_err();
        assert!(e.to_string().contains("meteor"), "{e}");
    }

    #[test]
    fn offsets() {
        assert_eq!(offset::parse("01:30"), Ok(Duration::from_secs(5400)));
        assert_eq!(offset::parse("00:00:45"), Ok(Duration::from_secs(45)));
        assert_eq!(offset::parse("90m"), Ok(Duration::from_secs(5400)));
        assert!(offset::parse("1:75").is_err());
        assert!(offset::parse("soon").is_err());
        assert_eq!(clock_text(Duration::from_secs(90061)), "25:01:01");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            ("[[timeline]]\nat = \"1h\"\nevent = \"rebalance\"\ngroup = \"x\"", "timeline[0].group"),
            ("[[timeline]]\nat = \"1h\"\nevent = \"rebalance\"\ngroup = \"o\"", "timeline[0].group"),
            ("[[timeline]]\nat = \"25h\"\nevent = \"rebalance\"", "timeline[0].at"),
            ("[[timeline]]\nat = \"1h\"\nevent = \"spot-outage\"", "timeline[0].duration"),
            (
                "[[timeline]]\nat = \"1h\"\nevent = \"interruption\"\nduration = \"1h\"",
                "timeline[0].duration",
            ),
            ("[[pdbs]]\nname = \"p\"\nworkload = \"web\"\nmin_available = 4", "pdbs[0].min_available"),
            ("[[pdbs]]\nname = \"p\"\nworkload = \"api\"\nmin_available = 1", "pdbs[0].workload"),
            ("[[workloads]]\nname = \"big\"\nreplicas = 1\ncpu_millis = 9000\nmemory_mib = 1", "workloads[1].cpu_millis"),
            ("[[workloads]]\nname = \"ds\"\nkind = \"daemonset\"\nreplicas = 2\ncpu_millis = 1\nmemory_mib = 1", "workloads[1].replicas"),
            ("[spotguard.timings]\nmonitor_interval = \"0s\"", "spotguard.timings.monitor_interval"),
        ];
        for (extra, field) in cases {
            assert_eq!(field_of(parse(extra).unwrap_err()), field, "{extra}");
        }
    }

    #[test]
    fn group_errors() {
        let bad = BASE.replace("desired = 2", "desired = 9");
        let e = Scenario::from_toml(&bad, "t.toml").unwrap_err();
        assert_eq!(field_of(e), "groups[0].desired");
        let bad = BASE.replace("fallback_for = \"s\"", "fallback_for = \"q\"");
        let e = Scenario::from_toml(&bad, "t.toml").unwrap_err();
        assert_eq!(field_of(e), "groups[1].fallback_for");
        let bad = BASE.replacen("instance_type = \"small\"", "instance_type = \"huge\"", 1);
        let e = Scenario::from_toml(&bad, "t.toml").unwrap_err();
        assert_eq!(field_of(e), "groups[0].instance_type");
    }

    #[test]
    fn engine_config_pairs_from_fallback_for() {
        let s = parse("").unwrap();
        let c = s.engine_config();
        assert_eq!(
            c.groups,
            vec![GroupPair {
                spot: "s".into(),
                on_demand: "o".into()
            }]
        );
        assert_eq!(s.duration, Duration::from_secs(7200));
        let no_duration = BASE.replace("duration = \"2h\"", "");
        let s = Scenario::from_toml(&no_duration, "t.toml").unwrap();
        assert_eq!(s.duration, Duration::from_secs(86400), "a day by default");
    }
}
