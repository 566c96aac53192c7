//! The Grafana dashboard (`deploy/grafana/spotguard.json`) against the metrics the daemon registers.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::*;

/// The dashboard as shipped (a change to the file rebuilds the tests).
const DASHBOARD: &str = include_str!("../../../deploy/grafana/spotguard.json");

/// What every panel and target must name as its data source: the dashboard's variable.
const DATASOURCE: &str = "${datasource}";

/// The families the issue asks the dashboard to show, without their `spotguard_` prefix.
const MUST_SHOW: &[&str] = &[
    "notices",
    "notices_handed_over",
    "scale_ups",
    "fallbacks",
    "ledger_entries",
    "oldest_open_entry_age_seconds",
    "fallback_instance_seconds",
    "drain_duration_seconds",
    "api_errors",
    "engine_errors",
    "notifications",
    "verdicts",
    "leader",
];

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD)
        .unwrap_or_else(|e| panic!("deploy/grafana/spotguard.json is not JSON: {e}"))
}

/// Every panel: the top-level ones and those kept inside collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("<untitled>")
}

/// `(panel title, expr)` of every target of every panel.
fn exprs(dashboard: &Value) -> Vec<(&str, &str)> {
    panels(dashboard)
        .into_iter()
        .filter(|p| !is_row(p))
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| t["expr"].as_str().map(|e| (title(p), e)))
        })
        .collect()
}

/// The query of a template variable (a string, or an object with a `query` string).
fn variable_query(variable: &Value) -> Option<&str> {
    variable["query"]
        .as_str()
        .or_else(|| variable["query"]["query"].as_str())
}

fn is_metric_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// Every `spotguard_…` metric name in a PromQL expression, with the byte offset just past it.
fn metric_names(expr: &str) -> Vec<(&str, usize)> {
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while let Some(found) = expr[i..].find("spotguard_") {
        let start = i + found;
        let mut end = start + "spotguard_".len();
        if start == 0 || !is_metric_char(bytes[start - 1]) {
            while end < bytes.len() && is_metric_char(bytes[end]) {
                end += 1;
            }
            names.push((&expr[start..end], end));
        }
        i = end;
    }
    names
}

/// The daemon's metrics with a sample in every family: the exposition leaves out the `# TYPE`
/// line of a family that has none.
fn metrics_with_every_family() -> Arc<Metrics> {
    let m = Metrics::new("all", false);
    let kind = KindLabel { kind: "k".into() };
    let group = GroupLabel { group: "g".into() };
    m.notices.get_or_create(&kind).inc();
    m.notices_handed_over.get_or_create(&kind).inc();
    m.scale_ups
        .get_or_create(&ScaleUpLabels {
            group: "g".into(),
            outcome: "raised".into(),
        })
        .inc();
    m.fallbacks.get_or_create(&group).inc();
    m.scale_downs.get_or_create(&group).inc();
    m.prescale_paybacks.get_or_create(&group).inc();
    m.fallback_seconds.get_or_create(&group).inc_by(1.0);
    m.notifications
        .get_or_create(&OutcomeLabel {
            outcome: "sent".into(),
        })
        .inc();
    m.count_call("kubernetes", "taint node", true);
    m.count_suppressed("autoscaling", "SetDesiredCapacity");
    m.set_ledger(&Ledger::default(), SystemTime::now());
    m.count_verdict(
        Check::Health,
        &Verdict::Wait(vec![Reason::NotHealthy { group: "g".into() }]),
    );
    m.record_drain(
        &DrainReport {
            node: "n".into(),
            pods: vec![spotguard_core::ports::PodReport {
                pod: "a/b".into(),
                outcome: PodOutcome::Blocked {
                    pdb: Some("a/pdb".into()),
                },
            }],
        },
        Duration::from_secs(3),
    );
    m
}

/// `# TYPE <family> <type>` of every family in the exposition; every registered family has one.
fn family_types(metrics: &Metrics, exposition: &str) -> BTreeMap<String, String> {
    let types: BTreeMap<String, String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(family, kind)| (family.to_string(), kind.trim().to_string()))
        .collect();
    let untyped: Vec<&String> = metrics
        .families()
        .iter()
        .filter(|f| !types.contains_key(*f))
        .collect();
    assert!(
        untyped.is_empty(),
        "no `# TYPE` line for {untyped:?}: give them a sample in metrics_with_every_family"
    );
    types
}

