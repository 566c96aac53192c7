//! `spotguard simulate` end to end: each example scenario through the real binary, and the
//! figures that matter asserted on its JSON output.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn spotguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spotguard"))
        .arg("simulate")
        .args(args)
        .output()
        .expect("spotguard runs")
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = spotguard(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn example(name: &str) -> Value {
    json(&["--example", name])
}

fn f(v: &Value, run: &str, figure: &str) -> f64 {
    v[run]["summary"][figure]
        .as_f64()
        .unwrap_or_else(|| panic!("{run}.summary.{figure} in {v}"))
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("{} is not a count", path.join(".")))
}

/// What every scenario must show: no PDB broken by Spot Guard, cheaper than all on-demand,
/// nothing left open in the ledger, every fallback given back.
fn assert_spot_guard_holds(v: &Value) {
    let name = v["scenario"].as_str().unwrap();
    assert_eq!(f(v, "spot_guard", "pdb_violations"), 0.0, "{name}");
    assert!(
        f(v, "spot_guard", "cost_usd") < f(v, "all_on_demand", "cost_usd"),
        "{name}: Spot Guard must cost less than all on-demand"
    );
    assert_eq!(u(v, &["spot_guard", "ledger", "open"]), 0, "{name}");
    assert_eq!(
        u(v, &["spot_guard", "ledger", "open_fallbacks"]),
        0,
        "{name}"
    );
    assert_eq!(
        u(v, &["spot_guard", "end_nodes", "on_demand"]),
        u(v, &["spot_guard", "start_nodes", "on_demand"]),
        "{name}: every on-demand fallback node is gone at the end"
    );
    assert_eq!(f(v, "all_on_demand", "spot_instance_hours"), 0.0, "{name}");
}

#[test]
fn quiet_day() {
    let v = example("quiet-day");
    assert_spot_guard_holds(&v);
    assert_eq!(u(&v, &["spot_guard", "ledger", "fallbacks_recorded"]), 0);
    assert_eq!(f(&v, "spot_guard", "on_demand_instance_hours"), 0.0);
    assert_eq!(f(&v, "spot_guard", "pods_lost"), 0.0);
}

#[test]
fn interruption_wave() {
    let v = example("interruption-wave");
    assert_spot_guard_holds(&v);
    let sg = f(&v, "spot_guard", "pending_pod_minutes");
    let plain = f(&v, "no_spot_guard", "pending_pod_minutes");
    assert!(
        sg < plain,
        "Spot Guard left pods pending {sg} pod-minutes, no Spot Guard {plain}"
    );
    assert_eq!(f(&v, "spot_guard", "pods_lost"), 0.0);
    assert!(
        f(&v, "no_spot_guard", "pdb_violations") > 0.0,
        "the wave breaks PDBs without Spot Guard"
    );
    // The recommended instances were replaced before their interruption.
    let timeline = v["spot_guard"]["timeline"].as_array().unwrap();
    let gone = timeline
        .iter()
        .filter(|e| {
            e["text"]
                .as_str()
                .unwrap()
                .ends_with("does not happen: the instance is already gone")
        })
        .count();
    assert_eq!(gone, 5);
}

#[test]
fn spot_drought_falls_back_and_gives_everything_back() {
    let v = example("spot-drought");
    assert_spot_guard_holds(&v);
    assert_eq!(u(&v, &["spot_guard", "ledger", "fallbacks_recorded"]), 5);
    assert_eq!(u(&v, &["spot_guard", "ledger", "fallbacks_released"]), 5);
    assert_eq!(
        u(&v, &["spot_guard", "ledger", "entries"]),
        0,
        "spot recovered: the ledger is empty at the end"
    );
    assert!(f(&v, "spot_guard", "on_demand_instance_hours") > 0.0);
    assert!(
        f(&v, "spot_guard", "pending_pod_minutes") * 10.0
            < f(&v, "no_spot_guard", "pending_pod_minutes"),
        "without a fallback the drought leaves pods pending for hours"
    );
    // The release happened for the right reasons, in order.
    let texts: Vec<&str> = v["spot_guard"]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    let first = |needle: &str| {
        texts
            .iter()
            .position(|t| t.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the timeline"))
    };
    assert!(first("spot capacity for workers-spot is back") < first("Health go"));
    assert!(first("Health go") < first("healthy for 1m of the required 2m"));
    assert!(first("Stability go") < first("gave back workers-od capacity"));
}

#[test]
fn mixed_day_is_the_default_and_restarts_cleanly() {
    let default = json(&[]);
    assert_eq!(default["scenario"], "mixed-day");
    assert_spot_guard_holds(&default);
    assert_eq!(u(&default, &["spot_guard", "ledger", "entries"]), 0);
    assert!(u(&default, &["spot_guard", "ledger", "fallbacks_recorded"]) >= 2);
    let texts: String = default["spot_guard"]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}\n", e["text"].as_str().unwrap()))
        .collect();
    assert!(texts.contains("recovered the ledger: 2 open entries resume"));
}

#[test]
fn text_output_has_the_timeline_and_the_table() {
    let out = spotguard(&[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "Scenario mixed-day",
        "01:30:00  ec2        rebalance recommendation for i-00001 (node workers-spot-1)",
        "01:30:00  spotguard  scaled workers-spot from 10 to 11",
        "Stability wait: group workers-spot healthy for 1m of the required 2m",
        "Spot Guard   no Spot Guard   all on-demand",
        "PDB violations",
        "pending pod-minutes",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let quiet = String::from_utf8(spotguard(&["-q"]).stdout).unwrap();
    assert!(!quiet.contains("spotguard  scaled"));
    assert!(quiet.contains("PDB violations"));
}

#[test]
fn plot_writes_an_svg() {
    let path: PathBuf =
        std::env::temp_dir().join(format!("spotguard-plot-{}.svg", std::process::id()));
    let out = spotguard(&[
        "--example",
        "spot-drought",
        "-q",
        "--plot",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("on-demand nodes"));
    assert!(svg.contains("pods without a node"));
}

#[test]
fn a_bad_scenario_is_refused_with_file_and_field() {
    let path = std::env::temp_dir().join(format!("spotguard-bad-{}.toml", std::process::id()));
    let text = include_str!("../../../crates/spotguard-sim/scenarios/quiet-day.toml").replace(
        "[[timeline]]\nat = \"06:00\"",
        "[[timeline]]\nat = \"06:00\"\ngroup = \"nope\"",
    );
    std::fs::write(&path, text).unwrap();
    let out = spotguard(&[path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spotguard-bad-") && err.contains("timeline[0].group"),
        "{err}"
    );

    let out = spotguard(&["/no/such/scenario.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/scenario.toml"));

    let out = spotguard(&["--example", "meteor-strike"]);
    assert!(!out.status.success());
}
