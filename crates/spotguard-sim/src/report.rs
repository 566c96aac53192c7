//! What a simulation produced: the timeline of what happened and why, the figures of each
//! run, and the comparison of Spot Guard with the two baselines.

use std::fmt::Write as _;
use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::driver::Strategy;
use super::scenario::clock_text;
use spotguard_core::events::Event;

/// Who a timeline line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The scenario itself (start state, controller restarts).
    Scenario,
    /// EC2 and Auto Scaling: notices, interruptions, capacity.
    Ec2,
    /// The Kubernetes cluster: nodes joining, pods lost.
    Cluster,
    /// Spot Guard's engine (its [`Event`]s).
    #[serde(rename = "spotguard")]
    SpotGuard,
    /// The plain termination handler of the *no Spot Guard* baseline.
    Handler,
}

impl Source {
    /// Short label for the printed timeline.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Scenario => "scenario",
            Self::Ec2 => "ec2",
            Self::Cluster => "k8s",
            Self::SpotGuard => "spotguard",
            Self::Handler => "handler",
        }
    }
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    /// Offset from the start of the scenario.
    pub at: Duration,
    /// Who it is about.
    pub source: Source,
    /// What happened, in words.
    pub text: String,
    /// The engine's event, for Spot Guard lines.
    pub event: Option<Event>,
}

impl Serialize for TimelineEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("TimelineEntry", 5)?;
        st.serialize_field("at", &clock_text(self.at))?;
        st.serialize_field("seconds", &self.at.as_secs())?;
        st.serialize_field("source", &self.source)?;
        st.serialize_field("text", &self.text)?;
        st.serialize_field("event", &self.event)?;
        st.end()
    }
}

impl std::fmt::Display for TimelineEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}  {:<9}  {}",
            clock_text(self.at),
            self.source.label(),
            self.text
        )
    }
}

/// Counts at one point of time, for plots: nodes by capacity type and pending pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Seconds from the start.
    pub at: u64,
    /// Spot nodes in the cluster.
    pub spot_nodes: u32,
    /// On-demand nodes in the cluster.
    pub on_demand_nodes: u32,
    /// Pods without a node.
    pub pending_pods: u32,
}

impl Sample {
    /// Whether the counts are the same (the time may differ).
    pub fn same_counts(&self, other: &Sample) -> bool {
        (self.spot_nodes, self.on_demand_nodes, self.pending_pods)
            == (other.spot_nodes, other.on_demand_nodes, other.pending_pods)
    }
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Instance cost in USD: instance-seconds by type times the hourly spot or on-demand price.
    pub cost_usd: f64,
    /// Spot instance-hours (launching, running and terminating instances are billed).
    pub spot_instance_hours: f64,
    /// On-demand instance-hours.
    pub on_demand_instance_hours: f64,
    /// Integral of pods without a node, in pod-minutes.
    pub pending_pod_minutes: f64,
    /// Pods evicted by drains.
    pub evictions: u64,
    /// Pods lost with their node (killed by an interruption or a termination before being
    /// moved).
    pub pods_lost: u64,
    /// Pods lost while their PDB was at its minimum.
    pub pdb_violations: u64,
    /// Most nodes in the cluster at once.
    pub peak_nodes: u32,
}

/// The fallback ledger at the end of a Spot Guard run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEnd {
    /// Entries left (open, or released and not cleaned up yet).
    pub entries: usize,
    /// Entries still open.
    pub open: usize,
    /// Open on-demand fallbacks (capacity not given back).
    pub open_fallbacks: usize,
    /// Fallbacks recorded during the run.
    pub fallbacks_recorded: usize,
    /// Fallbacks given back during the run.
    pub fallbacks_released: usize,
}

/// Nodes of each capacity type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NodeCount {
    /// Spot nodes.
    pub spot: u32,
    /// On-demand nodes.
    pub on_demand: u32,
}

/// One run of a scenario under one strategy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// What ran the cluster.
    pub strategy: Strategy,
    /// The figures.
    pub summary: Summary,
    /// The ledger at the end (Spot Guard runs only).
    pub ledger: Option<LedgerEnd>,
    /// Nodes at the start.
    pub start_nodes: NodeCount,
    /// Nodes at the end.
    pub end_nodes: NodeCount,
    /// What happened and why.
    pub timeline: Vec<TimelineEntry>,
    /// Node and pending-pod counts whenever one changed.
    pub series: Vec<Sample>,
}

