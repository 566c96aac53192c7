//! [`AwsCloud`]: the core's [`Cloud`] port over `aws-sdk-autoscaling`.
//!
//! Call budget, which matters because Auto Scaling throttles per account and region:
//!
//! * [`Cloud::describe_groups`]: one `DescribeAutoScalingGroups` per 100 names (the API's
//!   limit), whatever the number of instances.
//! * [`Cloud::scaling_activities`]: one `DescribeScalingActivities` in the steady state. One
//!   group is asked for by name; several groups are asked for in one call without a name (the
//!   API then returns every group's activities, newest first) and filtered here. Further pages
//!   are read only while they can still hold activities newer than `since`.
//! * [`Cloud::set_desired_capacity`]: one `SetDesiredCapacity` when the group's bounds are known
//!   from a recent `describe_groups` (see [`AwsCloudBuilder::bounds_max_age`]), otherwise one
//!   `DescribeAutoScalingGroups` first. Moto accepts a desired capacity above the maximum and
//!   real Auto Scaling rejects it, so the bounds are always checked here, before any mutating
//!   call.
//! * [`Cloud::terminate_instance`]: `DescribeAutoScalingInstances` (is the instance in a group,
//!   and which), `DescribeAutoScalingGroups` when decrementing (would it go below the minimum),
//!   then `TerminateInstanceInAutoScalingGroup`. Rare, so correctness wins over calls.
//!
//! Retries: the SDK's standard retry mode retries throttling errors, 5xx answers, timeouts and
//! connection failures with exponential backoff and jitter, [`DEFAULT_MAX_ATTEMPTS`] attempts in
//! all by default (see [`default_retry_config`]). What still fails after that becomes
//! [`CloudError::Api`] with `retryable: true`; validation errors are not retried and come back
//! with `retryable: false`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_autoscaling::config::Credentials;
use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_autoscaling::types as sdk;
use aws_sdk_autoscaling::Client;
use spotguard_core::model::{
    Activity, ActivityStatus, Group, HealthStatus, Instance, LifecycleState, SizeBounds,
};
use spotguard_core::ports::{Cloud, CloudError, ErrorSource};

use crate::calls::ApiCallCounter;
use crate::error::AwsError;

/// Attempts per API call (first try included) of the default retry configuration.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// How long min/max learned from a `describe_groups` are trusted by `set_desired_capacity`
/// (default of [`AwsCloudBuilder::bounds_max_age`]).
pub const DEFAULT_BOUNDS_MAX_AGE: Duration = Duration::from_secs(60);

/// Most `DescribeScalingActivities` pages read by one `scaling_activities` call (default of
/// [`AwsCloudBuilder::max_activity_pages`]).
pub const DEFAULT_MAX_ACTIVITY_PAGES: u32 = 10;

/// Names per `DescribeAutoScalingGroups` call, and records per page of both describe calls.
const API_BATCH: usize = 100;

/// The default retry configuration: standard mode (exponential backoff with jitter from 1 s up
/// to 20 s, a retry token bucket), [`DEFAULT_MAX_ATTEMPTS`] attempts.
pub fn default_retry_config() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(DEFAULT_MAX_ATTEMPTS)
}

/// The default timeouts: 3 s to connect, 20 s per attempt, 60 s per call including retries.
pub fn default_timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(60))
        .build()
}

/// Builds an [`AwsCloud`].
#[derive(Debug, Clone)]
pub struct AwsCloudBuilder {
    endpoint_url: Option<String>,
    region: Option<String>,
    credentials: Option<Credentials>,
    retry_config: RetryConfig,
    timeout_config: TimeoutConfig,
    counter: ApiCallCounter,
    bounds_max_age: Duration,
    max_activity_pages: u32,
}

impl Default for AwsCloudBuilder {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: None,
            credentials: None,
            retry_config: default_retry_config(),
            timeout_config: default_timeout_config(),
            counter: ApiCallCounter::new(),
            bounds_max_age: DEFAULT_BOUNDS_MAX_AGE,
            max_activity_pages: DEFAULT_MAX_ACTIVITY_PAGES,
        }
    }
}

