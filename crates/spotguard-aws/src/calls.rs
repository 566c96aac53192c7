//! Counting Auto Scaling API calls.
//!
//! An SDK interceptor feeds an [`ApiCallCounter`] shared by the caller: per operation name it
//! counts *operations* (one per SDK call, whatever the retries), *attempts* (HTTP requests sent,
//! so retries show up as attempts above operations) and *failures* (operations that returned an
//! error after the retries). Tests use it to prove call budgets; the daemon exports it as metrics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use aws_sdk_autoscaling::config::interceptors::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef,
};
use aws_sdk_autoscaling::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

/// Counts of one API operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperationCalls {
    /// SDK calls made (one per call, retries not included).
    pub operations: u64,
    /// HTTP requests sent (first tries and retries).
    pub attempts: u64,
    /// Calls that ended in an error after the retries.
    pub failures: u64,
}

/// A point-in-time copy of the counts, by operation name (`DescribeAutoScalingGroups`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallSnapshot {
    /// Counts by operation name.
    pub by_operation: BTreeMap<String, OperationCalls>,
}

impl CallSnapshot {
    /// Counts of one operation (zero when it was never called).
    pub fn get(&self, operation: &str) -> OperationCalls {
        self.by_operation
            .get(operation)
            .copied()
            .unwrap_or_default()
    }

    /// SDK calls of all operations.
    pub fn total(&self) -> u64 {
        self.by_operation.values().map(|c| c.operations).sum()
    }

    /// HTTP attempts of all operations.
    pub fn total_attempts(&self) -> u64 {
        self.by_operation.values().map(|c| c.attempts).sum()
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &CallSnapshot) -> CallSnapshot {
        let by_operation = self
            .by_operation
            .iter()
            .map(|(name, now)| {
                let before = earlier.get(name);
                let delta = OperationCalls {
                    operations: now.operations - before.operations,
                    attempts: now.attempts - before.attempts,
                    failures: now.failures - before.failures,
                };
                (name.clone(), delta)
            })
            .filter(|(_, delta)| *delta != OperationCalls::default())
            .collect();
        CallSnapshot { by_operation }
    }
}

/// A shared counter of API calls. Clones count into the same totals.
///
/// ```
/// use spotguard_aws::calls::ApiCallCounter;
/// let counter = ApiCallCounter::new();
/// assert_eq!(counter.total(), 0);
/// assert!(counter.snapshot().by_operation.is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct ApiCallCounter {
    counts: Arc<Mutex<BTreeMap<String, OperationCalls>>>,
}

impl ApiCallCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the current counts.
    pub fn snapshot(&self) -> CallSnapshot {
        CallSnapshot {
            by_operation: self.lock().clone(),
        }
    }

    /// SDK calls of all operations so far.
    pub fn total(&self) -> u64 {
        self.lock().values().map(|c| c.operations).sum()
    }

    /// HTTP attempts of all operations so far.
    pub fn total_attempts(&self) -> u64 {
        self.lock().values().map(|c| c.attempts).sum()
    }

    /// The SDK interceptor that feeds this counter; add it to an SDK config with
    /// `config.interceptor(counter.interceptor())`.
    pub fn interceptor(&self) -> CountingInterceptor {
        CountingInterceptor {
            counter: self.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, OperationCalls>> {
        // A panic while holding this lock cannot leave the counts inconsistent: keep counting.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, cfg: &ConfigBag, bump: impl FnOnce(&mut OperationCalls)) {
        let name = cfg
            .load::<Metadata>()
            .map(|m| m.name().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        bump(self.lock().entry(name).or_default());
    }
}

/// The SDK interceptor behind [`ApiCallCounter::interceptor`].
#[derive(Debug, Clone)]
pub struct CountingInterceptor {
    counter: ApiCallCounter,
}

impl Intercept for CountingInterceptor {
    fn name(&self) -> &'static str {
        "SpotGuardApiCallCounter"
    }

    // Called once per call, after the operation's configuration (and so its name) is known.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.counter.record(cfg, |c| c.operations += 1);
        Ok(())
    }

    // Called once per attempt, right before the request goes out.
    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.counter.record(cfg, |c| c.attempts += 1);
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if matches!(context.output_or_error(), Some(Err(_))) {
            self.counter.record(cfg, |c| c.failures += 1);
        }
        Ok(())
    }
}
