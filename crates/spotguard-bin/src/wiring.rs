//! The engine as the daemon wires it: the AWS and Kubernetes adapters, each behind the
//! dry-run switch and the metrics that count its calls, on tokio's clock. The start-up
//! (`daemon`) builds it; the roles (`roles`) drive it.

use std::sync::Arc;

use spotguard_aws::AwsCloud;
use spotguard_core::engine::Engine;
use spotguard_k8s::{ConfigMapLedgerStore, KubeCluster, LeaseScaleLock, TokioClock};

use crate::dry_run::DryRun;
use crate::metrics::Metered;

/// The engine as the daemon wires it.
pub type DaemonEngine = Engine<
    DryRun<AwsCloud>,
    DryRun<Metered<KubeCluster>>,
    TokioClock,
    DryRun<Metered<ConfigMapLedgerStore>>,
    DryRun<Metered<Arc<LeaseScaleLock>>>,
>;