impl AwsCloudBuilder {
    /// Sends every call to this endpoint instead of the region's Auto Scaling endpoint (moto,
    /// a test proxy, a VPC endpoint).
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Uses this region instead of the one from the standard region chain.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Uses these static credentials instead of the standard credential chain (tests).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Retry configuration (default [`default_retry_config`]).
    pub fn retry_config(mut self, retry_config: RetryConfig) -> Self {
        self.retry_config = retry_config;
        self
    }

    /// Timeouts (default [`default_timeout_config`]).
    pub fn timeout_config(mut self, timeout_config: TimeoutConfig) -> Self {
        self.timeout_config = timeout_config;
        self
    }

    /// Counts calls into this counter (default: a new one, see [`AwsCloud::counter`]).
    pub fn counter(mut self, counter: ApiCallCounter) -> Self {
        self.counter = counter;
        self
    }

    /// How long a group's min/max from a `describe_groups` are trusted by
    /// `set_desired_capacity` to skip its own describe call (default
    /// [`DEFAULT_BOUNDS_MAX_AGE`]). Known bounds that would refuse the value are always
    /// re-read first. `Duration::ZERO` always describes first.
    pub fn bounds_max_age(mut self, max_age: Duration) -> Self {
        self.bounds_max_age = max_age;
        self
    }

    /// Most pages one `scaling_activities` call reads (default
    /// [`DEFAULT_MAX_ACTIVITY_PAGES`], 100 activities each).
    pub fn max_activity_pages(mut self, pages: u32) -> Self {
        self.max_activity_pages = pages.max(1);
        self
    }

    /// Loads the SDK configuration from the standard chains
    /// (`aws_config::defaults(BehaviorVersion::latest())`: environment, profile, web identity,
    /// ECS, IMDS), with this builder's overrides, and builds the cloud.
    pub async fn load(self) -> AwsCloud {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(self.retry_config.clone())
            .timeout_config(self.timeout_config.clone());
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(credentials) = &self.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        let sdk_config = loader.load().await;
        self.build(&sdk_config)
    }