/// Every sample name the daemon can export, mapped to its family: the suffixes each
/// OpenMetrics type allows (checked against the samples the exposition holds).
fn sample_names(metrics: &Metrics) -> BTreeMap<String, String> {
    let exposition = metrics.encode();
    let types = family_types(metrics, &exposition);
    let mut samples = BTreeMap::new();
    for (family, kind) in &types {
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total"],
            "gauge" | "unknown" => &[""],
            "histogram" => &["_bucket", "_count", "_sum"],
            "summary" => &["", "_count", "_sum"],
            "info" => &["_info"],
            other => panic!("{family} is of type {other}: teach this test its sample names"),
        };
        for suffix in suffixes {
            samples.insert(format!("{family}{suffix}"), family.clone());
        }
    }
    let unexpected: BTreeSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|name| !name.is_empty() && !samples.contains_key(*name))
        .collect();
    assert!(
        unexpected.is_empty(),
        "samples {unexpected:?} are not named as their family's type says"
    );
    samples
}

fn is_datasource_variable(datasource: &Value) -> bool {
    datasource.as_str() == Some(DATASOURCE) || datasource["uid"].as_str() == Some(DATASOURCE)
}

/// Every `spotguard_…` name in a panel query or a template variable's query is a sample the
/// daemon exports (family registered, suffix allowed by its type), so no panel stays empty
/// because of a typo or a renamed metric.
#[test]
fn every_metric_the_dashboard_queries_is_one_the_daemon_exports() {
    let dashboard = dashboard();
    let samples = sample_names(&metrics_with_every_family());
    let mut queries = exprs(&dashboard);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable_query(variable) {
            queries.push(("<template variable>", query));
        }
    }
    let mut used = 0;
    let mut unknown = Vec::new();
    for (panel, expr) in queries {
        for (name, _) in metric_names(expr) {
            used += 1;
            if !samples.contains_key(name) {
                unknown.push(format!("{name} (in \"{panel}\")"));
            }
        }
    }
    assert!(used > 20, "only {used} metric names found in the dashboard");
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the daemon does not export:\n  {}\nexported samples: {:?}",
        unknown.join("\n  "),
        samples.keys().collect::<Vec<_>>()
    );
}

/// Each family the issue names (notices, hand-overs, scale-ups, fallbacks, the ledger and
/// its oldest entry, instance time given back, drains, errors, notifications, verdicts,
/// leadership) is still registered and is queried by at least one panel.
#[test]
fn the_dashboard_shows_every_topic_the_issue_asks_for() {
    let dashboard = dashboard();
    let metrics = metrics_with_every_family();
    let samples = sample_names(&metrics);
    let shown: BTreeSet<&String> = exprs(&dashboard)
        .into_iter()
        .flat_map(|(_, expr)| metric_names(expr))
        .filter_map(|(name, _)| samples.get(name))
        .collect();
    let mut missing = Vec::new();
    for family in MUST_SHOW {
        let family = format!("spotguard_{family}");
        if !metrics.families().contains(&family) {
            missing.push(format!("{family} (no longer registered: update MUST_SHOW)"));
        } else if !shown.contains(&family) {
            missing.push(format!("{family} (no panel queries it)"));
        }
    }
    assert!(
        missing.is_empty(),
        "families the dashboard must show:\n  {}",
        missing.join("\n  ")
    );
}