impl RunReport {
    /// The timeline as text, one line per entry.
    pub fn timeline_text(&self) -> String {
        let mut out = String::new();
        for e in &self.timeline {
            let _ = writeln!(out, "{e}");
        }
        out
    }
}

/// Spot Guard against the two baselines on the same scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Scenario name.
    pub scenario: String,
    /// Scenario description.
    pub description: String,
    /// Simulated length in seconds.
    pub duration_seconds: u64,
    /// Spot Guard.
    pub spot_guard: RunReport,
    /// Cordon and drain on the interruption notice only; the group replaces the instance
    /// after it is gone.
    pub no_spot_guard: RunReport,
    /// The same workloads on on-demand instances only.
    pub all_on_demand: RunReport,
}

impl Comparison {
    /// The three runs, Spot Guard first.
    pub fn runs(&self) -> [&RunReport; 3] {
        [&self.spot_guard, &self.no_spot_guard, &self.all_on_demand]
    }

    /// The summary table, aligned, with a closing verdict line.
    pub fn table(&self) -> String {
        let runs = self.runs();
        let mut rows: Vec<(&str, [String; 3])> = Vec::new();
        let row = |f: &dyn Fn(&Summary) -> String| runs.map(|r| f(&r.summary));
        rows.push(("cost (USD)", row(&|s| format!("{:.2}", s.cost_usd))));
        rows.push((
            "on-demand instance-hours",
            row(&|s| format!("{:.1}", s.on_demand_instance_hours)),
        ));
        rows.push((
            "spot instance-hours",
            row(&|s| format!("{:.1}", s.spot_instance_hours)),
        ));
        rows.push((
            "pending pod-minutes",
            row(&|s| format!("{:.1}", s.pending_pod_minutes)),
        ));
        rows.push(("evictions", row(&|s| s.evictions.to_string())));
        rows.push((
            "pods lost with their node",
            row(&|s| s.pods_lost.to_string()),
        ));
        rows.push(("PDB violations", row(&|s| s.pdb_violations.to_string())));
        rows.push(("peak nodes", row(&|s| s.peak_nodes.to_string())));

        let headers = runs.map(|r| r.strategy.label().to_string());
        let label_width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..3)
            .map(|i| {
                rows.iter()
                    .map(|(_, v)| v[i].len())
                    .chain([headers[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let _ = write!(out, "{:label_width$}", "");
        for (h, w) in headers.iter().zip(&widths) {
            let _ = write!(out, "   {h:>w$}");
        }
        out.push('\n');
        for (label, values) in &rows {
            let _ = write!(out, "{label:label_width$}");
            for (v, w) in values.iter().zip(&widths) {
                let _ = write!(out, "   {v:>w$}");
            }
            out.push('\n');
        }
        out
    }

    /// One-paragraph verdict: savings, availability, PDBs, ledger.
    pub fn verdict(&self) -> String {
        let sg = &self.spot_guard.summary;
        let od = &self.all_on_demand.summary;
        let plain = &self.no_spot_guard.summary;
        let mut parts = Vec::new();
        if od.cost_usd > 0.0 {
            let saving = (1.0 - sg.cost_usd / od.cost_usd) * 100.0;
            parts.push(format!(
                "Spot Guard cost {saving:.0}% less than all on-demand"
            ));
        }
        if plain.pending_pod_minutes > 0.0 || sg.pending_pod_minutes > 0.0 {
            parts.push(format!(
                "left pods pending for {:.1} pod-minutes against {:.1} without it",
                sg.pending_pod_minutes, plain.pending_pod_minutes
            ));
        }
        parts.push(format!(
            "broke {} PDBs (without it: {})",
            sg.pdb_violations, plain.pdb_violations
        ));
        if let Some(l) = &self.spot_guard.ledger {
            parts.push(format!(
                "gave back {} of {} on-demand fallbacks, {} ledger entries open at the end",
                l.fallbacks_released, l.fallbacks_recorded, l.open
            ));
        }
        let mut text = parts.join("; ");
        text.push('.');
        text
    }

    /// The comparison as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a comparison serializes")
    }
}
