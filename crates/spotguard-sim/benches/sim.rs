//! Simulated days per second: the engine, the in-memory cloud and cluster and the virtual
//! clock running one day of a busy spot cluster (waves of rebalance recommendations, an
//! interruption without warning, a two-hour spot outage with fallbacks given back after), at
//! 100 and 1,000 nodes. Criterion's throughput line (`elem/s`) reads as simulated days per
//! second.
//!
//! `cargo bench -p spotguard-sim --bench sim`
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::fmt::Write as _;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spotguard_sim::{simulate, Scenario, Strategy};

/// A day on `nodes` spot m5.xlarge nodes at about 85% CPU requested.
fn busy_day(nodes: u32) -> Scenario {
    let wave = (nodes / 20).max(1);
    let mut t = format!(
        r#"
name = "busy-day-{nodes}"
duration = "24h"

[instance_types."m5.xlarge"]
cpu_millis = 3920
memory_mib = 14500
max_pods = 58
spot_price = 0.0730
on_demand_price = 0.192

[[groups]]
name = "workers-spot"
capacity = "spot"
instance_type = "m5.xlarge"
max = {max_spot}
desired = {nodes}

[[groups]]
name = "workers-od"
capacity = "on-demand"
instance_type = "m5.xlarge"
max = {nodes}
fallback_for = "workers-spot"

[[workloads]]
name = "web"
replicas = {web}
cpu_millis = 1000
memory_mib = 1536

[[workloads]]
name = "api"
replicas = {half}
cpu_millis = 750
memory_mib = 1024

[[workloads]]
name = "worker"
replicas = {half}
cpu_millis = 500
memory_mib = 2048

[[workloads]]
name = "node-exporter"
kind = "daemonset"
cpu_millis = 100
memory_mib = 128

[[pdbs]]
name = "web"
workload = "web"
min_available = {web_min}

[[pdbs]]
name = "api"
workload = "api"
min_available = {api_min}

[[timeline]]
at = "08:00"
event = "spot-outage"
duration = "2h"

[[timeline]]
at = "08:30"
event = "rebalance"
count = {wave}
interruption_after = "10m"

[[timeline]]
at = "05:00"
event = "interruption"
count = {wave}
"#,
        max_spot = nodes * 2,
        web = nodes * 2,
        half = nodes,
        web_min = nodes * 2 * 85 / 100,
        api_min = nodes * 80 / 100,
    );
    for hour in [1, 3, 12, 15, 18, 21] {
        let _ = write!(
            t,
            "\n[[timeline]]\nat = \"{hour:02}:00\"\nevent = \"rebalance\"\ncount = {wave}\ninterruption_after = \"10m\"\n"
        );
    }
    Scenario::from_toml(&t, "busy-day").expect("the benchmark scenario is valid")
}

fn simulated_days(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulated day");
    group.throughput(Throughput::Elements(1));
    for nodes in [100u32, 1000] {
        let scenario = busy_day(nodes);
        if nodes >= 1000 {
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(20));
        }
        group.bench_with_input(BenchmarkId::new("nodes", nodes), &scenario, |b, s| {
            b.iter(|| simulate(s, Strategy::SpotGuard))
        });
    }
    group.finish();
}

criterion_group!(benches, simulated_days);
criterion_main!(benches);
