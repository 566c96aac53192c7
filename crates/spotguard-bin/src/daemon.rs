//! `spotguard run`: wires the roles to AWS and Kubernetes and runs them.
//!
//! Start-up only reads. The configuration is validated and the API server reached. An agent
//! reads its instance id from IMDS and its own Node (`daemon.node_name`, which the chart sets
//! from `spec.nodeName`; otherwise the node whose `spec.providerID` holds the instance id, if
//! the agent may list nodes): it needs nothing else, no cloud credentials and no watch cache.
//! A controller reaches Auto Scaling (every configured group must exist) and syncs its watch
//! caches. Any failure there is one error line and a non-zero exit, with nothing changed
//! anywhere. Only then do the roles start.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node as KNode;
use kube::Api;
use spotguard_aws::{AwsCloud, AwsError, NoticeWatcher};
use spotguard_core::config::ConfigWarning;
use spotguard_core::engine::Engine;
use spotguard_k8s::cache::node_name_for_instance;
use spotguard_k8s::lease::default_identity;
use spotguard_k8s::{
    CacheScope, ConfigMapLedgerStore, ConfigMapStatusStore, KubeCluster, KubeClusterOptions,
    LeaderElector, LeaseLockConfig, LeaseScaleLock, NodeEvents, TokioClock,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::cli::RunArgs;
use crate::dry_run::DryRun;
use crate::endpoints::{Endpoints, Readiness};
use crate::metrics::{Metered, Metrics};
use crate::notify::Notifier;
use crate::observer::{publish_node_events, DaemonObserver, NoticeNodes};
use crate::roles::{run_agent, run_controller, Handover, NodeMarker, NoticeIntake};
use crate::settings::{DaemonConfig, LogFormat, SettingsError};
use crate::shutdown::{self, Shutdown};
use crate::status_book::{StatusBook, StatusPublisher};
use crate::wiring::DaemonEngine;

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
    /// The webhook client could not be built.
    #[error("{0}")]
    Webhook(String),
}

