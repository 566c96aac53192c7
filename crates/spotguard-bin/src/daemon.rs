//! `spotguard run`: wires the engine to AWS and Kubernetes and runs the roles.
//!
//! Start-up only reads: the configuration is validated, the API server and Auto Scaling are
//! reached (every configured group must exist), for an agent IMDS gives this node's instance
//! id, and the watch caches sync. An agent alone (`role = "agent"`) caches every node but only
//! the pods of its own node ([`CacheScope::Node`]): `daemon.node_name` when set, otherwise the
//! node whose `spec.providerID` holds the instance id. Any failure there is one error line and
//! a non-zero exit, with nothing changed anywhere. Only then do the roles start.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use spotguard_aws::{AwsCloud, AwsError, NoticeWatcher};
use spotguard_core::config::ConfigWarning;
use spotguard_core::engine::Engine;
use spotguard_core::ports::Clock;
use spotguard_k8s::cache::node_name_for_instance;
use spotguard_k8s::lease::default_identity;
use spotguard_k8s::{
    CacheScope, ConfigMapLedgerStore, KubeCluster, KubeClusterOptions, LeaderElector,
    LeaseLockConfig, LeaseScaleLock, NodeEvents,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::cli::RunArgs;
use crate::dry_run::DryRun;
use crate::endpoints::{Endpoints, Readiness};
use crate::metrics::{Metered, Metrics};
use crate::observer::{publish_node_events, DaemonObserver};
use crate::roles::{run_agent, run_controller};
use crate::settings::{DaemonConfig, LogFormat, Role, SettingsError};
use crate::shutdown::{self, Shutdown};

/// The engine as the daemon wires it.
pub type DaemonEngine = Engine<
    DryRun<AwsCloud>,
    DryRun<Metered<KubeCluster>>,
    SystemClock,
    DryRun<Metered<ConfigMapLedgerStore>>,
    DryRun<Metered<Arc<LeaseScaleLock>>>,
>;

/// The operating system's clock, with tokio's timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await
    }
}

/// Why the daemon could not start. Each displays as one line naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The metrics address cannot be listened on.
    #[error("cannot listen on {addr} (daemon.metrics_addr): {message}")]
    Listen {
        /// Address.
        addr: String,
        /// Why.
        message: String,
    },
    /// No usable Kubernetes client configuration.
    #[error("cannot load the Kubernetes client configuration{source_hint}: {message}")]
    KubeConfig {
        /// ` from FILE` when a file was named.
        source_hint: String,
        /// Why.
        message: String,
    },
    /// The API server did not answer.
    #[error("cannot reach the Kubernetes API server at {url}: {message}")]
    ApiServer {
        /// Its URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The watch caches did not sync.
    #[error(
        "the Kubernetes watch caches (nodes, pods and, unless an agent, PDBs) did not sync within {within}: {message}"
    )]
    Caches {
        /// The bound.
        within: String,
        /// Why.
        message: String,
    },
    /// Auto Scaling could not be reached or a group is missing.
    #[error("{0}")]
    Aws(String),
    /// IMDS could not be reached.
    #[error("cannot read this node's instance id from IMDS: {0}")]
    Imds(String),
    /// An agent without `daemon.node_name` found no node for its instance.
    #[error("{0}")]
    OwnNode(String),
}

