//! The safety check at Kubernetes' published limits: 5,000 nodes, 150,000 pods, 1,000 PDBs.
//!
//! Measures one decision (index the snapshot, judge one candidate on-demand node) and a ledger
//! of 50 candidates (index once, judge 50), at 500 / 1,000 / 5,000 nodes, and the naive check
//! (for each pod, scan every node) side by side in the same run, printing the ratio.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use spotguard_benches::{cluster, naive_safety};
use spotguard_core::config::Config;
use spotguard_core::predicates::safety::SafetyIndex;

const PODS_PER_NODE: usize = 30;
const CANDIDATES: usize = 50;

fn sizes() -> Vec<usize> {
    vec![500, 1_000, 5_000]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let config = Config::default();
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut rows = Vec::new();
    for n in sizes() {
        let snapshot = cluster(n, PODS_PER_NODE, n / 5, CANDIDATES);
        let first = "i-00000000".to_string();
        let candidates: Vec<String> = (0..CANDIDATES).map(|i| format!("i-{i:08x}")).collect();
        let mut group = c.benchmark_group("safety");
        group.bench_with_input(BenchmarkId::new("one-decision", n), &n, |b, _| {
            b.iter(|| black_box(SafetyIndex::new(&snapshot, &config).check(&first)))
        });
        group.bench_with_input(BenchmarkId::new("ledger-of-50", n), &n, |b, _| {
            b.iter(|| {
                let index = SafetyIndex::new(&snapshot, &config);
                for id in &candidates {
                    black_box(index.check(id));
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("naive-one-decision", n), &n, |b, _| {
            b.iter(|| black_box(naive_safety(&snapshot, &first)))
        });
        group.finish();

        // Side by side in the same run, for the ratio.
        let ours = time(15, || {
            black_box(SafetyIndex::new(&snapshot, &config).check(&first));
        });
        let fifty = time(9, || {
            let index = SafetyIndex::new(&snapshot, &config);
            for id in &candidates {
                black_box(index.check(id));
            }
        });
        let naive = time(5, || {
            black_box(naive_safety(&snapshot, &first));
        });
        rows.push((
            n,
            snapshot.pods.len(),
            snapshot.pdbs.len(),
            ours,
            fifty,
            naive,
        ));
    }
    println!();
    println!("| nodes | pods | PDBs | one decision | 50 decisions | naive, one decision | naive / Spot Guard |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (n, pods, pdbs, ours, fifty, naive) in rows {
        println!(
            "| {n} | {pods} | {pdbs} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1}x |",
            ours.as_secs_f64() * 1e3,
            fifty.as_secs_f64() * 1e3,
            naive.as_secs_f64() * 1e3,
            naive.as_secs_f64() / ours.as_secs_f64()
        );
    }
}