/// The host of a URL, for logs that must not print a webhook's secret path.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    host.rsplit('@').next().unwrap_or_default()
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
pub(crate) fn one_line(s: impl std::fmt::Display) -> String {
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
    // An agent waits on IMDS and writes its node once in a while: one worker
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

/// The Kubernetes client configuration: from `kubeconfig` when given, otherwise inferred
/// (in-cluster, then `$KUBECONFIG`, then `~/.kube/config`); `context` picks a kubeconfig
/// context other than the current one. Errors name the file and the context.
pub(crate) async fn kube_config(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<kube::Config, StartError> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let in_context = context.map_or(String::new(), |c| format!(", context {c}"));
    let failed = |hint: String| {
        move |e: kube::config::KubeconfigError| StartError::KubeConfig {
            source_hint: hint,
            message: one_line(e),
        }
    };
    match (kubeconfig, context) {
        (Some(path), _) => {
            let hint = format!(" from {}{in_context}", path.display());
            let file = kube::config::Kubeconfig::read_from(path).map_err(failed(hint.clone()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(failed(hint))
        }
        (None, Some(_)) => {
            let file = std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".into());
            kube::Config::from_kubeconfig(&options)
                .await
                .map_err(failed(format!(" from {file}{in_context}")))
        }
        (None, None) => kube::Config::infer()
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
    let readiness = Arc::new(Readiness::new(role.runs_agent(), role.runs_controller()));

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
    let kube_config = kube_config(d.kubeconfig.as_deref(), None).await?;
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

    // Controller: Auto Scaling, the watch caches, the engine.
    let identity = default_identity();
    let controller = if role.runs_controller() {
        Some(
            start_controller(
                &config,
                &client,
                kube_config,
                &metrics,
                &readiness,
                &identity,
                within,
            )
            .await?,
        )
    } else {
        None
    };
    // Agent: this node's instance and its Node, read before anything acts.
    let agent = if role.runs_agent() {
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
        let stats = watcher.stats();
        metrics.on_scrape(move |m| m.sync_imds(&stats));
        Readiness::set(&readiness.imds_connected);
        let node = own_node(&d, &client, watcher.instance_id(), within).await?;
        read_own_node(&client, &node, within).await?;
        Readiness::set(&readiness.own_node_read);
        Some((watcher, node))
    } else {
        None
    };

    let dry = d.dry_run;

    tracing::info!(role = role.as_str(), identity = %identity, "spotguard ready");
    let mut roles = tokio::task::JoinSet::new();
    // An agent beside the controller hands its notices straight over.
    let (local_sender, local_receiver) = (agent.is_some() && controller.is_some())
        .then(|| mpsc::channel(8))
        .unzip();
    if let Some((watcher, node)) = agent {
        let marker = (!dry).then(|| NodeMarker {
            nodes: Api::all(client.clone()),
            node: node.clone(),
            taint: config.engine.taint.taint(),
            retry: config.engine.notice_retry.clone(),
        });
        let handover = match (local_sender, marker) {
            (Some(sender), marker) => Handover::Local {
                node,
                sender,
                marker,
            },
            (None, Some(marker)) => Handover::Node(marker),
            (None, None) => Handover::DryRun { node },
        };
        roles.spawn(run_agent(
            handover,
            watcher,
            config.engine.timings.imds_poll,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(started) = &controller {
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
                "dry-run: no leader election (it writes a Lease); this replica acts as the leader"
            );
        }
        let intake = Arc::new(NoticeIntake {
            changes: started.node_changes.clone(),
            nodes: Api::all(client.clone()),
            local: local_receiver.map(tokio::sync::Mutex::new),
            notice_nodes: started.notice_nodes.clone(),
            dry_run: dry,
            metrics: metrics.clone(),
        });
        roles.spawn(run_controller(
            started.engine.clone(),
            intake,
            started.status.clone(),
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
    let Some(Controller { engine, lock, .. }) = controller else {
        tracing::info!("spotguard stopped");
        return Ok(());
    };
    // A notice handler abandoned at shutdown may still hold a group's scale lock: give it up
    // now, so the next leader raises at once instead of waiting for the Lease to expire.
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

/// The controller's side, started.
struct Controller {
    engine: Arc<DaemonEngine>,
    lock: Arc<LeaseScaleLock>,
    node_changes: tokio::sync::watch::Receiver<u64>,
    notice_nodes: NoticeNodes,
    status: Option<StatusPublisher>,
}

/// Reads the agent's own Node once: it exists, and the agent may read it.
async fn read_own_node(
    client: &kube::Client,
    node: &str,
    within: Duration,
) -> Result<(), StartError> {
    let nodes: Api<KNode> = Api::all(client.clone());
    match tokio::time::timeout(within, nodes.get(node)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(StartError::OwnNode(format!(
            "cannot read this agent's node {node} (daemon.node_name): {}",
            one_line(e)
        ))),
        Err(_) => Err(StartError::OwnNode(format!(
            "cannot read this agent's node {node} (daemon.node_name): no answer within {}",
            humantime::format_duration(within)
        ))),
    }
}

/// Auto Scaling (every configured group must exist), the cluster-wide watch caches, the
/// ledger, the scale locks and the engine: everything the controller acts with.
async fn start_controller(
    config: &DaemonConfig,
    client: &kube::Client,
    kube_config: kube::Config,
    metrics: &Arc<Metrics>,
    readiness: &Readiness,
    identity: &str,
    within: Duration,
) -> Result<Controller, StartError> {
    let d = &config.daemon;
    let url = kube_config.cluster_url.to_string();
    let bounded = |what: &str| {
        format!(
            "no answer within {} ({what})",
            humantime::format_duration(within)
        )
    };
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
            cache_scope: CacheScope::Cluster,
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
    let node_changes = cluster.cache().node_changes();

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
    let notice_nodes = NoticeNodes::default();
    observer = observer.with_notice_nodes(notice_nodes.clone());
    // Dry-run stores no record (it writes nothing), so status has nothing to show.
    let status = (!d.dry_run).then(|| StatusPublisher {
        book: StatusBook::default(),
        store: ConfigMapStatusStore::new(client.clone(), &d.namespace, &d.status_configmap),
    });
    if let Some(s) = &status {
        observer = observer.with_status(s.book.clone());
    }
    // Notifications tell what was done: none in dry-run, where nothing is.
    if let (Some(url), false) = (&config.webhook.url, d.dry_run) {
        let notifier = Notifier::start(config.webhook.clone(), metrics.clone())
            .map_err(StartError::Webhook)?;
        tracing::info!(host = %host_of(url), "webhook notifications on");
        observer = observer.with_notifier(notifier);
    }
    let lock = Arc::new(LeaseScaleLock::new(
        client.clone(),
        LeaseLockConfig {
            namespace: d.namespace.clone(),
            name_prefix: d.scale_lock_prefix.clone(),
            identity: identity.to_string(),
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
            TokioClock,
            DryRun::new(Metered::new(store, metrics.clone()), dry, metrics.clone()),
            DryRun::new(
                Metered::new(lock.clone(), metrics.clone()),
                dry,
                metrics.clone(),
            ),
        )
        .with_observer(observer),
    );

    Ok(Controller {
        engine,
        lock,
        node_changes,
        notice_nodes,
        status,
    })
}
