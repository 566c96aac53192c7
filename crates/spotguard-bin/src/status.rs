//! `spotguard status` (installed as `kubectl-spotguard`, also `kubectl spotguard status`):
//! every open ledger entry with its pool, instance, node, age, state and the monitor's latest
//! verdict, the leader, and the recent actions — read with the user's kubeconfig from the
//! ledger ConfigMap, the status ConfigMap the leading controller keeps, the leader Lease and
//! the nodes.
//!
//! It needs `get` on the two ConfigMaps and the Lease in Spot Guard's namespace and `list` on
//! nodes; without the nodes it still prints the entries, with no node names.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;
use spotguard_core::ledger::{Entry, EntryKind};
use spotguard_core::model::instance_id_from_provider_id;
use spotguard_core::status::{ActionRecord, CheckVerdict, StatusRecord};
use spotguard_k8s::{ConfigMapLedgerStore, ConfigMapStatusStore};

use crate::daemon::{kube_config, one_line};
use crate::settings::DaemonSettings;

/// Arguments of `spotguard status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Kubeconfig file (default: `$KUBECONFIG`, then `~/.kube/config`, or in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current one).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace Spot Guard runs in (daemon.namespace; the chart's release namespace).
    #[arg(long, short = 'n', env = "SPOTGUARD_NAMESPACE", value_name = "NAMESPACE", default_value_t = DaemonSettings::default().namespace)]
    pub namespace: String,
    /// ConfigMap holding the fallback ledger (daemon.ledger_configmap).
    #[arg(long, env = "SPOTGUARD_LEDGER_CONFIGMAP", value_name = "NAME", default_value_t = DaemonSettings::default().ledger_configmap)]
    pub ledger_configmap: String,
    /// ConfigMap of the monitor's verdicts and recent actions (daemon.status_configmap).
    #[arg(long, env = "SPOTGUARD_STATUS_CONFIGMAP", value_name = "NAME", default_value_t = DaemonSettings::default().status_configmap)]
    pub status_configmap: String,
    /// Lease the controllers elect a leader on (daemon.leader_lease).
    #[arg(long, env = "SPOTGUARD_LEADER_LEASE", value_name = "NAME", default_value_t = DaemonSettings::default().leader_lease)]
    pub leader_lease: String,
    /// Recent actions to show (newest last).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub actions: usize,
    /// Show released entries too.
    #[arg(long)]
    pub all: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// What `status` reports; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Spot Guard's namespace.
    pub namespace: String,
    /// Where the ledger was read.
    pub ledger: String,
    /// The leading controller, if a Lease names one.
    pub leader: Option<Leader>,
    /// Whether the leading controller has stored a status record yet.
    pub status_recorded: bool,
    /// The ledger's entries (open ones, or all with `--all`), oldest first.
    pub entries: Vec<EntryStatus>,
    /// The most recent actions, oldest first.
    pub actions: Vec<ActionRecord>,
    /// What could not be read (the nodes, the status record), and why.
    pub warnings: Vec<String>,
}

/// The leader Lease.
#[derive(Debug, Serialize)]
pub struct Leader {
    /// Its holder.
    pub identity: String,
    /// Seconds since it was last renewed.
    pub renewed_seconds_ago: Option<u64>,
}

/// One ledger entry as status shows it.
#[derive(Debug, Serialize)]
pub struct EntryStatus {
    /// The entry as stored.
    #[serde(flatten)]
    pub entry: Entry,
    /// The instance capacity is owed back for: the fallback's instance, or the at-risk
    /// instance of a pre-scale.
    pub owed_instance: Option<String>,
    /// That instance's node, if it has one.
    pub node: Option<String>,
    /// Seconds since the entry was recorded.
    pub age_seconds: u64,
    /// The monitor's deciding verdict on it, if it gave one.
    pub verdict: Option<CheckVerdict>,
}

