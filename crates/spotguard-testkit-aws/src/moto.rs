//! moto in server mode as a child process, and fixtures for Auto Scaling groups.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{autoscaling_client, free_port, TEST_REGION};

/// How long moto may take to answer after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether a group launches spot or on-demand instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capacity {
    /// A launch configuration with a spot price.
    Spot,
    /// A launch configuration without one.
    OnDemand,
}

impl Capacity {
    fn launch_configuration(self) -> &'static str {
        match self {
            Capacity::Spot => "spotguard-test-spot",
            Capacity::OnDemand => "spotguard-test-on-demand",
        }
    }
}

/// A group to create in moto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// Group name.
    pub name: String,
    /// Minimum size.
    pub min: u32,
    /// Maximum size.
    pub max: u32,
    /// Desired capacity (moto launches that many instances at once, all `InService`).
    pub desired: u32,
    /// Spot or on-demand.
    pub capacity: Capacity,
    /// Capacity Rebalancing enabled.
    pub capacity_rebalance: bool,
}

impl GroupSpec {
    /// A spot group.
    pub fn spot(name: impl Into<String>, min: u32, max: u32, desired: u32) -> Self {
        Self {
            name: name.into(),
            min,
            max,
            desired,
            capacity: Capacity::Spot,
            capacity_rebalance: false,
        }
    }

    /// An on-demand group.
    pub fn on_demand(name: impl Into<String>, min: u32, max: u32, desired: u32) -> Self {
        Self {
            capacity: Capacity::OnDemand,
            ..Self::spot(name, min, max, desired)
        }
    }

    /// With Capacity Rebalancing enabled.
    pub fn with_capacity_rebalance(mut self) -> Self {
        self.capacity_rebalance = true;
        self
    }
}

/// moto in server mode on a free port of 127.0.0.1, killed when dropped.
///
/// The interpreter is `python3` or `$SPOTGUARD_PYTHON`; moto must be installed with its server
/// extra (`pip install 'moto[server]'`).
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    port: u16,
    log: PathBuf,
    launch_configurations: Mutex<HashSet<Capacity>>,
}

impl MotoServer {
    /// Starts moto and waits until it answers HTTP. Panics with moto's own output when it
    /// cannot be started.
    pub async fn start() -> MotoServer {
        let python = std::env::var("SPOTGUARD_PYTHON").unwrap_or_else(|_| "python3".to_string());
        let mut last_failure = String::new();
        // A port found free can be taken before moto binds it: try a few.
        for _ in 0..3 {
            let port = free_port();
            let log = std::env::temp_dir()
                .join(format!("spotguard-moto-{}-{port}.log", std::process::id()));
            let log_file = std::fs::File::create(&log)
                .unwrap_or_else(|e| panic!("cannot create moto's log {}: {e}", log.display()));
            let child = Command::new(&python)
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start moto with `{python} -m moto.server`: {e}. \
                         Install it with `pip install 'moto[server]'` or set SPOTGUARD_PYTHON."
                    )
                });
            let mut server = MotoServer {
                child,
                port,
                log,
                launch_configurations: Mutex::new(HashSet::new()),
            };
            match server.wait_until_ready().await {
                Ok(()) => return server,
                Err(failure) => last_failure = failure,
            }
        }
        panic!(
            "moto (`{python} -m moto.server`) did not start: {last_failure}\n\
             Install it with `pip install 'moto[server]'` or set SPOTGUARD_PYTHON."
        );
    }

    async fn wait_until_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "it exited with {status}; its output:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            if answers_http(self.port).await {
                return Ok(());
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                return Err(format!(
                    "no answer on port {} after {STARTUP_TIMEOUT:?}; its output:\n{}",
                    self.port,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A plain Auto Scaling client for fixtures.
    pub fn client(&self) -> aws_sdk_autoscaling::Client {
        autoscaling_client(&self.url())
    }

    /// Creates the group (and, once, the launch configuration it uses). Panics on failure.
    pub async fn create_group(&self, spec: &GroupSpec) {
        let client = self.client();
        self.ensure_launch_configuration(&client, spec.capacity)
            .await;
        let count = |v: u32| i32::try_from(v).expect("group size fits in i32");
        client
            .create_auto_scaling_group()
            .auto_scaling_group_name(&spec.name)
            .launch_configuration_name(spec.capacity.launch_configuration())
            .min_size(count(spec.min))
            .max_size(count(spec.max))
            .desired_capacity(count(spec.desired))
            .availability_zones(format!("{TEST_REGION}a"))
            .capacity_rebalance(spec.capacity_rebalance)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "creating group {} in moto failed: {}",
                    spec.name,
                    aws_sdk_autoscaling::error::DisplayErrorContext(e)
                )
            });
    }

    /// Creates every group.
    pub async fn create_groups(&self, specs: &[GroupSpec]) {
        for spec in specs {
            self.create_group(spec).await;
        }
    }

    /// The group as moto has it now, read with an uncounted client. Panics when it is missing.
    pub async fn group(&self, name: &str) -> spotguard_core::model::Group {
        let out = self
            .client()
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "describing group {name} in moto failed: {}",
                    aws_sdk_autoscaling::error::DisplayErrorContext(e)
                )
            });
        out.auto_scaling_groups()
            .first()
            .map(spotguard_aws::cloud::map_group)
            .unwrap_or_else(|| panic!("group {name} does not exist in moto"))
    }

    async fn ensure_launch_configuration(
        &self,
        client: &aws_sdk_autoscaling::Client,
        capacity: Capacity,
    ) {
        if self
            .launch_configurations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&capacity)
        {
            return;
        }
        let mut request = client
            .create_launch_configuration()
            .launch_configuration_name(capacity.launch_configuration())
            .image_id("ami-12c6146b")
            .instance_type("t3.micro");
        if capacity == Capacity::Spot {
            request = request.spot_price("0.05");
        }
        match request.send().await {
            Ok(_) => {}
            Err(e) if e.code() == Some("AlreadyExists") => {}
            Err(e) => panic!(
                "creating launch configuration {} in moto failed: {}",
                capacity.launch_configuration(),
                aws_sdk_autoscaling::error::DisplayErrorContext(e)
            ),
        }
        self.launch_configurations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(capacity);
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether something on the port answers an HTTP request.
async fn answers_http(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = b"GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head)).await,
        Ok(Ok(_)) if head.starts_with(b"HTTP/1.")
    )
}
