//! # spotguard-testkit-aws
//!
//! Test kit (unpublished) for Spot Guard's AWS side: real servers on 127.0.0.1 that the real
//! SDK clients talk to over real HTTP.
//!
//! * [`MotoServer`]: moto in server mode (`python3 -m moto.server`) as a child process, with
//!   helpers that create spot and on-demand groups ([`GroupSpec`]).
//! * [`FaultProxy`]: an HTTP proxy in front of moto that passes everything through and, per
//!   rule, injects throttling, 5xx or validation errors, keeps new instances `Pending`, and adds
//!   failed scaling activities: the unhappy paths moto never produces by itself.
//! * [`ImdsServer`]: a local instance metadata service with IMDSv2 session tokens whose notices,
//!   payloads, speed and token lifetime are set at run time.
//!
//! Everything here panics with a clear message when a server cannot be started: a test that
//! needs moto fails when moto is missing, it is never skipped.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod http;
mod imds;
mod moto;
mod proxy;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_sdk_autoscaling::config::Credentials;

pub use imds::ImdsServer;
pub use moto::{Capacity, GroupSpec, MotoServer};
pub use proxy::{ErrorReply, FaultProxy, Until};

use spotguard_aws::cloud::AwsCloudBuilder;
use spotguard_aws::AwsCloud;

/// Region used against moto.
pub const TEST_REGION: &str = "us-east-1";

/// Static credentials for moto (it checks none).
pub fn test_credentials() -> Credentials {
    Credentials::new(
        "AKIDSPOTGUARDTEST",
        "spotguard-test-secret",
        None,
        None,
        "spotguard-test",
    )
}

/// The standard retry mode with [`spotguard_aws::cloud::DEFAULT_MAX_ATTEMPTS`] attempts and backoffs of
/// milliseconds instead of seconds, so retry tests stay fast.
pub fn fast_retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(spotguard_aws::cloud::DEFAULT_MAX_ATTEMPTS)
        .with_initial_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(50))
}

/// An [`AwsCloud`] builder aimed at `endpoint` (moto or a proxy) with test credentials, the test
/// region and [`fast_retry_config`]; no credential or region chain is consulted.
pub fn cloud_builder(endpoint: &str) -> AwsCloudBuilder {
    AwsCloud::builder()
        .endpoint_url(endpoint)
        .region(TEST_REGION)
        .credentials(test_credentials())
        .retry_config(fast_retry_config())
}

/// A plain Auto Scaling client aimed at `endpoint`, for fixtures (not counted, no retries).
pub fn autoscaling_client(endpoint: &str) -> aws_sdk_autoscaling::Client {
    let config = aws_sdk_autoscaling::Config::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(TEST_REGION))
        .credentials_provider(test_credentials())
        .endpoint_url(endpoint)
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_autoscaling::Client::from_conf(config)
}

/// moto, the fault proxy in front of it, and an [`AwsCloud`] that talks to moto through the
/// proxy with [`fast_retry_config`] and its own call counter.
#[derive(Debug)]
pub struct TestCloud {
    /// moto.
    pub moto: MotoServer,
    /// The proxy the cloud talks to.
    pub proxy: FaultProxy,
    /// The cloud under test.
    pub cloud: AwsCloud,
}

impl TestCloud {
    /// Starts moto and the proxy and builds the cloud.
    pub async fn start() -> TestCloud {
        Self::start_with(|builder| builder).await
    }

    /// Like [`TestCloud::start`], with changes to the cloud's builder.
    pub async fn start_with(
        configure: impl FnOnce(AwsCloudBuilder) -> AwsCloudBuilder,
    ) -> TestCloud {
        let moto = MotoServer::start().await;
        let proxy = FaultProxy::start(&moto.url()).await;
        let cloud = configure(cloud_builder(&proxy.url())).load().await;
        TestCloud { moto, proxy, cloud }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free TCP port on 127.0.0.1")
}
