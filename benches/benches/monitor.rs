//! The monitor tick with 50 ledger entries over 50 spot / 50 on-demand groups, through the
//! pure engine over the core's in-memory ports (benches/src/ports.rs sets them up), at 1,000 and 5,000 nodes.
//!
//! Steady state: every spot group is healthy and has been stable for longer than required, so
//! each tick evaluates health, stability and safety for all 50 entries; a 99% capacity buffer
//! makes safety wait, so no tick mutates anything (asserted). Reports time per tick (criterion,
//! then a median / p99 over timed ticks) and heap allocations per tick (counted by the global
//! allocator), printed as a markdown table.

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use futures::executor::block_on;
use spotguard_benches::ports::{steady_world, World};
use spotguard_core::engine::Engine;
use spotguard_core::lock::LocalScaleLock;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ENTRIES: usize = 50;

fn sizes() -> Vec<usize> {
    vec![1_000, 5_000]
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut rows = Vec::new();
    for nodes in sizes() {
        let world: World = steady_world(nodes, ENTRIES);
        let engine = Engine::new(
            world.config.clone(),
            &world.cloud,
            &world.cluster,
            &world.clock,
            &world.store,
            LocalScaleLock::default(),
        );
        // First tick: the spot groups become healthy; then they have been for 10 minutes.
        block_on(engine.monitor_tick()).expect("first tick");
        world.clock.advance(Duration::from_secs(600));
        let report = block_on(engine.monitor_tick()).expect("steady tick");
        assert_eq!(
            report.waiting.len(),
            ENTRIES,
            "every entry is judged and waits"
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        if let Some((id, verdict)) = report.waiting.first() {
            eprintln!("{nodes} nodes, steady state: {id}: {verdict:?}");
        }

        let mut group = c.benchmark_group("monitor");
        group.bench_with_input(
            BenchmarkId::new("tick-50-entries", nodes),
            &nodes,
            |b, _| b.iter(|| black_box(block_on(engine.monitor_tick()).expect("tick"))),
        );
        group.finish();

        // Timed ticks and allocations, for the table.
        let runs = 30;
        let mut times = Vec::with_capacity(runs);
        let mut allocations = Vec::with_capacity(runs);
        let mut bytes = Vec::with_capacity(runs);
        for _ in 0..runs {
            let region = Region::new(GLOBAL);
            let t = Instant::now();
            black_box(block_on(engine.monitor_tick()).expect("tick"));
            let elapsed = t.elapsed();
            let stats = region.change();
            times.push(elapsed);
            allocations.push(stats.allocations + stats.reallocations);
            bytes.push(stats.bytes_allocated);
        }
        times.sort();
        allocations.sort();
        bytes.sort();
        let mutations =
            world.cloud.writes() + world.cluster.writes() + world.store.saves() as usize;
        assert_eq!(mutations, 0, "the steady state mutates nothing");
        let snapshot =
            block_on(spotguard_core::ports::Cluster::snapshot(&world.cluster)).expect("snapshot");
        rows.push((
            nodes,
            snapshot.pods.len(),
            snapshot.pdbs.len(),
            times[runs / 2],
            times[runs * 99 / 100],
            allocations[runs / 2],
            bytes[runs / 2],
        ));
    }
    println!();
    println!(
        "| nodes | pods | PDBs | ledger entries | groups | tick, median | tick, p99 | allocations per tick | bytes allocated per tick |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (nodes, pods, pdbs, p50, p99, allocs, bytes) in rows {
        println!(
            "| {nodes} | {pods} | {pdbs} | {ENTRIES} | {} | {:.2} ms | {:.2} ms | {allocs} | {:.1} MiB |",
            ENTRIES * 2,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            bytes as f64 / (1 << 20) as f64
        );
    }
}