impl StartError {
    fn exit_code(&self) -> ExitCode {
        match self {
            StartError::Settings(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// One line: errors of the SDKs may carry newlines.
fn one_line(s: impl std::fmt::Display) -> String {
    s.to_string()
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `spotguard run`.
pub fn run(args: RunArgs) -> ExitCode {
    let (config, warnings) = match crate::effective_config(args.config.as_deref(), args.overrides) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("spotguard: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(config.daemon.log_format, &config.daemon.log_level) {
        eprintln!("spotguard: {e}");
        return ExitCode::from(2);
    }
    // An agent waits on IMDS and the API server and runs phase 1 once in a while: one worker
    // keeps its threads, stacks and allocator arenas to the minimum on every spot node. The
    // controller judges the whole cluster each tick: two.
    let workers = if config.daemon.role.runs_controller() {
        2
    } else {
        1
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spotguard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(config, warnings));
    // Tasks still waiting on sockets (the endpoints, watchers) are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "spotguard cannot start");
            eprintln!("spotguard: {}", one_line(&e));
            e.exit_code()
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) -> Result<(), SettingsError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| {
        SettingsError::Invalid(spotguard_core::config::ConfigError {
            field: "daemon.log_level".into(),
            value: format!("{filter:?}"),
            problem: one_line(e),
        })
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

async fn kube_config(config: &DaemonConfig) -> Result<kube::Config, StartError> {
    match &config.daemon.kubeconfig {
        Some(path) => {
            let hint = format!(" from {}", path.display());
            let file =
                kube::config::Kubeconfig::read_from(path).map_err(|e| StartError::KubeConfig {
                    source_hint: hint.clone(),
                    message: one_line(e),
                })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| StartError::KubeConfig {
                    source_hint: hint,
                    message: one_line(e),
                })
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| StartError::KubeConfig {
                source_hint: String::new(),
                message: one_line(e),
            }),
    }
}

/// The agent's own node: `daemon.node_name` (`SPOTGUARD_NODE_NAME`, which the chart sets from
/// `spec.nodeName`) when set, otherwise the node whose `spec.providerID` names `instance`,
/// found with one paged list of the nodes.
async fn own_node(
    d: &crate::settings::DaemonSettings,
    client: &kube::Client,
    instance: &str,
    within: Duration,
) -> Result<String, StartError> {
    if let Some(name) = &d.node_name {
        return Ok(name.clone());
    }
    let unresolved = |why: String| {
        StartError::OwnNode(format!(
            "cannot find this agent's node for instance {instance}: {why} (set daemon.node_name / SPOTGUARD_NODE_NAME)"
        ))
    };
    match tokio::time::timeout(within, node_name_for_instance(client.clone(), instance)).await {
        Ok(Ok(Some(name))) => {
            tracing::info!(%instance, node = %name, "daemon.node_name not set; found this agent's node by its instance id");
            Ok(name)
        }
        Ok(Ok(None)) => Err(unresolved(format!(
            "no node has {instance} in its spec.providerID"
        ))),
        Ok(Err(e)) => Err(unresolved(one_line(e))),
        Err(_) => Err(unresolved(format!(
            "no answer within {} (daemon.startup_timeout)",
            humantime::format_duration(within)
        ))),
    }
}

/// Start-up checks, then the roles until shutdown.
async fn serve(config: DaemonConfig, warnings: Vec<ConfigWarning>) -> Result<(), StartError> {
    let d = config.daemon.clone();
    let role = d.role;
    for w in &warnings {
        tracing::warn!(field = %w.field, "{}", w.message);
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        role = role.as_str(),
        dry_run = d.dry_run,
        groups = ?config.engine.group_names(),
        "spotguard starting"
    );
    let shutdown = Shutdown::new();
    shutdown::on_signals(shutdown.clone()).map_err(|e| StartError::Listen {
        addr: "signals".into(),
        message: e.to_string(),
    })?;
    let metrics = Metrics::new(role.as_str(), d.dry_run);
    let readiness = Arc::new(Readiness::new(role.runs_agent()));

    // Endpoints first, so probes get answers while the caches sync.
    let listener = TcpListener::bind(&d.metrics_addr)
        .await
        .map_err(|e| StartError::Listen {
            addr: d.metrics_addr.clone(),
            message: e.to_string(),
        })?;
    let endpoints = Arc::new(Endpoints {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
    });
    tokio::spawn(endpoints.serve(listener));

    let within = d.startup_timeout;
    let bounded = |what: &str| {
        format!(
            "no answer within {} ({what})",
            humantime::format_duration(within)
        )
    };

    // Kubernetes: configuration and one read.
    let kube_config = kube_config(&config).await?;
    let url = kube_config.cluster_url.to_string();
    let client =
        kube::Client::try_from(kube_config.clone()).map_err(|e| StartError::ApiServer {
            url: url.clone(),
            message: one_line(e),
        })?;
    match tokio::time::timeout(within, client.apiserver_version()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(StartError::ApiServer {
                url,
                message: one_line(e),
            })
        }
        Err(_) => {
            return Err(StartError::ApiServer {
                url,
                message: bounded("daemon.startup_timeout"),
            })
        }
    }

    // Auto Scaling: every configured group must exist.
    let mut builder = AwsCloud::builder().retry_config(
        spotguard_aws::cloud::default_retry_config().with_max_attempts(d.aws_max_attempts),
    );
    if let Some(endpoint) = &d.aws_endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    if let Some(region) = &d.aws_region {
        builder = builder.region(region);
    }
    let cloud = builder.load().await;
    let where_ = d
        .aws_endpoint
        .clone()
        .unwrap_or_else(|| "the region's endpoint".into());
    let groups = match tokio::time::timeout(within, cloud.check_groups(&config.engine.group_names())).await {
        Ok(Ok(groups)) => groups,
        Ok(Err(AwsError::MissingGroups { groups })) => {
            return Err(StartError::Aws(format!(
                "auto scaling groups not found at {where_}: {} (check the groups setting and the region)",
                groups.join(", ")
            )))
        }
        Ok(Err(e)) => {
            return Err(StartError::Aws(format!(
                "cannot reach Auto Scaling at {where_}: {}",
                one_line(e)
            )))
        }
        Err(_) => {
            return Err(StartError::Aws(format!(
                "cannot reach Auto Scaling at {where_}: {}",
                bounded("daemon.startup_timeout")
            )))
        }
    };
    for g in groups.iter().filter(|g| g.capacity_rebalance) {
        tracing::warn!(group = %g.name, policy = ?config.engine.capacity_rebalance, "group has Capacity Rebalancing enabled");
    }
    Readiness::set(&readiness.groups_checked);
    let counter = cloud.counter().clone();
    metrics.on_scrape(move |m| m.sync_aws(&counter));

    // Agent: this node's instance, read before anything acts (and before the caches, which an
    // agent scopes to its node).
    let watcher = if role.runs_agent() {
        let mut b = NoticeWatcher::builder();
        if let Some(endpoint) = &d.imds_endpoint {
            b = b.endpoint(endpoint);
        }
        if let Some(file) = &d.notice_state_file {
            b = b.state_file(file);
        }
        let watcher = match tokio::time::timeout(within, b.connect()).await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return Err(StartError::Imds(one_line(e))),
            Err(_) => return Err(StartError::Imds(bounded("daemon.startup_timeout"))),
        };
        let instance = watcher.instance_id().to_string();
        if !groups
            .iter()
            .any(|g| g.holds(&instance) && config.engine.pair_for_spot(&g.name).is_some())
        {
            tracing::warn!(%instance, "this instance is in none of the configured spot groups; its notices will be rejected");
        }
        let stats = watcher.stats();
        metrics.on_scrape(move |m| m.sync_imds(&stats));
        Readiness::set(&readiness.imds_connected);
        Some(watcher)
    } else {
        None
    };

    // An agent alone caches every node but only its own node's pods, and no PDBs.
    let agent_node = match (&watcher, role) {
        (Some(w), Role::Agent) => Some(own_node(&d, &client, w.instance_id(), within).await?),
        _ => None,
    };

    // Kubernetes caches.
    let events_on = d.events && !d.dry_run;
    let instance_name = std::env::var("POD_NAME")
        .ok()
        .or_else(|| d.node_name.clone());
    let cluster = KubeCluster::from_config(
        kube_config,
        KubeClusterOptions {
            event_reporter: events_on.then(|| "spotguard".to_string()),
            event_instance: instance_name.clone(),
            cache_scope: match &agent_node {
                Some(name) => CacheScope::Node { name: name.clone() },
                None => CacheScope::Cluster,
            },
            ..KubeClusterOptions::default()
        },
    )
    .map_err(|e| StartError::ApiServer {
        url: url.clone(),
        message: one_line(e),
    })?;
    match tokio::time::timeout(within, cluster.ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(StartError::Caches {
                within: humantime::format_duration(within).to_string(),
                message: one_line(e),
            })
        }
        Err(_) => {
            return Err(StartError::Caches {
                within: humantime::format_duration(within).to_string(),
                message: "still listing".into(),
            })
        }
    }
    Readiness::set(&readiness.caches_synced);

    // The engine and its observer.
    let on_demand: HashSet<String> = config
        .engine
        .groups
        .iter()
        .map(|p| p.on_demand.clone())
        .collect();
    let mut observer = DaemonObserver::new(metrics.clone(), on_demand);
    if events_on {
        let (sender, queue) = mpsc::channel(256);
        tokio::spawn(publish_node_events(
            NodeEvents::new(client.clone(), "spotguard", instance_name),
            queue,
        ));
        observer = observer.with_events(sender);
    }
    if let (Some(w), Some(node)) = (&watcher, agent_node.as_ref().or(d.node_name.as_ref())) {
        observer = observer.with_own_node(w.instance_id().to_string(), node.clone());
    }
    let identity = default_identity();
    let lock = Arc::new(LeaseScaleLock::new(
        client.clone(),
        LeaseLockConfig {
            namespace: d.namespace.clone(),
            name_prefix: d.scale_lock_prefix.clone(),
            identity: identity.clone(),
            duration: d.lease_duration,
            ..LeaseLockConfig::default()
        },
    ));
    let store = ConfigMapLedgerStore::new(client.clone(), &d.namespace, &d.ledger_configmap);
    let dry = d.dry_run;
    let engine: Arc<DaemonEngine> = Arc::new(
        Engine::new(
            config.engine.clone(),
            DryRun::new(cloud, dry, metrics.clone()),
            DryRun::new(Metered::new(cluster, metrics.clone()), dry, metrics.clone()),
            SystemClock,
            DryRun::new(Metered::new(store, metrics.clone()), dry, metrics.clone()),
            DryRun::new(
                Metered::new(lock.clone(), metrics.clone()),
                dry,
                metrics.clone(),
            ),
        )
        .with_observer(observer),
    );

    tracing::info!(role = role.as_str(), identity = %identity, "spotguard ready");
    let mut roles = tokio::task::JoinSet::new();
    if let Some(watcher) = watcher {
        roles.spawn(run_agent(
            engine.clone(),
            watcher,
            shutdown.clone(),
            d.shutdown_timeout,
        ));
    }
    if role.runs_controller() {
        let elector = (!dry).then(|| {
            LeaderElector::new(
                client.clone(),
                &d.namespace,
                &d.leader_lease,
                &identity,
                d.lease_duration,
            )
        });
        if dry {
            tracing::info!(
                "dry-run: no leader election (it writes a Lease); this replica monitors"
            );
        }
        roles.spawn(run_controller(
            engine.clone(),
            elector,
            metrics.clone(),
            shutdown.clone(),
            d.shutdown_timeout,
        ));
    }
    while let Some(done) = roles.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a role stopped unexpectedly");
            shutdown.trigger();
        }
    }
    // A notice handler abandoned at shutdown may still hold a group's scale lock: give it up
    // now, so the agents of the other at-risk nodes raise at once instead of waiting for the
    // Lease to expire.
    let released = lock.release_all().await;
    if !released.is_empty() {
        tracing::info!(groups = ?released, "scale lock leases released at shutdown");
    }
    // Every change was saved to the ledger as it was made; read it back once so the last
    // line states what the next process will resume.
    match engine.ledger().await {
        Ok(ledger) => {
            let open = ledger.open().count();
            tracing::info!(open, "ledger persisted; spotguard stopped");
        }
        Err(e) => {
            tracing::warn!(error = %e, "spotguard stopped; the ledger could not be read back")
        }
    }
    Ok(())
}