    /// Builds the cloud on an SDK configuration the caller loaded, with this builder's
    /// overrides on top.
    pub fn build(self, sdk_config: &SdkConfig) -> AwsCloud {
        let mut config = aws_sdk_autoscaling::config::Builder::from(sdk_config)
            .retry_config(self.retry_config)
            .timeout_config(self.timeout_config)
            .interceptor(self.counter.interceptor());
        if let Some(url) = self.endpoint_url {
            config = config.endpoint_url(url);
        }
        if let Some(region) = self.region {
            config = config.region(Region::new(region));
        }
        if let Some(credentials) = self.credentials {
            config = config.credentials_provider(credentials);
        }
        AwsCloud {
            client: Client::from_conf(config.build()),
            counter: self.counter,
            bounds: Arc::new(Mutex::new(HashMap::new())),
            bounds_max_age: self.bounds_max_age,
            max_activity_pages: self.max_activity_pages,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bounds {
    bounds: SizeBounds,
    seen: Instant,
}

/// The [`Cloud`] port over Amazon EC2 Auto Scaling.
///
/// Cheap to clone: clones share the SDK client, the call counter and the bounds cache.
#[derive(Debug, Clone)]
pub struct AwsCloud {
    client: Client,
    counter: ApiCallCounter,
    bounds: Arc<Mutex<HashMap<String, Bounds>>>,
    bounds_max_age: Duration,
    max_activity_pages: u32,
}

impl AwsCloud {
    /// A builder with the defaults: standard chains, [`default_retry_config`],
    /// [`default_timeout_config`].
    pub fn builder() -> AwsCloudBuilder {
        AwsCloudBuilder::default()
    }

    /// The cloud from the standard credential and region chains with the default settings.
    pub async fn from_env() -> Self {
        Self::builder().load().await
    }

    /// The cloud from the standard chains, with an endpoint override (moto, a proxy) and a
    /// retry configuration.
    pub async fn with_endpoint(endpoint_url: Option<&str>, retry_config: RetryConfig) -> Self {
        let mut builder = Self::builder().retry_config(retry_config);
        if let Some(url) = endpoint_url {
            builder = builder.endpoint_url(url);
        }
        builder.load().await
    }

    /// The counter of the API calls this cloud made.
    pub fn counter(&self) -> &ApiCallCounter {
        &self.counter
    }

    /// The underlying SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Start-up check: describes every configured group in one batched call and fails with
    /// [`AwsError::MissingGroups`] listing *every* name that has no group.
    pub async fn check_groups(&self, names: &[String]) -> Result<Vec<Group>, AwsError> {
        let names = unique(names);
        let found = self.describe(&names).await?;
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !found.contains_key(n.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(AwsError::MissingGroups { groups: missing });
        }
        Ok(in_order(&names, found))
    }

    /// Describes the groups, in batches of 100 names, and remembers their bounds. Unknown
    /// names are simply absent from the result.
    async fn describe(&self, names: &[String]) -> Result<HashMap<String, Group>, CloudError> {
        let mut found = HashMap::with_capacity(names.len());
        for chunk in names.chunks(API_BATCH) {
            let mut next_token = None;
            loop {
                let page = self
                    .client
                    .describe_auto_scaling_groups()
                    .set_auto_scaling_group_names(Some(chunk.to_vec()))
                    .max_records(API_BATCH as i32)
                    .set_next_token(next_token.take())
                    .send()
                    .await
                    .map_err(|e| api_error("DescribeAutoScalingGroups", &target_of(chunk), e))?;
                for group in page.auto_scaling_groups() {
                    let group = map_group(group);
                    found.insert(group.name.clone(), group);
                }
                match page.next_token() {
                    Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
                    _ => break,
                }
            }
        }
        let now = Instant::now();
        let mut bounds = self.bounds();
        for name in names.iter().filter(|n| !found.contains_key(n.as_str())) {
            bounds.remove(name);
        }
        for group in found.values() {
            bounds.insert(
                group.name.clone(),
                Bounds {
                    bounds: group.bounds(),
                    seen: now,
                },
            );
        }
        Ok(found)
    }

    fn bounds(&self) -> MutexGuard<'_, HashMap<String, Bounds>> {
        self.bounds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bounds to check `desired` against: recent cached ones that admit it, else fresh ones.
    async fn bounds_for(&self, group: &str, desired: u32) -> Result<SizeBounds, CloudError> {
        let cached = self.bounds().get(group).copied();
        if let Some(b) = cached {
            if b.seen.elapsed() <= self.bounds_max_age && b.bounds.check(group, desired).is_ok() {
                return Ok(b.bounds);
            }
        }
        let described = self.describe(&[group.to_string()]).await?;
        let fresh = described.get(group).ok_or_else(|| unknown_group(group))?;
        Ok(fresh.bounds())
    }

    async fn group_of_instance(&self, instance: &str) -> Result<String, CloudError> {
        let out = self
            .client
            .describe_auto_scaling_instances()
            .instance_ids(instance)
            .send()
            .await
            .map_err(|e| {
                api_error(
                    "DescribeAutoScalingInstances",
                    &format!("instance {instance}"),
                    e,
                )
            })?;
        out.auto_scaling_instances()
            .iter()
            .find(|d| d.instance_id() == Some(instance))
            .and_then(|d| d.auto_scaling_group_name())
            .map(str::to_string)
            .ok_or_else(|| CloudError::UnknownInstance {
                instance: instance.to_string(),
            })
    }
}

#[async_trait]
impl Cloud for AwsCloud {
    async fn describe_groups(&self, names: &[String]) -> Result<Vec<Group>, CloudError> {
        let names = unique(names);
        let found = self.describe(&names).await?;
        if let Some(missing) = names.iter().find(|n| !found.contains_key(n.as_str())) {
            return Err(unknown_group(missing));
        }
        Ok(in_order(&names, found))
    }

    async fn set_desired_capacity(&self, group: &str, desired: u32) -> Result<(), CloudError> {
        self.bounds_for(group, desired)
            .await?
            .check(group, desired)?;
        tracing::debug!(group, desired, "setting desired capacity");
        let result = self
            .client
            .set_desired_capacity()
            .auto_scaling_group_name(group)
            .desired_capacity(i32::try_from(desired).unwrap_or(i32::MAX))
            .honor_cooldown(false)
            .send()
            .await;
        if let Err(e) = result {
            // The bounds may be what the service refused: read them again next time.
            self.bounds().remove(group);
            return Err(group_error("SetDesiredCapacity", group, e));
        }
        Ok(())
    }

    async fn terminate_instance(&self, instance: &str, decrement: bool) -> Result<(), CloudError> {
        let group = self.group_of_instance(instance).await?;
        if decrement {
            let described = self.describe(std::slice::from_ref(&group)).await?;
            let g = described.get(&group).ok_or_else(|| unknown_group(&group))?;
            g.bounds().decrement(&group, g.desired)?;
        }
        tracing::debug!(instance, group, decrement, "terminating instance");
        self.client
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance)
            .should_decrement_desired_capacity(decrement)
            .send()
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    CloudError::UnknownInstance {
                        instance: instance.to_string(),
                    }
                } else {
                    api_error(
                        "TerminateInstanceInAutoScalingGroup",
                        &format!("instance {instance} of group {group}"),
                        e,
                    )
                }
            })?;
        Ok(())
    }

    async fn scaling_activities(
        &self,
        groups: &[String],
        since: SystemTime,
    ) -> Result<Vec<Activity>, CloudError> {
        let groups = unique(groups);
        let wanted: HashSet<&str> = groups.iter().map(String::as_str).collect();
        let single = match groups.as_slice() {
            [] => return Ok(Vec::new()),
            [one] => Some(one.clone()),
            _ => None,
        };
        let target = target_of(&groups);
        let mut activities = Vec::new();
        let mut next_token = None;
        for page_number in 1..=self.max_activity_pages {
            let page = self
                .client
                .describe_scaling_activities()
                .set_auto_scaling_group_name(single.clone())
                .max_records(API_BATCH as i32)
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|e| match &single {
                    Some(group) => group_error("DescribeScalingActivities", group, e),
                    None => api_error("DescribeScalingActivities", &target, e),
                })?;
            // Activities come newest first: once one started before `since`, later pages
            // only hold older ones.
            let mut reached_older = false;
            for activity in page.activities().iter().filter_map(map_activity) {
                reached_older |= activity.start < since;
                if activity.last_change() >= since && wanted.contains(activity.group.as_str()) {
                    activities.push(activity);
                }
            }
            match page.next_token() {
                Some(token) if !token.is_empty() && !reached_older => {
                    if page_number == self.max_activity_pages {
                        tracing::warn!(
                            groups = %target,
                            pages = page_number,
                            "stopped reading scaling activities after the page limit"
                        );
                    }
                    next_token = Some(token.to_string());
                }
                _ => break,
            }
        }
        Ok(activities)
    }
}

