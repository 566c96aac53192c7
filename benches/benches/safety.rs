//! The safety check at Kubernetes' published limits: 5,000 nodes, 150,000 pods, 1,000 PDBs.
//!
//! Measures one decision (index the cluster view, judge one candidate on-demand node) and a
//! ledger of 50 candidates (index once, judge 50), at 500 / 1,000 / 5,000 nodes, on the view
//! the adapters hand out (pods grouped per node); one decision on a snapshot whose pods come in
//! no useful order (grouping them is part of the cost); and the naive check (for each pod,
//! scan every node) side by side in the same run, printing the ratio.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion};
use spotguard_benches::{cluster, grouped_view, naive_safety};
use spotguard_core::config::Config;
use spotguard_core::predicates::safety::SafetyIndex;
use spotguard_core::view::ClusterView;

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
        // As the Kubernetes watch cache and the simulator hand it out: pods grouped per node.
        let view = grouped_view(&snapshot);
        let first = "i-00000000".to_string();
        let candidates: Vec<String> = (0..CANDIDATES).map(|i| format!("i-{i:08x}")).collect();
        let mut group = c.benchmark_group("safety");
        group.bench_with_input(BenchmarkId::new("one-decision", n), &n, |b, _| {
            b.iter(|| black_box(SafetyIndex::new(&view, &config).check(&first)))
        });
        group.bench_with_input(BenchmarkId::new("ledger-of-50", n), &n, |b, _| {
            b.iter(|| {
                let index = SafetyIndex::new(&view, &config);
                for id in &candidates {
                    black_box(index.check(id));
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("index-ungrouped", n), &n, |b, _| {
            b.iter_batched(
                || snapshot.clone(),
                |s| black_box(ClusterView::new(s)),
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("naive-one-decision", n), &n, |b, _| {
            b.iter(|| black_box(naive_safety(&snapshot, &first)))
        });
        group.finish();

        // Side by side in the same run, for the ratio.
        let ours = time(15, || {
            black_box(SafetyIndex::new(&view, &config).check(&first));
        });
        let fifty = time(9, || {
            let index = SafetyIndex::new(&view, &config);
            for id in &candidates {
                black_box(index.check(id));
            }
        });
        let ungrouped = median(
            (0..5)
                .map(|_| {
                    let s = snapshot.clone();
                    let t = Instant::now();
                    let view = ClusterView::new(s);
                    let index = SafetyIndex::new(&view, &config);
                    black_box(index.check(&first));
                    let spent = t.elapsed();
                    drop(view);
                    spent
                })
                .collect(),
        );
        let naive = time(5, || {
            black_box(naive_safety(&snapshot, &first));
        });
        rows.push((
            n,
            snapshot.pods.len(),
            snapshot.pdbs.len(),
            ours,
            fifty,
            ungrouped,
            naive,
        ));
    }
    println!();
    println!("| nodes | pods | PDBs | one decision | 50 decisions | one decision, pods not grouped | naive, one decision | naive / Spot Guard |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, pods, pdbs, ours, fifty, ungrouped, naive) in rows {
        println!(
            "| {n} | {pods} | {pdbs} | {:.3} ms | {:.3} ms | {:.2} ms | {:.2} ms | {:.0}x |",
            ours.as_secs_f64() * 1e3,
            fifty.as_secs_f64() * 1e3,
            ungrouped.as_secs_f64() * 1e3,
            naive.as_secs_f64() * 1e3,
            naive.as_secs_f64() / ours.as_secs_f64()
        );
    }
}
