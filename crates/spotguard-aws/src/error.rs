//! Errors of the AWS adapter that are not [`CloudError`]s of the core's `Cloud` port: the
//! start-up check of configured groups, IMDS access, notice payloads and the watcher's state
//! file. Every variant names the group, instance, endpoint, path or file it is about.

use std::path::PathBuf;

use spotguard_core::ports::CloudError;

/// An error of the AWS adapter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AwsError {
    /// The start-up check found configured groups that do not exist in the account and region.
    #[error("auto scaling groups not found: {}", groups.join(", "))]
    MissingGroups {
        /// Every missing group, in the order they were configured.
        groups: Vec<String>,
    },
    /// An Auto Scaling call failed.
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// The IMDS endpoint given in the configuration is not a valid URI.
    #[error("invalid IMDS endpoint {endpoint:?}: {message}")]
    ImdsEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Why it was refused.
        message: String,
    },
    /// IMDS could not be read (connection, timeout, token or an unexpected status).
    #[error("IMDS {path} at {endpoint}: {message}")]
    Imds {
        /// The endpoint, `default` when resolved by the SDK from the environment.
        endpoint: String,
        /// The metadata path that was read.
        path: String,
        /// What failed.
        message: String,
    },
    /// IMDS answered with a payload Spot Guard cannot understand. No notice is made from it.
    #[error(
        "malformed IMDS payload at {path} for instance {instance}: {message} (payload {payload:?})"
    )]
    MalformedNotice {
        /// The instance the watcher runs on.
        instance: String,
        /// The metadata path that was read.
        path: String,
        /// The payload, truncated to a few hundred characters.
        payload: String,
        /// What is wrong with it.
        message: String,
    },
    /// The file that records already emitted notices could not be read or written.
    #[error("notice state file {path}: {message}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}
