//! The real `spotguard` binary, built in the bench profile, against moto (behind the fault
//! proxy), the local IMDS server and the real Kubernetes control plane of the end-to-end
//! tests (kube-apiserver v1.37.2 and its controllers, kwok nodes), each process as its role's
//! ServiceAccount with the chart's RBAC.
//!
//! - Reaction latency: an agent with the default `imds_poll` of 2s; a rebalance notice is put
//!   at its IMDS endpoint at a random moment, and the time until the `SetDesiredCapacity` of
//!   the spot pre-scale reaches the proxy in front of moto is recorded. Each notice is for a
//!   fresh spot instance watched by a fresh agent; the flow (pre-scale, drain, payback) is let
//!   finish before the next. `SPOTGUARD_BENCH_NOTICES` sets the number of notices (50).
//! - Footprint: idle RSS (VmRSS), peak RSS (VmHWM) and CPU (utime + stime over 30s,
//!   `SPOTGUARD_BENCH_IDLE_SECS`) of `spotguard run --role agent` and `--role controller` with
//!   the production timings, while the cluster holds 1,000 kwok nodes and 30,000 pods
//!   (`SPOTGUARD_BENCH_FOOTPRINT_NODES`, 30 pods each); and of an agent before those are added
//!   (the test groups' few nodes): the process's baseline.
//!
//! Prints markdown tables.
#![cfg(feature = "daemon")]

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant, SystemTime};

use harness::{World, ON_DEMAND, SPOT};
use spotguard_aws::testing::{GroupSpec, ImdsServer};

