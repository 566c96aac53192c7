//! The real `spotguard` binary, built in the bench profile, against moto (behind the fault
//! proxy), the local IMDS server and the real Kubernetes control plane of the end-to-end
//! tests (kube-apiserver v1.37.2 and its controllers, kwok nodes), each process as its role's
//! ServiceAccount with the chart's RBAC.
//!
//! - Reaction latency, two ways in one run: a rebalance notice is put at an IMDS endpoint at a
//!   random moment of the default `imds_poll` of 2s, and the time from the poll that first
//!   answered it (the moment the agent saw it) until the `SetDesiredCapacity` of the spot
//!   pre-scale reaches the proxy in front of moto is recorded: the poll interval, which both
//!   ways share, is left out. *Hand-over*: an agent process (the agents' token, no AWS credentials) marks its
//!   node and the leading controller process, woken by its node watch, runs phase 1 — the
//!   production topology. *In-process*: one `--role all` process whose agent hands the notice
//!   straight to its own controller, as when the agent ran phase 1 itself. Each notice is for
//!   a fresh spot instance watched by a fresh process; the flow (pre-scale, drain, payback) is
//!   let finish before the next. `SPOTGUARD_BENCH_NOTICES` sets the number of notices of each
//!   (50).
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
use spotguard_testkit_aws::{GroupSpec, ImdsServer};

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

/// How a notice reaches phase 1 in a latency run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// An agent process marks its node; a controller process takes the record in.
    HandOver,
    /// One `--role all` process: straight from its agent to its controller.
    InProcess,
}

/// The latency of each notice, in order; the moments the notices appear at come from `seed`.
async fn reaction_latency(
    world: &World,
    notices: usize,
    topology: Topology,
    mut seed: u64,
) -> Vec<Duration> {
    production_timings(world, false);
    let mut controller = match topology {
        Topology::HandOver => {
            let mut c = world.spawn("controller", "controller", None, &[]).await;
            c.wait_ready(Duration::from_secs(60)).await;
            leading(&c).await;
            Some(c)
        }
        Topology::InProcess => None,
    };
    let mut latencies = Vec::with_capacity(notices);
    for n in 0..notices {
        let before = world.group(SPOT).await;
        // The instances of the group now are never used before: each run pays its
        // pre-scale back by terminating the at-risk one.
        let at_risk = before.instance_ids()[0].clone();
        let imds = ImdsServer::start(&at_risk).await;
        let (name, role) = match topology {
            Topology::HandOver => (format!("agent-{n}"), "agent"),
            Topology::InProcess => (format!("all-{n}"), "all"),
        };
        let mut process = world.spawn(&name, role, Some(&imds), &[]).await;
        process.wait_ready(Duration::from_secs(60)).await;
        if topology == Topology::InProcess {
            leading(&process).await;
        }
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
                process.output()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let set = Instant::now();
        // From the poll that answered the notice: what EC2's notice costs beyond the poll
        // interval, which both ways share.
        let seen = imds
            .rebalance_first_served()
            .expect("the notice was served before it was acted on");
        latencies.push(set.saturating_duration_since(seen));
        // Let the flow finish: the at-risk instance drained and terminated with decrement.
        world
            .group_until(
                SPOT,
                "the pre-scale paid back",
                Duration::from_secs(60),
                |g| g.desired == before.desired && !g.holds(&at_risk),
            )
            .await;
        process.terminate();
        process.wait_exit(Duration::from_secs(30)).await;
        eprintln!(
            "{} notice {}/{notices}: {:.0} ms",
            match topology {
                Topology::HandOver => "hand-over",
                Topology::InProcess => "in-process",
            },
            n + 1,
            ms(*latencies.last().expect("just pushed"))
        );
    }
    if let Some(c) = controller.as_mut() {
        c.terminate();
        c.wait_exit(Duration::from_secs(30)).await;
    }
    latencies
}

fn sorted(latencies: &[Duration]) -> Vec<Duration> {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    sorted
}

/// Waits until the process leads (it takes notices in only then).
async fn leading(process: &harness::Daemon) {
    harness::eventually("leading", Duration::from_secs(60), || async {
        process.metrics().await.contains("spotguard_leader 1")
    })
    .await;
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
    let mut daemon = world
        .spawn(&format!("idle-{role}"), role, imds.as_ref(), &[])
        .await;
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

    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos() as u64;
    let handed_over = reaction_latency(&world, notices, Topology::HandOver, seed).await;
    let in_process = reaction_latency(&world, notices, Topology::InProcess, seed).await;
    // Notice by notice: the n-th of one way against the n-th of the other.
    let mut paired: Vec<f64> = handed_over
        .iter()
        .zip(&in_process)
        .map(|(h, i)| ms(*h) - ms(*i))
        .collect();
    paired.sort_by(f64::total_cmp);
    let (handed_over, in_process) = (sorted(&handed_over), sorted(&in_process));
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

    let poll = POLL.as_secs_f64();
    println!();
    println!(
        "| notice seen → SetDesiredCapacity | notices | imds_poll | p50 | p99 | max | p50 / poll |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (how, latencies) in [
        (
            "hand-over: agent marks its node, controller takes it in",
            &handed_over,
        ),
        (
            "in-process: agent and controller in one process",
            &in_process,
        ),
    ] {
        let p50 = percentile(latencies, 0.5);
        println!(
            "| {how} | {} | {:.0} s | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} |",
            latencies.len(),
            poll,
            ms(p50),
            ms(percentile(latencies, 0.99)),
            ms(*latencies.last().expect("at least one notice")),
            p50.as_secs_f64() / poll,
        );
    }
    println!();
    println!(
        "Hand-over minus in-process: {:+.0} ms at the median; notice by notice (the n-th of \
         one against the n-th of the other), median {:+.0} ms, from {:+.0} to {:+.0} ms.",
        ms(percentile(&handed_over, 0.5)) - ms(percentile(&in_process, 0.5)),
        paired[paired.len() / 2],
        paired[0],
        paired[paired.len() - 1],
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