/// Runs `spotguard status`.
pub fn run(args: StatusArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spotguard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(report(&args)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("spotguard: cannot print the report: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", render(&report, SystemTime::now()));
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("spotguard: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the ledger, the status record, the leader Lease and the nodes.
async fn report(args: &StatusArgs) -> Result<Report, String> {
    let config = kube_config(args.kubeconfig.as_deref(), args.context.as_deref())
        .await
        .map_err(one_line)?;
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| format!("cannot build a client for {url}: {}", one_line(e)))?;
    let ns = &args.namespace;
    let within = |what: String| {
        format!("{what} (API server {url}; use --namespace, --context or --kubeconfig to look elsewhere)")
    };

    let ledger_store = ConfigMapLedgerStore::new(client.clone(), ns, &args.ledger_configmap);
    let exists = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&args.ledger_configmap)
        .await
        .map_err(|e| {
            within(format!(
                "cannot read configmap {ns}/{}: {}",
                args.ledger_configmap,
                one_line(e)
            ))
        })?;
    if exists.is_none() {
        return Err(within(format!(
            "no Spot Guard ledger in namespace {ns}: configmap {ns}/{} not found (the controller creates it with its first fallback or pre-scale; is Spot Guard installed in {ns}?)",
            args.ledger_configmap
        )));
    }
    let ledger = ledger_store
        .load_ledger()
        .await
        .map_err(|e| within(one_line(e)))?
        .value;

    let mut warnings = Vec::new();
    let status = ConfigMapStatusStore::new(client.clone(), ns, &args.status_configmap);
    let record = match status.load().await {
        Ok(record) => record,
        Err(e) => {
            warnings.push(format!("no verdicts or actions: {}", one_line(e)));
            None
        }
    };
    let leader = match Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(&args.leader_lease)
        .await
    {
        Ok(lease) => lease.and_then(|l| l.spec).and_then(|spec| {
            let identity = spec.holder_identity.filter(|h| !h.is_empty())?;
            let renewed = spec.renew_time.map(|t| {
                let t: SystemTime = t.0.into();
                SystemTime::now()
                    .duration_since(t)
                    .unwrap_or_default()
                    .as_secs()
            });
            Some(Leader {
                identity,
                renewed_seconds_ago: renewed,
            })
        }),
        Err(e) => {
            warnings.push(format!(
                "no leader: cannot read lease {ns}/{}: {}",
                args.leader_lease,
                one_line(e)
            ));
            None
        }
    };
    let nodes = match node_of_instance(&client).await {
        Ok(nodes) => nodes,
        Err(e) => {
            warnings.push(format!("no node names: cannot list nodes: {}", one_line(e)));
            HashMap::new()
        }
    };
    Ok(assemble(
        args,
        ledger_store.location(),
        ledger.entries,
        record,
        leader,
        &nodes,
        warnings,
        SystemTime::now(),
    ))
}

/// Instance id → node name, from every node's `spec.providerID` (paged).
async fn node_of_instance(client: &Client) -> Result<HashMap<String, String>, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let mut out = HashMap::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        for node in page.items {
            let instance = node
                .spec
                .as_ref()
                .and_then(|s| s.provider_id.as_deref())
                .and_then(instance_id_from_provider_id);
            if let (Some(instance), Some(name)) = (instance, node.metadata.name) {
                out.insert(instance, name);
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// The report from what was read.
#[allow(clippy::too_many_arguments)]
fn assemble(
    args: &StatusArgs,
    ledger: String,
    mut entries: Vec<Entry>,
    record: Option<StatusRecord>,
    leader: Option<Leader>,
    nodes: &HashMap<String, String>,
    warnings: Vec<String>,
    now: SystemTime,
) -> Report {
    entries.retain(|e| args.all || e.is_open());
    entries.sort_by_key(|e| e.created_at);
    let entries = entries
        .into_iter()
        .map(|entry| {
            let owed_instance = entry.owed_instance().map(str::to_string);
            let node = owed_instance.as_ref().and_then(|i| nodes.get(i)).cloned();
            let verdict = record.as_ref().and_then(|r| r.latest(&entry.id)).cloned();
            EntryStatus {
                age_seconds: now
                    .duration_since(entry.created_at)
                    .unwrap_or_default()
                    .as_secs(),
                owed_instance,
                node,
                verdict,
                entry,
            }
        })
        .collect();
    let actions = record.as_ref().map_or_else(Vec::new, |r| {
        let skip = r.actions.len().saturating_sub(args.actions);
        r.actions.iter().skip(skip).cloned().collect()
    });
    Report {
        namespace: args.namespace.clone(),
        ledger,
        leader,
        status_recorded: record.is_some(),
        entries,
        actions,
        warnings,
    }
}

fn ago(now: SystemTime, then: SystemTime) -> String {
    short(now.duration_since(then).unwrap_or_default())
}

/// `45s`, `12m`, `3h10m`, `2d4h`: the width of `kubectl get`'s AGE column.
fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 if s % 3600 >= 60 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Columns padded to their widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The report as `kubectl`-style tables.
pub fn render(report: &Report, now: SystemTime) -> String {
    let mut out = String::new();
    let leader = match &report.leader {
        Some(Leader {
            identity,
            renewed_seconds_ago: Some(s),
        }) => format!(
            "leader {identity} (renewed {} ago)",
            short(Duration::from_secs(*s))
        ),
        Some(Leader { identity, .. }) => format!("leader {identity}"),
        None => "no leader".to_string(),
    };
    out.push_str(&format!(
        "Spot Guard in namespace {}: {leader}; ledger {}\n",
        report.namespace, report.ledger
    ));
    for w in &report.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out.push('\n');
    if report.entries.is_empty() {
        out.push_str("No open ledger entries: no capacity is owed back.\n");
    } else {
        let mut rows = vec![
            ["ENTRY", "KIND", "STATE", "POOL", "INSTANCE", "NODE", "AGE"]
                .map(str::to_string)
                .to_vec(),
        ];
        for e in &report.entries {
            let pool = match e.entry.kind {
                EntryKind::Fallback => format!("{} -> {}", e.entry.spot_group, e.entry.group),
                _ => e.entry.group.clone(),
            };
            rows.push(vec![
                e.entry.id.clone(),
                e.entry.kind.as_str().to_string(),
                e.entry.state.as_str().to_string(),
                pool,
                e.owed_instance.clone().unwrap_or_else(|| "-".into()),
                e.node.clone().unwrap_or_else(|| "-".into()),
                short(Duration::from_secs(e.age_seconds)),
            ]);
        }
        out.push_str(&table(&rows));
        out.push_str("\nVERDICTS\n");
        for e in &report.entries {
            let line = match &e.verdict {
                Some(v) => format!(
                    "{}: {} {} (since {} ago, last checked {} ago)",
                    e.entry.id,
                    format!("{:?}", v.check).to_lowercase(),
                    v.summary,
                    ago(now, v.since),
                    ago(now, v.at)
                ),
                None if !report.status_recorded => {
                    format!("{}: no verdict recorded yet", e.entry.id)
                }
                None => format!(
                    "{}: not judged by the monitor yet ({})",
                    e.entry.id, e.entry.note
                ),
            };
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.push_str("\nRECENT ACTIONS\n");
    if report.actions.is_empty() {
        out.push_str("  none recorded\n");
    } else {
        let mut rows = vec![["AGE", "ACTION", "MESSAGE"].map(str::to_string).to_vec()];
        for a in &report.actions {
            let name = if a.warning {
                format!("{} (warning)", a.event)
            } else {
                a.event.clone()
            };
            rows.push(vec![ago(now, a.at), name, a.message.clone()]);
        }
        for line in table(&rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use spotguard_core::events::{Check, Event};
    use spotguard_core::ledger::{EntryState, Intent, Ledger};
    use spotguard_core::predicates::{Reason, Verdict};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: StatusArgs,
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    #[test]
    fn the_report_joins_the_ledger_the_verdicts_and_the_nodes() {
        let args = Cli::parse_from(["status", "--actions", "1"]).args;
        let mut ledger = Ledger::default();
        let fallback = ledger.record_intent(
            Intent::new(EntryKind::Fallback, "web-od", "web-spot", "i-risky", 1),
            t(0),
        );
        ledger.get_mut(&fallback).unwrap().instance = Some("i-od".into());
        ledger.transition(&fallback, EntryState::Active, "fallback InService", t(60));
        let released = ledger.record_intent(
            Intent::new(EntryKind::Prescale, "web-spot", "web-spot", "i-old", 3),
            t(10),
        );
        ledger.transition(&released, EntryState::Released, "paid back", t(20));
        let mut record = StatusRecord::default();
        record.observe(
            t(100),
            &Event::Verdict {
                entry: fallback.clone(),
                check: Check::Stability,
                verdict: Verdict::Wait(vec![Reason::HealthyTooShort {
                    group: "web-spot".into(),
                    healthy_for: Duration::from_secs(40),
                    required: Duration::from_secs(120),
                }]),
            },
        );
        for node in ["a", "b"] {
            record.observe(t(50), &Event::Tainted { node: node.into() });
        }
        let nodes = HashMap::from([("i-od".to_string(), "node-od".to_string())]);
        let report = assemble(
            &args,
            "configmap spotguard/spotguard-ledger key ledger.json".into(),
            ledger.entries.clone(),
            Some(record),
            Some(Leader {
                identity: "controller-1".into(),
                renewed_seconds_ago: Some(2),
            }),
            &nodes,
            vec![],
            t(730),
        );
        assert_eq!(report.entries.len(), 1, "released entries are left out");
        let e = &report.entries[0];
        assert_eq!(e.node.as_deref(), Some("node-od"));
        assert_eq!(e.age_seconds, 730);
        assert_eq!(e.verdict.as_ref().unwrap().check, Check::Stability);
        assert_eq!(report.actions.len(), 1, "--actions 1");
        let text = render(&report, t(730));
        for needle in [
            "leader controller-1 (renewed 2s ago)",
            "web-spot -> web-od",
            "node-od",
            "12m",
            "stability wait: group web-spot healthy for 40s of the required 2m (since 10m ago",
            "Tainted",
            "tainted node b",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert!(!text.contains("tainted node a"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["entries"][0]["state"], "active");
        assert_eq!(json["entries"][0]["verdict"]["check"], "Stability");

        let all = Cli::parse_from(["status", "--all"]).args;
        let report = assemble(
            &all,
            String::new(),
            ledger.entries,
            None,
            None,
            &nodes,
            vec![],
            t(730),
        );
        assert_eq!(report.entries.len(), 2);
        assert!(render(&report, t(730)).contains("no verdict recorded yet"));
    }

    #[test]
    fn ages_read_like_kubectls() {
        let cases = [
            (5, "5s"),
            (125, "2m"),
            (3600, "1h"),
            (3700, "1h1m"),
            (90_000, "1d1h"),
        ];
        for (secs, text) in cases {
            assert_eq!(short(Duration::from_secs(secs)), text);
        }
    }
}