const POLL: Duration = Duration::from_secs(2);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Switches the test configuration to production timings where they matter here.
fn production_timings(world: &World, monitor: bool) {
    let path = world.config("");
    let mut text = std::fs::read_to_string(&path).expect("read configuration");
    text = text
        .replace("imds_poll = \"200ms\"", "imds_poll = \"2s\"")
        // A controller's first sync of 30,000 pods takes longer than the tests' 20s.
        .replace("startup_timeout = \"20s\"", "startup_timeout = \"5m\"");
    if monitor {
        text = text
            .replace("monitor_interval = \"500ms\"", "monitor_interval = \"30s\"")
            .replace("stability = \"1s\"", "stability = \"2m\"")
            .replace("error_window = \"2s\"", "error_window = \"10m\"");
    }
    std::fs::write(&path, text).expect("write configuration");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (VmRSS KiB, VmHWM KiB) of a process.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The resident memory by kind (heap and stacks, the mapped binary and libraries), for the log.
fn memory_breakdown(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .filter(|l| {
            l.starts_with("RssAnon:") || l.starts_with("RssFile:") || l.starts_with("Threads:")
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

async fn reaction_latency(world: &World, notices: usize) -> Vec<Duration> {
    production_timings(world, false);
    let mut used = std::collections::BTreeSet::new();
    let mut latencies = Vec::with_capacity(notices);
    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos() as u64;
    for n in 0..notices {
        let before = world.group(SPOT).await;
        let at_risk = before
            .instance_ids()
            .into_iter()
            .find(|i| !used.contains(i))
            .expect("an instance not used yet");
        used.insert(at_risk.clone());
        let imds = ImdsServer::start(&at_risk).await;
        let mut agent = world.spawn(&format!("agent-{n}"), "agent", Some(&imds), &[]);
        agent.wait_ready(Duration::from_secs(60)).await;
        // The notice appears at a random moment of the poll interval.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let phase = Duration::from_millis((seed >> 33) % POLL.as_millis() as u64);
        tokio::time::sleep(phase).await;
        let sent = world.proxy.received("SetDesiredCapacity");
        let started = Instant::now();
        imds.set_rebalance(&humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        while world.proxy.received("SetDesiredCapacity") == sent {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no SetDesiredCapacity within 30s:\n{}",
                agent.output()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(started.elapsed());
        // Let the flow finish: the at-risk instance drained and terminated with decrement.
        world
            .group_until(
                SPOT,
                "the pre-scale paid back",
                Duration::from_secs(60),
                |g| g.desired == before.desired && !g.holds(&at_risk),
            )
            .await;
        agent.terminate();
        agent.wait_exit(Duration::from_secs(30)).await;
        eprintln!(
            "notice {}/{notices}: {:.0} ms",
            n + 1,
            ms(*latencies.last().expect("just pushed"))
        );
    }
    latencies.sort();
    latencies
}

struct Footprint {
    role: &'static str,
    rss_kib: u64,
    hwm_kib: u64,
    cpu_percent: f64,
}

async fn footprint(world: &World, role: &'static str, idle: Duration) -> Footprint {
    let imds = match role {
        "agent" => {
            let instance = world.group(SPOT).await.instance_ids()[0].clone();
            Some(ImdsServer::start(&instance).await)
        }
        _ => None,
    };
    let mut daemon = world.spawn(&format!("idle-{role}"), role, imds.as_ref(), &[]);
    daemon.wait_ready(Duration::from_secs(120)).await;
    // Settle: caches filled, first ticks done.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = daemon.pid();
    let start = cpu_ticks(pid);
    tokio::time::sleep(idle).await;
    let used = cpu_ticks(pid) - start;
    daemon.assert_running();
    let (rss_kib, hwm_kib) = rss(pid);
    eprintln!("{role}: {}", memory_breakdown(pid));
    daemon.terminate();
    daemon.wait_exit(Duration::from_secs(30)).await;
    Footprint {
        role,
        rss_kib,
        hwm_kib,
        cpu_percent: used as f64 / clock_ticks_per_second() / idle.as_secs_f64() * 100.0,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list`: nothing to list beyond this binary.
        return;
    }
    let binary = harness::daemon_binary();
    let size = std::fs::metadata(&binary)
        .map(|m| m.len())
        .unwrap_or_default();
    eprintln!(
        "daemon binary: {} ({:.1} MiB)",
        binary.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    let notices = env_usize("SPOTGUARD_BENCH_NOTICES", 50);
    let idle = Duration::from_secs(env_usize("SPOTGUARD_BENCH_IDLE_SECS", 30) as u64);
    let world = World::start(&[
        GroupSpec::spot(SPOT, 0, 20, 3),
        GroupSpec::on_demand(ON_DEMAND, 0, 5, 0),
    ])
    .await;

    let latencies = reaction_latency(&world, notices).await;
    production_timings(&world, true);
    let admin = world.admin();
    let count = |what: &'static str| {
        let admin = admin.clone();
        async move {
            let params = kube::api::ListParams::default();
            match what {
                "nodes" => kube::Api::<k8s_openapi::api::core::v1::Node>::all(admin)
                    .list_metadata(&params)
                    .await
                    .map(|l| l.items.len()),
                _ => kube::Api::<k8s_openapi::api::core::v1::Pod>::all(admin)
                    .list_metadata(&params)
                    .await
                    .map(|l| l.items.len()),
            }
            .expect("counting objects")
        }
    };
    let nodes_before = count("nodes").await;
    let pods_before = count("pods").await;
    let baseline = footprint(&world, "agent", idle).await;

    // A 1,000-node cluster with 30,000 pods for the caches.
    let nodes = env_usize("SPOTGUARD_BENCH_FOOTPRINT_NODES", 1_000);
    let populated = world
        .cp
        .populate(&world.namespace, "bench-node", nodes, 30, 200)
        .await;
    eprintln!(
        "cluster populated: {} nodes, {} pods created in {:.0} s, all Running {:.0} s later",
        populated.nodes.len(),
        populated.pods,
        populated.created_in.as_secs_f64(),
        populated.running_in.as_secs_f64()
    );
    let agent = footprint(&world, "agent", idle).await;
    let controller = footprint(&world, "controller", idle).await;

    let p50 = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);
    let poll = POLL.as_secs_f64();
    println!();
    println!("| notices | imds_poll | p50 | p99 | max | p50 / poll | p99 / poll |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.0} s | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} | {:.2} |",
        latencies.len(),
        poll,
        ms(p50),
        ms(p99),
        ms(*latencies.last().expect("at least one notice")),
        p50.as_secs_f64() / poll,
        p99.as_secs_f64() / poll,
    );
    println!();
    println!(
        "| role | cluster | idle RSS | peak RSS | idle CPU (over {} s) | target RSS | met |",
        idle.as_secs()
    );
    println!("|---|---|---:|---:|---:|---:|---|");
    let small = format!("{nodes_before} nodes, {pods_before} pods (baseline)");
    let large = format!(
        "{} nodes, {} pods",
        count("nodes").await,
        count("pods").await
    );
    for (f, cluster, target_mib) in [
        (baseline, small, 16.0),
        (agent, large.clone(), 16.0),
        (controller, large, 64.0),
    ] {
        let mib = f.rss_kib as f64 / 1024.0;
        println!(
            "| {} | {cluster} | {:.1} MiB | {:.1} MiB | {:.2}% of one core | < {:.0} MiB | {} |",
            f.role,
            mib,
            f.hwm_kib as f64 / 1024.0,
            f.cpu_percent,
            target_mib,
            if mib < target_mib { "yes" } else { "no" }
        );
    }
}