/// The names without repeats, first occurrence kept.
fn unique(names: &[String]) -> Vec<String> {
    let mut seen = HashSet::with_capacity(names.len());
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .cloned()
        .collect()
}

fn in_order(names: &[String], mut found: HashMap<String, Group>) -> Vec<Group> {
    names.iter().filter_map(|n| found.remove(n)).collect()
}

/// How a batch of groups is named in errors: all of them when few, else the first ones.
fn target_of(names: &[String]) -> String {
    match names {
        [one] => format!("group {one}"),
        _ if names.len() <= 3 => format!("groups {}", names.join(", ")),
        _ => format!(
            "groups {} and {} more",
            names[..3].join(", "),
            names.len() - 3
        ),
    }
}

fn unknown_group(group: &str) -> CloudError {
    CloudError::UnknownGroup {
        group: group.to_string(),
    }
}

/// The model of an SDK `AutoScalingGroup` (as `DescribeAutoScalingGroups` answers).
pub fn map_group(g: &sdk::AutoScalingGroup) -> Group {
    let count = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    Group {
        name: g.auto_scaling_group_name().unwrap_or_default().to_string(),
        min: count(g.min_size()),
        max: count(g.max_size()),
        desired: count(g.desired_capacity()),
        instances: g.instances().iter().map(map_instance).collect(),
        capacity_rebalance: g.capacity_rebalance().unwrap_or(false),
    }
}

fn map_instance(i: &sdk::Instance) -> Instance {
    Instance {
        id: i.instance_id().unwrap_or_default().to_string(),
        lifecycle: LifecycleState::parse(i.lifecycle_state().map_or("", |s| s.as_str())),
        health: match i.health_status() {
            Some(s) if s.eq_ignore_ascii_case("Healthy") => HealthStatus::Healthy,
            _ => HealthStatus::Unhealthy,
        },
    }
}

