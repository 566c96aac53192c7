//! The crate's one error type, [`Error`], and its translation into the core ports' errors.

use spotguard_core::ports::{ClusterError, ErrorSource, LockError, StoreError};

/// Everything that can go wrong in the Kubernetes adapter. Every variant names the object
/// (`node/ip-10-0-0-1`, `pod default/web-1`, `configmap spotguard/ledger`, ...) it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A resource quantity (`100m`, `1.5Gi`, ...) could not be read.
    #[error("{object}: {field} is not a valid quantity ({value:?}): {reason}")]
    Quantity {
        /// The object holding the quantity.
        object: String,
        /// The field, e.g. `spec.containers[app].resources.requests.cpu`.
        field: String,
        /// The text as found.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An object holds a value Spot Guard cannot translate (an unknown taint effect, an
    /// unknown selector operator, ...).
    #[error("{object}: {field}: {message}")]
    Invalid {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The object does not exist.
    #[error("{object} not found")]
    NotFound {
        /// The object.
        object: String,
    },
    /// A write lost against concurrent writers too many times.
    #[error("{object}: conflicting concurrent updates, gave up after {attempts} attempts")]
    Conflict {
        /// The object.
        object: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The API server refused a request or could not be reached.
    #[error("kubernetes {operation} {object} failed: {source}")]
    Api {
        /// What was attempted (`get`, `patch`, `evict`, ...).
        operation: String,
        /// The object.
        object: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// Stored data (the ledger in a ConfigMap, ...) could not be parsed.
    #[error("{object}: malformed data: {message}")]
    Malformed {
        /// The object holding the data.
        object: String,
        /// The parse error.
        message: String,
    },
    /// The watch caches have not listed the cluster yet.
    #[error("the {resource} watch cache is not synced yet")]
    NotReady {
        /// Which cache (`nodes`, `pods`, `poddisruptionbudgets`).
        resource: String,
    },
    /// A Lease could not be acquired, renewed or released.
    #[error("lease {lease}: {message}")]
    Lease {
        /// `namespace/name` of the Lease.
        lease: String,
        /// What failed.
        message: String,
    },
}

impl Error {
    /// An [`Error::Api`] for `operation` on `object`.
    pub fn api(operation: &str, object: impl Into<String>, source: kube::Error) -> Self {
        Self::Api {
            operation: operation.to_string(),
            object: object.into(),
            source,
        }
    }

    /// The HTTP status code the API server answered with, if the error came from it.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Self::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    /// Fills in the object and field of an [`Error::Quantity`] (other variants are returned
    /// unchanged).
    pub fn at(self, object: &str, field: &str) -> Self {
        match self {
            Self::Quantity { value, reason, .. } => Self::Quantity {
                object: object.to_string(),
                field: field.to_string(),
                value,
                reason,
            },
            other => other,
        }
    }

    /// The object the error is about.
    pub fn object(&self) -> &str {
        match self {
            Self::Quantity { object, .. }
            | Self::Invalid { object, .. }
            | Self::NotFound { object }
            | Self::Conflict { object, .. }
            | Self::Api { object, .. }
            | Self::Malformed { object, .. } => object,
            Self::NotReady { resource } => resource,
            Self::Lease { lease, .. } => lease,
        }
    }

    /// Translates into the [`spotguard_core::ports::Cluster`] port's error. `node` is the node
    /// the operation was about, when there is one.
    pub fn into_cluster_error(self, operation: &str, node: Option<&str>) -> ClusterError {
        match (self, node) {
            (Self::NotFound { .. }, Some(node)) => ClusterError::UnknownNode {
                node: node.to_string(),
            },
            (Self::Conflict { attempts, .. }, Some(node)) => ClusterError::Conflict {
                node: node.to_string(),
                attempts,
            },
            (other, _) => ClusterError::Api {
                operation: operation.to_string(),
                target: other.object().to_string(),
                message: other.to_string(),
                source: Some(ErrorSource::new(other)),
            },
        }
    }

    /// Translates into the [`spotguard_core::ports::LedgerStore`] port's error.
    pub fn into_store_error(self, expected: Option<String>) -> StoreError {
        match self {
            Self::Conflict { .. } => StoreError::Conflict { expected },
            Self::Malformed { object, message } => StoreError::Malformed {
                location: object,
                message,
            },
            other => StoreError::Io {
                location: other.object().to_string(),
                message: other.to_string(),
                source: Some(ErrorSource::new(other)),
            },
        }
    }

    /// Translates into the [`spotguard_core::ports::ScaleLock`] port's error.
    pub fn into_lock_error(self, group: &str) -> LockError {
        LockError {
            group: group.to_string(),
            message: self.to_string(),
        }
    }
}

/// Whether a client error is the API server answering with this status code.
pub(crate) fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

/// `kind/name` or `kind namespace/name`, as used in error messages.
pub(crate) fn object_name(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{kind} {ns}/{name}"),
        _ => format!("{kind}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_errors_keep_the_adapters_error_as_their_source() {
        let not_ready = || Error::NotReady {
            resource: "pods".into(),
        };
        let cluster = not_ready().into_cluster_error("list pods", None);
        let source = std::error::Error::source(&cluster).expect("a source");
        let kept = source
            .downcast_ref::<ErrorSource>()
            .and_then(|s| s.get().downcast_ref::<Error>())
            .expect("the adapter's error");
        assert!(matches!(kept, Error::NotReady { resource } if resource == "pods"));

        let store = not_ready().into_store_error(None);
        assert!(matches!(
            store,
            StoreError::Io {
                source: Some(_),
                ..
            }
        ));
        // Errors that map onto a variant of their own carry no source.
        let unknown = Error::NotFound {
            object: "node/n1".into(),
        }
        .into_cluster_error("patch node", Some("n1"));
        assert!(std::error::Error::source(&unknown).is_none());
    }
}