/// The file imports into Grafana as the `spotguard` dashboard and every panel can draw: panel
/// ids unique (rows and panels nested in collapsed rows included), known panel types, each
/// non-row panel placed on the 24-column grid without overlapping another, on the
/// `${datasource}` variable, with a description and at least one target whose `refId` is
/// unique in the panel; the `datasource` and `namespace`/`job` variables exist.
#[test]
fn the_dashboard_is_a_well_formed_grafana_dashboard() {
    let dashboard = dashboard();
    let mut problems = Vec::new();
    if dashboard["uid"] != "spotguard" {
        problems.push(format!("uid is {}, not \"spotguard\"", dashboard["uid"]));
    }
    if dashboard["title"] != "Spot Guard" {
        problems.push(format!(
            "title is {}, not \"Spot Guard\"",
            dashboard["title"]
        ));
    }
    if dashboard["schemaVersion"] != 39 {
        problems.push(format!(
            "schemaVersion is {}, not 39",
            dashboard["schemaVersion"]
        ));
    }

    let variables: Vec<&Value> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let named = |name: &str| variables.iter().find(|v| v["name"] == name).copied();
    match named("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        Some(v) => problems.push(format!(
            "variable datasource is of type {} with query {}, not a prometheus data source",
            v["type"], v["query"]
        )),
        None => problems.push("no `datasource` template variable".into()),
    }
    match named("namespace").or_else(|| named("job")) {
        Some(v)
            if v["type"] == "query"
                && is_datasource_variable(&v["datasource"])
                && variable_query(v).is_some_and(|q| q.contains("spotguard_")) => {}
        Some(v) => problems.push(format!(
            "variable {} is not a query of spotguard metrics on {DATASOURCE}",
            v["name"]
        )),
        None => problems.push("no `namespace` or `job` template variable".into()),
    }

    let top: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if top.first().is_none_or(|p| !is_row(p)) {
        problems.push("the first panel is not a row: panels are grouped in rows".into());
    }
    let mut ids = BTreeSet::new();
    let mut drawn = 0;
    for panel in panels(&dashboard) {
        let name = title(panel);
        match panel["id"].as_u64() {
            Some(id) if !ids.insert(id) => problems.push(format!("\"{name}\": id {id} repeated")),
            Some(_) => {}
            None => problems.push(format!("\"{name}\": no numeric id")),
        }
        if panel["title"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("panel {}: no title", panel["id"]));
        }
        let kind = panel["type"].as_str().unwrap_or_default();
        if !["row", "timeseries", "stat", "table"].contains(&kind) {
            problems.push(format!("\"{name}\": panel type {kind:?}"));
        }
        if is_row(panel) {
            let nested = panel["panels"].as_array().map_or(0, Vec::len);
            if panel["collapsed"] != true && nested > 0 {
                problems.push(format!(
                    "row \"{name}\" is expanded but holds {nested} panels Grafana would not show"
                ));
            }
            continue;
        }
        drawn += 1;
        let grid = &panel["gridPos"];
        match ["x", "y", "w", "h"].map(|k| grid[k].as_u64()) {
            [Some(x), Some(_), Some(w), Some(h)] if w >= 1 && h >= 1 && x + w <= 24 => {}
            _ => problems.push(format!("\"{name}\": gridPos {grid} is not on the grid")),
        }
        if !is_datasource_variable(&panel["datasource"]) {
            problems.push(format!(
                "\"{name}\": datasource {} is not {DATASOURCE}",
                panel["datasource"]
            ));
        }
        if panel["description"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("\"{name}\": no description"));
        }
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        if targets.is_empty() {
            problems.push(format!("\"{name}\": no target"));
        }
        let mut refs = BTreeSet::new();
        for target in targets {
            match target["refId"].as_str() {
                Some(r) if !r.is_empty() && refs.insert(r) => {}
                r => problems.push(format!("\"{name}\": refId {r:?} missing or repeated")),
            }
            if target["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!("\"{name}\": a target without expr"));
            }
            if !target["datasource"].is_null() && !is_datasource_variable(&target["datasource"]) {
                problems.push(format!(
                    "\"{name}\": a target's datasource {} is not {DATASOURCE}",
                    target["datasource"]
                ));
            }
        }
    }
    if drawn == 0 {
        problems.push("no panel besides rows".into());
    }

    // Panels Grafana lays out on the grid (not those folded into a collapsed row) do not overlap.
    let boxes: Vec<(&str, [u64; 4])> = top
        .iter()
        .filter_map(|p| {
            let g = &p["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64());
            Some((title(p), [x?, y?, w?, h?]))
        })
        .collect();
    for (i, (a, [ax, ay, aw, ah])) in boxes.iter().enumerate() {
        for (b, [bx, by, bw, bh]) in &boxes[i + 1..] {
            if ax < &(bx + bw) && bx < &(ax + aw) && ay < &(by + bh) && by < &(ay + ah) {
                problems.push(format!("\"{a}\" and \"{b}\" overlap"));
            }
        }
    }

    assert!(
        problems.is_empty(),
        "deploy/grafana/spotguard.json:\n  {}",
        problems.join("\n  ")
    );
}

/// Every metric selector of every panel is restricted to the namespaces picked in the
/// `namespace` variable, so the variable filters the whole dashboard.
#[test]
fn every_selector_follows_the_namespace_variable() {
    let dashboard = dashboard();
    let mut unscoped = Vec::new();
    let mut selectors = 0;
    for (panel, expr) in exprs(&dashboard) {
        for (name, end) in metric_names(expr) {
            selectors += 1;
            let labels = expr[end..]
                .strip_prefix('{')
                .and_then(|rest| rest.split_once('}'))
                .map(|(labels, _)| labels);
            if !labels.is_some_and(|l| l.contains("namespace=~\"$namespace\"")) {
                unscoped.push(format!("{name} in \"{panel}\": {expr}"));
            }
        }
    }
    assert!(selectors > 0, "no metric selector in the dashboard");
    assert!(
        unscoped.is_empty(),
        "selectors without namespace=~\"$namespace\":\n  {}",
        unscoped.join("\n  ")
    );
}

/// The metric-name scanner the tests above rely on: whole names, suffixes included, and not
/// a name that only ends in `spotguard_`.
#[test]
fn metric_names_are_read_whole_from_promql() {
    let names: Vec<&str> = metric_names(
        "sum(rate(spotguard_notices_total{kind=\"x\"}[5m])) / my_spotguard_x + spotguard_leader",
    )
    .into_iter()
    .map(|(name, _)| name)
    .collect();
    assert_eq!(names, ["spotguard_notices_total", "spotguard_leader"]);
}