fn map_activity(a: &sdk::Activity) -> Option<Activity> {
    let time = |t: Option<&aws_sdk_autoscaling::primitives::DateTime>| {
        t.and_then(|t| SystemTime::try_from(*t).ok())
    };
    let Some(start) = time(a.start_time()) else {
        tracing::debug!(activity = ?a.activity_id(), "scaling activity without a start time skipped");
        return None;
    };
    Some(Activity {
        id: a.activity_id().unwrap_or_default().to_string(),
        group: a.auto_scaling_group_name().unwrap_or_default().to_string(),
        status: ActivityStatus::parse(a.status_code().map_or("", |c| c.as_str())),
        start: start.max(UNIX_EPOCH),
        end: time(a.end_time()),
        description: a.description().unwrap_or_default().to_string(),
        status_message: a
            .status_message()
            .filter(|m| !m.is_empty())
            .map(str::to_string),
    })
}

/// Error codes after which trying again later may succeed (besides any 5xx).
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "TooManyRequestsException",
    "RequestTimeout",
    "ResourceContention",
    "ScalingActivityInProgress",
    "ServiceUnavailable",
    "InternalFailure",
];

/// Maps an SDK error that is about a group: "not found" validation errors become
/// [`CloudError::UnknownGroup`].
fn group_error<E>(
    operation: &str,
    group: &str,
    err: SdkError<E, aws_sdk_autoscaling::config::http::HttpResponse>,
) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if is_not_found(&err) {
        return unknown_group(group);
    }
    api_error(operation, &format!("group {group}"), err)
}

/// A `ValidationError` saying the group or instance does not exist.
fn is_not_found<E>(err: &SdkError<E, aws_sdk_autoscaling::config::http::HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    err.code() == Some("ValidationError")
        && err
            .message()
            .is_some_and(|m| m.to_ascii_lowercase().contains("not found"))
}

/// Maps an SDK error (after the SDK's retries) to [`CloudError::Api`].
fn api_error<E>(
    operation: &str,
    target: &str,
    owned: SdkError<E, aws_sdk_autoscaling::config::http::HttpResponse>,
) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let err = &owned;
    let status = err.raw_response().map(|r| r.status().as_u16());
    let retryable = match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(_) => {
            status.is_some_and(|s| s >= 500 || s == 429)
                || err.code().is_some_and(|c| RETRYABLE_CODES.contains(&c))
        }
        _ => false,
    };
    let message = match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => match status {
            Some(status) => format!("HTTP {status}: {}", DisplayErrorContext(err)),
            None => DisplayErrorContext(err).to_string(),
        },
    };
    CloudError::Api {
        operation: operation.to_string(),
        target: target.to_string(),
        message,
        retryable,
        source: Some(ErrorSource::new(owned)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_few_groups_and_count_the_rest() {
        let names: Vec<String> = (1..=5).map(|i| format!("g{i}")).collect();
        assert_eq!(target_of(&names[..1]), "group g1");
        assert_eq!(target_of(&names[..2]), "groups g1, g2");
        assert_eq!(target_of(&names), "groups g1, g2, g3 and 2 more");
    }

    #[test]
    fn unique_keeps_first_occurrences_in_order() {
        let names = ["b", "a", "b", "c", "a"].map(String::from);
        assert_eq!(unique(&names), ["b", "a", "c"].map(String::from));
    }

    #[test]
    fn activities_map_status_times_and_messages() {
        let a = sdk::Activity::builder()
            .activity_id("a-1")
            .auto_scaling_group_name("g")
            .status_code(sdk::ScalingActivityStatusCode::Failed)
            .start_time(aws_sdk_autoscaling::primitives::DateTime::from_secs(100))
            .end_time(aws_sdk_autoscaling::primitives::DateTime::from_secs(160))
            .description("Launching a new EC2 instance")
            .status_message("InsufficientInstanceCapacity")
            .cause("c")
            .progress(100)
            .build();
        let mapped = map_activity(&a).unwrap();
        assert_eq!(mapped.status, ActivityStatus::Failed);
        assert_eq!(mapped.start, UNIX_EPOCH + Duration::from_secs(100));
        assert_eq!(mapped.end, Some(UNIX_EPOCH + Duration::from_secs(160)));
        assert_eq!(
            mapped.status_message.as_deref(),
            Some("InsufficientInstanceCapacity")
        );
        assert_eq!(mapped.group, "g");
    }
}
