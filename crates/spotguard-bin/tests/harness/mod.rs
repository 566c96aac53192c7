//! The world the real `spotguard` binary runs in during end-to-end tests: moto behind the
//! fault proxy, the Kubernetes API server fake (with a kubeconfig the binary and `kubectl`
//! both use), local IMDS servers, and a stand-in kubelet that registers a Ready node for every
//! instance that appears in an Auto Scaling group and marks it NotReady once the instance
//! leaves.
//!
//! Everything fails loudly when a tool is missing (moto, `aws`, `kubectl`): these tests are
//! never skipped.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spotguard_aws::testing::{free_port, FaultProxy, GroupSpec, ImdsServer, MotoServer};
use spotguard_core::ledger::{EntryState, Ledger};
use spotguard_core::model::Group;
use spotguard_k8s::testing::{node, FakeApiServer, FakeConfig, Kubectl, PodBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

pub mod chart;

/// The spot group of the tests.
pub const SPOT: &str = "web-spot";
/// The on-demand group of the tests.
pub const ON_DEMAND: &str = "web-od";
/// Namespace of the ledger and the Leases.
pub const NAMESPACE: &str = "spotguard";
/// Credentials moto accepts (it checks none).
pub const AWS_ENV: [(&str, &str); 6] = [
    ("AWS_ACCESS_KEY_ID", "AKIDSPOTGUARDTEST"),
    ("AWS_SECRET_ACCESS_KEY", "spotguard-test-secret"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_PAGER", ""),
];

/// The servers, the scratch directory and the stand-in kubelet.
pub struct World {
    /// moto.
    pub moto: Arc<MotoServer>,
    /// The proxy the daemon talks to.
    pub proxy: FaultProxy,
    /// The API server fake.
    pub fake: Arc<FakeApiServer>,
    /// `kubectl` set up for the fake; its kubeconfig is the daemon's too.
    pub kubectl: Kubectl,
    /// Scratch directory: configuration, logs, state files.
    pub dir: tempfile::TempDir,
    kubelet: JoinHandle<()>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.kubelet.abort();
    }
}

/// Node name of an instance.
pub fn node_name(instance: &str) -> String {
    format!("node-{instance}")
}

impl World {
    /// Starts everything and creates the groups (spot groups first in `specs`).
    pub async fn start(specs: &[GroupSpec]) -> World {
        Self::start_with(specs, FakeConfig::default()).await
    }

    /// Like [`World::start`], with settings for the API server fake.
    pub async fn start_with(specs: &[GroupSpec], fake: FakeConfig) -> World {
        let moto = Arc::new(MotoServer::start().await);
        let proxy = FaultProxy::start(&moto.url()).await;
        moto.create_groups(specs).await;
        let fake = Arc::new(FakeApiServer::start_with(fake).await);
        fake.create(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        );
        let kubectl = fake.kubectl();
        let groups: Vec<(String, &'static str)> = specs
            .iter()
            .map(|s| {
                let capacity = match s.capacity {
                    spotguard_aws::testing::Capacity::Spot => "SPOT",
                    spotguard_aws::testing::Capacity::OnDemand => "ON_DEMAND",
                };
                (s.name.clone(), capacity)
            })
            .collect();
        let kubelet = tokio::spawn(kubelet(moto.clone(), fake.clone(), groups));
        let world = World {
            moto,
            proxy,
            fake,
            kubectl,
            dir: tempfile::tempdir().expect("scratch directory"),
            kubelet,
        };
        // Every instance there now has its node before a test starts.
        for spec in specs {
            let group = world.group(&spec.name).await;
            for i in &group.instances {
                world
                    .eventually(
                        &format!("node for {}", i.id),
                        Duration::from_secs(30),
                        || world.node(&node_name(&i.id)).is_some(),
                    )
                    .await;
            }
        }
        world
    }

    /// The group as moto has it.
    pub async fn group(&self, name: &str) -> Group {
        self.moto.group(name).await
    }

    /// Instance ids of a group, sorted.
    pub async fn instances(&self, name: &str) -> BTreeSet<String> {
        self.group(name).await.instance_ids().into_iter().collect()
    }

    /// The node object, if registered.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.fake.get("", "nodes", None, name)
    }

    /// The ledger as stored in its ConfigMap (empty when there is none yet).
    pub fn ledger(&self) -> Ledger {
        self.fake
            .get("", "configmaps", Some(NAMESPACE), "spotguard-ledger")
            .and_then(|cm| cm["data"]["ledger.json"].as_str().map(str::to_string))
            .map(|text| serde_json::from_str(&text).expect("ledger JSON"))
            .unwrap_or_default()
    }

    /// `count` running pods of ReplicaSet `app` on `node`.
    pub fn add_pods(&self, app: &str, node: &str, count: usize) {
        for i in 0..count {
            self.fake.create(
                PodBuilder::new("shop", &format!("{app}-{node}-{i}"), node)
                    .owned_by("ReplicaSet", app)
                    .label("app", app)
                    .build(),
            );
        }
    }

    /// Waits, polling every 100ms, until `check` holds; panics after `limit`.
    pub async fn eventually(&self, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
        let started = Instant::now();
        while !check() {
            assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the group satisfies `check`.
    pub async fn group_until(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        check: impl Fn(&Group) -> bool,
    ) -> Group {
        let started = Instant::now();
        loop {
            let group = self.group(name).await;
            if check(&group) {
                return group;
            }
            assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; {name} is {group:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes the shared configuration file and returns its path. `extra` is appended to
    /// the `[daemon]` table.
    pub fn config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("spotguard.toml");
        let text = format!(
            r#"groups = [{{ spot = "{SPOT}", on_demand = "{ON_DEMAND}" }}]

[timings]
imds_poll = "200ms"
asg_poll = "200ms"
scale_up_timeout = "30s"
monitor_interval = "500ms"
stability = "1s"
error_window = "2s"
cleanup_interval = "1m"

[drain]
timeout = "30s"

[daemon]
namespace = "{NAMESPACE}"
aws_endpoint = "{aws}"
aws_region = "us-east-1"
aws_max_attempts = 2
kubeconfig = "{kubeconfig}"
lease_duration = "3s"
shutdown_timeout = "5s"
startup_timeout = "20s"
log_level = "info"
{extra}
"#,
            aws = self.proxy.url(),
            kubeconfig = self.kubectl.kubeconfig().display(),
        );
        std::fs::write(&path, text).expect("write configuration");
        path
    }

    /// Starts `spotguard run --config <config> --role <role>` with `args`; an agent gets
    /// `imds`'s endpoint and a state file.
    pub fn spawn(
        &self,
        name: &str,
        role: &str,
        imds: Option<&ImdsServer>,
        args: &[&str],
    ) -> Daemon {
        let config = self.dir.path().join("spotguard.toml");
        assert!(config.exists(), "write the configuration first");
        let port = free_port();
        let log = self.dir.path().join(format!("{name}.log"));
        let mut command = Command::new(daemon_binary());
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--role", role])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(args);
        if let Some(imds) = imds {
            command
                .args(["--imds-endpoint", &imds.url()])
                .arg("--notice-state-file")
                .arg(self.dir.path().join(format!("{name}-notices.json")));
        }
        Daemon::spawn(name, command, log, port)
    }

    /// `aws autoscaling <args>` against moto directly, as JSON (`null` when it prints nothing).
    pub async fn aws(&self, args: &[&str]) -> Value {
        let out = Command::new("aws")
            .args([
                "--endpoint-url",
                &self.moto.url(),
                "--output",
                "json",
                "autoscaling",
            ])
            .args(args)
            .envs(AWS_ENV)
            .env("HOME", self.dir.path())
            .output()
            .await
            .unwrap_or_else(|e| {
                panic!("cannot run the aws CLI (install it with `pip install awscli`): {e}")
            });
        assert!(
            out.status.success(),
            "aws {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Value::Null; // an update prints nothing
        }
        serde_json::from_slice(&out.stdout).expect("aws prints JSON")
    }

    /// A group as the aws CLI describes it.
    pub async fn aws_group(&self, name: &str) -> Value {
        let out = self
            .aws(&[
                "describe-auto-scaling-groups",
                "--auto-scaling-group-names",
                name,
            ])
            .await;
        out["AutoScalingGroups"][0].clone()
    }

    /// `kubectl <args>` against the fake, as JSON (`-o json` is added).
    pub async fn kubectl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl.run(&all).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("kubectl prints JSON")
    }

    /// Requests to the fake that change something (anything but GET).
    pub fn writes_to_kubernetes(&self) -> Vec<(String, String, u16)> {
        self.fake
            .requests()
            .into_iter()
            .filter(|(method, _, _)| method != "GET")
            .collect()
    }
}

/// The stand-in kubelet and cloud controller: a Ready node per instance of the groups, NotReady
/// once the instance is gone.
async fn kubelet(
    moto: Arc<MotoServer>,
    fake: Arc<FakeApiServer>,
    groups: Vec<(String, &'static str)>,
) {
    let mut known: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut present = BTreeSet::new();
        for (group, capacity) in &groups {
            let g = moto.group(group).await;
            for i in g.instances.iter().filter(|i| i.is_serving()) {
                present.insert(i.id.clone());
                if known.insert(i.id.clone())
                    && fake.get("", "nodes", None, &node_name(&i.id)).is_none()
                {
                    fake.create(node(&node_name(&i.id), &i.id, capacity));
                }
            }
        }
        for gone in known.difference(&present).cloned().collect::<Vec<_>>() {
            known.remove(&gone);
            if fake.get("", "nodes", None, &node_name(&gone)).is_some() {
                fake.modify("", "nodes", None, &node_name(&gone), |n| {
                    n["status"]["conditions"] =
                        json!([{"type": "Ready", "status": "False", "reason": "InstanceTerminated"}]);
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `spotguard` process; killed when dropped.
pub struct Daemon {
    /// Name in messages.
    pub name: String,
    child: Child,
    /// Its output (stdout and stderr).
    pub log: PathBuf,
    /// Port of its endpoints.
    pub port: u16,
}

impl Daemon {
    fn spawn(name: &str, mut command: Command, log: PathBuf, port: u16) -> Daemon {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = command
            .envs(AWS_ENV)
            .env("HOME", log.parent().expect("log directory"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("start the spotguard binary");
        Daemon {
            name: name.to_string(),
            child,
            log,
            port,
        }
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Waits until `/readyz` answers 200; panics (with the log) if it exits or takes too long.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Some((200, _)) = http_get(self.port, "/readyz").await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before it was ready:\n{}",
                    self.name,
                    self.output()
                );
            }
            assert!(
                started.elapsed() < limit,
                "{} not ready after {limit:?}:\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        match http_get(self.port, "/metrics").await {
            Some((200, body)) => body,
            other => panic!("{} /metrics answered {other:?}", self.name),
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Sends SIGKILL and reaps the process.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "{} still running after {limit:?}:\n{}",
                self.name,
                self.output()
            ),
        }
    }

    /// Panics with the log unless it is still running.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status}:\n{}", self.name, self.output());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failing test shows what the process logged.
        if std::thread::panicking() {
            eprintln!("----- {} output -----\n{}", self.name, self.output());
        }
    }
}

/// `GET path` on 127.0.0.1:port: status and body, `None` when nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Runs `spotguard <args>` to completion: status, stdout, stderr.
pub async fn run_cli(
    args: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> (ExitStatus, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(env!("CARGO_BIN_EXE_spotguard"))
            .args(args)
            .envs(AWS_ENV)
            .envs(env.iter().copied())
            .env("HOME", dir)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("spotguard finished within two minutes")
    .expect("run spotguard");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The standard groups: spot `web-spot` (3 instances) and on-demand `web-od` with one
/// baseline instance.
pub fn standard_groups() -> Vec<GroupSpec> {
    vec![
        GroupSpec::spot(SPOT, 0, 10, 3),
        GroupSpec::on_demand(ON_DEMAND, 0, 5, 1),
    ]
}

/// What phase 1 left behind after a notice whose spot launch failed.
#[derive(Debug)]
pub struct Fallback {
    /// The at-risk spot instance (gone now).
    pub at_risk: String,
    /// The on-demand instance that stood in.
    pub on_demand: String,
    /// Its ledger entry.
    pub entry: String,
}

/// Waits until the controller has given the fallback back: the on-demand group back to one
/// instance without the fallback one, and its ledger entry released.
pub async fn fallback_given_back(world: &World, fallback: &Fallback, what: &str) {
    world
        .group_until(ON_DEMAND, what, Duration::from_secs(90), |g| {
            g.desired == 1 && !g.holds(&fallback.on_demand)
        })
        .await;
    world
        .eventually("the ledger entry released", Duration::from_secs(30), || {
            world
                .ledger()
                .get(&fallback.entry)
                .is_some_and(|e| e.state == EntryState::Released)
        })
        .await;
}

/// A rebalance notice for `at_risk` while spot launches fail: the agent raises the spot group,
/// sees the launch fail, falls back to on-demand, records it, drains the at-risk node and pays
/// the spot pre-scale back. Returns once all of that is visible in moto and the ledger.
pub async fn reach_fallback(world: &World, imds: &ImdsServer, at_risk: &str) -> Fallback {
    let spot_before = world.group(SPOT).await;
    let od_before = world.group(ON_DEMAND).await;
    // New spot instances stay Pending in every answer the daemon gets...
    world.proxy.delay_in_service(
        SPOT,
        &spot_before.instance_ids(),
        spotguard_aws::testing::Until::Cleared,
    );
    imds.set_rebalance(
        &humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    );
    let limit = Duration::from_secs(90);
    world
        .group_until(SPOT, "the spot pre-scale", limit, |g| {
            g.desired == spot_before.desired + 1
        })
        .await;
    // ...and the launch fails, as when the pools have no spot capacity.
    world.proxy.add_failed_activity(
        SPOT,
        "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot \
         capacity available that matches your request. Launching EC2 instance failed.",
    );
    let od = world
        .group_until(ON_DEMAND, "the on-demand fallback", limit, |g| {
            g.desired == od_before.desired + 1
        })
        .await;
    let before = od_before.instance_ids();
    let on_demand = od
        .instance_ids()
        .into_iter()
        .find(|i| !before.contains(i))
        .expect("moto launched the fallback instance");
    let mut entry = String::new();
    world
        .eventually("the fallback recorded with its instance", limit, || {
            let ledger = world.ledger();
            match ledger.entries.iter().find(|e| {
                e.kind == spotguard_core::ledger::EntryKind::Fallback
                    && e.instance.as_deref() == Some(on_demand.as_str())
            }) {
                Some(e) => {
                    entry = e.id.clone();
                    true
                }
                None => false,
            }
        })
        .await;
    world
        .group_until(SPOT, "the spot pre-scale paid back", limit, |g| {
            g.desired == spot_before.desired && !g.holds(at_risk)
        })
        .await;
    Fallback {
        at_risk: at_risk.to_string(),
        on_demand,
        entry,
    }
}

/// The daemon binary [`World::spawn`] runs: `SPOTGUARD_BENCH_BIN` when set (the benchmarks
/// measure the release build that ships; `benches/run.sh` sets it), else the one cargo built
/// for this test or benchmark.
pub fn daemon_binary() -> std::path::PathBuf {
    std::env::var_os("SPOTGUARD_BENCH_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_spotguard").into())
}
