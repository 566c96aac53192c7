//! Mutual exclusion across processes on `coordination.k8s.io/v1` Leases.
//!
//! [`LeaseLock`] is the primitive, following client-go's leader election: a holder writes its
//! identity and `renewTime` into the Lease; every write is an update guarded by the
//! resourceVersion just read (a 409 means someone else won). A Lease held by another identity
//! is taken over only after the same record has been *observed unchanged* for the lease
//! duration on this process's own monotonic clock, so clock skew between machines never
//! shortens a lease. A released Lease (no holder) is taken at once.
//!
//! On top of it:
//! - [`LeaseScaleLock`]: the core's [`ScaleLock`] port, one Lease per Auto Scaling group, with
//!   the core's in-process [`LocalScaleLock`] in front so tasks of one process queue locally
//!   and only one of them contends for the Lease (invariant 1 across processes). The Lease is
//!   renewed while held.
//! - [`LeaderElector`]: leader election for the monitor (invariant 2).
//!
//! `kube-lease-manager` 0.13.1 resolves and builds with kube 5 and was considered. It takes a
//! free Lease with server-side apply and relies on field-manager conflicts for exclusivity,
//! compares the holder's `renewTime` with the local wall clock, and a waiter sleeps until the
//! holder's expiry even when the holder releases early — a scale-lock waiter would stall a
//! whole lease duration per queued handler. Spot Guard needs both a fast-handover lock and an
//! elector, so both use this one small primitive instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use spotguard_core::lock::LocalScaleLock;
use spotguard_core::ports::{LockError, ScaleLock};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{is_status, Error};

/// The identity this process holds Leases under: `$POD_NAME` (or `$HOSTNAME`), the process
/// id and a per-start nonce, so a restarted process never mistakes its predecessor's Lease for
/// its own.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "spotguard".into());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{host}-{}-{nonce:08x}", std::process::id())
}

/// What was last seen in a Lease, and when (on this process's clock).
#[derive(Debug, Clone)]
struct Observed {
    holder: Option<String>,
    renew: Option<Timestamp>,
    transitions: i32,
    at: Instant,
}

/// One Lease used as a lock by one identity.
#[derive(Debug)]
pub struct LeaseLock {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    duration: Duration,
    observed: Mutex<Option<Observed>>,
    /// When the last write that left this identity holding the Lease was *sent*: the Lease
    /// is ours at least until this instant plus the duration, whatever the server's clock.
    held_since: Mutex<Option<Instant>>,
}

impl LeaseLock {
    /// The Lease `namespace/name`, held as `identity` for `duration` per renewal
    /// (at least one second; Leases count whole seconds).
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            duration: duration.max(Duration::from_secs(1)),
            observed: Mutex::new(None),
            held_since: Mutex::new(None),
        }
    }

    /// How long this identity still holds the Lease for sure, from its last successful
    /// acquisition or renewal (counted from when that request was sent); zero when it never
    /// held it or the Lease has expired since.
    pub fn held_for(&self) -> Duration {
        let since = *self.held_since.lock().unwrap_or_else(|e| e.into_inner());
        since.map_or(Duration::ZERO, |t| {
            self.duration.saturating_sub(t.elapsed())
        })
    }

    fn held_from(&self, sent: Instant) {
        *self.held_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(sent);
    }

    /// `namespace/name` of the Lease.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The identity this lock holds the Lease as.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn error(&self, operation: &str, e: kube::Error) -> Error {
        Error::Lease {
            lease: self.lease(),
            message: format!("{operation} failed: {e}"),
        }
    }

    fn spec(&self, acquire: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().clamp(1, i32::MAX as u64) as i32),
            acquire_time: Some(MicroTime(acquire)),
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn observe(&self, spec: &LeaseSpec) -> Observed {
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renew = spec.renew_time.as_ref().map(|t| t.0);
        let changed = observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew != renew);
        if changed {
            *observed = Some(Observed {
                holder,
                renew,
                transitions: spec.lease_transitions.unwrap_or(0),
                at: Instant::now(),
            });
        }
        observed.clone().expect("just set")
    }

    /// One round of client-go's `tryAcquireOrRenew`: creates the Lease, renews it when this
    /// identity holds it, or takes it when it is free or expired. Returns whether this
    /// identity holds the Lease afterwards. Never waits.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let sent = Instant::now();
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error("get", e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(Timestamp::now(), 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created.spec.unwrap_or_default());
                    self.held_from(sent);
                    Ok(true)
                }
                Err(e) if is_status(&e, 409) => Ok(false),
                Err(e) => Err(self.error("create", e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let seen = self.observe(&spec);
        let mine = seen.holder.as_deref() == Some(self.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.duration);
        let free = seen.holder.is_none();
        let expired = seen.at.elapsed() >= duration;
        if !mine && !free && !expired {
            return Ok(false);
        }
        let acquire = match (&spec.acquire_time, mine) {
            (Some(t), true) => t.0,
            _ => Timestamp::now(),
        };
        let transitions = if mine {
            seen.transitions
        } else {
            seen.transitions + 1
        };
        lease.spec = Some(self.spec(acquire, transitions));
        // `replace` sends the resourceVersion just read: a concurrent write makes it a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated.spec.unwrap_or_default());
                self.held_from(sent);
                Ok(true)
            }
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(self.error("update", e)),
        }
    }

    /// Gives the Lease up if this identity holds it (holder cleared), so a waiter takes it at
    /// once instead of waiting for expiry. Releasing a Lease held by someone else does
    /// nothing.
    pub async fn release(&self) -> Result<(), Error> {
        for _ in 0..5 {
            let Some(mut lease) = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(|e| self.error("get", e))?
            else {
                return Ok(());
            };
            let spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            lease.spec = Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..spec
            });
            match self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => {
                    *self.held_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    return Ok(());
                }
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(self.error("release", e)),
            }
        }
        Err(Error::Lease {
            lease: self.lease(),
            message: "release kept conflicting with concurrent updates".into(),
        })
    }
}

/// Settings of [`LeaseScaleLock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLockConfig {
    /// Namespace of the Leases (default `spotguard`).
    pub namespace: String,
    /// Lease names are this prefix plus the group name made DNS-safe
    /// (default `spotguard-scale-`).
    pub name_prefix: String,
    /// Holder identity (default [`default_identity`]).
    pub identity: String,
    /// How long a crashed holder blocks others (default 15s). The Lease is renewed every
    /// third of it while held.
    pub duration: Duration,
    /// Pause between attempts while another process holds the Lease (default 100ms).
    pub retry_interval: Duration,
    /// Give up acquiring after this long (default 5m).
    pub acquire_timeout: Duration,
}

impl Default for LeaseLockConfig {
    fn default() -> Self {
        Self {
            namespace: "spotguard".into(),
            name_prefix: "spotguard-scale-".into(),
            identity: default_identity(),
            duration: Duration::from_secs(15),
            retry_interval: Duration::from_millis(100),
            acquire_timeout: Duration::from_secs(300),
        }
    }
}

/// A DNS-1123 subdomain name for a Lease from a prefix and an arbitrary group name. Names that
/// had to be changed get a hash of the original appended, so two groups never share a Lease.
pub fn lease_name(prefix: &str, group: &str) -> String {
    let raw = format!("{prefix}{group}");
    let mut name: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    if name != raw || name.len() > 253 {
        // FNV-1a: small, stable across releases and platforms.
        let hash = raw.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        name.truncate(253 - 17);
        name = format!("{}-{hash:016x}", name.trim_end_matches(['-', '.']));
    }
    let trimmed = name.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    trimmed.to_string()
}

/// A Lease release under way in the background.
type Releasing = JoinHandle<Result<(), Error>>;

struct Held {
    lock: Arc<LeaseLock>,
    renewer: JoinHandle<()>,
}

/// The [`ScaleLock`] port on Leases: one Lease per group, held while a handler reads and
/// raises the group's desired capacity.
pub struct LeaseScaleLock {
    client: Client,
    config: LeaseLockConfig,
    local: LocalScaleLock,
    held: Mutex<HashMap<String, Held>>,
    /// Releases started by [`ScaleLock::release_abandoned`], awaited by
    /// [`LeaseScaleLock::release_all`] so a shutdown does not cut them off.
    abandoned: Mutex<Vec<(String, Releasing)>>,
}

impl LeaseScaleLock {
    /// A lock with these settings.
    pub fn new(client: Client, config: LeaseLockConfig) -> Self {
        Self {
            client,
            config,
            local: LocalScaleLock::default(),
            held: Mutex::new(HashMap::new()),
            abandoned: Mutex::new(Vec::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &LeaseLockConfig {
        &self.config
    }

    async fn acquire_lease(&self, group: &str) -> Result<Arc<LeaseLock>, Error> {
        let lock = Arc::new(LeaseLock::new(
            self.client.clone(),
            &self.config.namespace,
            &lease_name(&self.config.name_prefix, group),
            &self.config.identity,
            self.config.duration,
        ));
        let deadline = Instant::now() + self.config.acquire_timeout;
        loop {
            match lock.try_acquire_or_renew().await {
                Ok(true) => return Ok(lock),
                Ok(false) => {}
                Err(e) => tracing::warn!(group, error = %e, "scale lock lease attempt failed"),
            }
            if Instant::now() >= deadline {
                return Err(Error::Lease {
                    lease: lock.lease(),
                    message: format!("not acquired within {:?}", self.config.acquire_timeout),
                });
            }
            tokio::time::sleep(self.config.retry_interval).await;
        }
    }
}

#[async_trait]
impl ScaleLock for LeaseScaleLock {
    /// Cancel safe: dropped while waiting for the Lease, it gives the in-process side back
    /// (a Lease it may have just taken expires, or is taken over by its own holder identity).
    async fn acquire(&self, group: &str) -> Result<(), LockError> {
        self.local.acquire(group).await?;
        struct Local<'a>(&'a LocalScaleLock, &'a str);
        impl Drop for Local<'_> {
            fn drop(&mut self) {
                self.0.release_abandoned(self.1);
            }
        }
        let local = Local(&self.local, group);
        let lock = match self.acquire_lease(group).await {
            Ok(lock) => lock,
            Err(e) => {
                // The guard gives the in-process side back.
                return Err(e.into_lock_error(group));
            }
        };
        std::mem::forget(local);
        let renew_every = self.config.duration / 3;
        let renewing = lock.clone();
        let name = group.to_string();
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(renew_every).await;
                match renewing.try_acquire_or_renew().await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(group = %name, "scale lock lease was lost while held")
                    }
                    Err(e) => {
                        tracing::warn!(group = %name, error = %e, "renewing the scale lock lease failed")
                    }
                }
            }
        });
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group.to_string(), Held { lock, renewer });
        Ok(())
    }

    async fn release(&self, group: &str) -> Result<(), LockError> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(group);
        let Some(held) = held else {
            return Err(LockError {
                group: group.to_string(),
                message: "released without being held".into(),
            });
        };
        held.renewer.abort();
        let released = held.lock.release().await;
        self.local.release(group).await?;
        released.map_err(|e| e.into_lock_error(group))
    }

    /// Gives the Lease up in the background (on the tokio runtime of the caller, if any;
    /// without one it expires) and the in-process side at once.
    fn release_abandoned(&self, group: &str) {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(group);
        if let Some(held) = held {
            held.renewer.abort();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let release = runtime.spawn(async move { held.lock.release().await });
                    let mut abandoned = self.abandoned.lock().unwrap_or_else(|e| e.into_inner());
                    // Those done already need no waiting for.
                    abandoned.retain(|(_, r)| !r.is_finished());
                    abandoned.push((group.to_string(), release));
                }
                Err(_) => {
                    tracing::warn!(%group, "scale lock lease abandoned outside a runtime; it expires on its own")
                }
            }
        }
        self.local.release_abandoned(group);
    }

    /// Before a write: a Lease renewed less than a third of its duration ago is held for at
    /// least two thirds of it more (the renewer keeps renewing meanwhile); an older one is
    /// renewed now, and a Lease that cannot be renewed is reported lost, so the write is
    /// not made.
    async fn confirm(&self, group: &str) -> Result<(), LockError> {
        let lock = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(group)
            .map(|h| h.lock.clone());
        let Some(lock) = lock else {
            return Err(LockError {
                group: group.to_string(),
                message: "confirmed without being held".into(),
            });
        };
        if lock.held_for() > self.config.duration * 2 / 3 {
            return Ok(());
        }
        match lock.try_acquire_or_renew().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(LockError {
                group: group.to_string(),
                message: format!("lease {} was lost while held", lock.lease()),
            }),
            Err(e) => Err(e.into_lock_error(group)),
        }
    }
}

impl LeaseScaleLock {
    /// Gives up every Lease still held — at shutdown, for handlers that were abandoned while
    /// holding one — so agents waiting on the same groups go on at once instead of waiting for
    /// expiry, and waits for the releases started for abandoned holders
    /// ([`ScaleLock::release_abandoned`]). Returns the groups released; a Lease that cannot be
    /// released is logged and left to expire.
    pub async fn release_all(&self) -> Vec<String> {
        let held: Vec<(String, Held)> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let mut released = Vec::new();
        let abandoned: Vec<_> = self
            .abandoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for (group, release) in abandoned {
            match release.await {
                Ok(Ok(())) => released.push(group),
                Ok(Err(e)) => {
                    tracing::warn!(%group, error = %e, "scale lock lease not released; it expires on its own")
                }
                Err(e) => {
                    tracing::warn!(%group, error = %e, "scale lock lease release did not finish; it expires on its own")
                }
            }
        }
        for (group, held) in held {
            held.renewer.abort();
            // The in-process side too, so this lock stays usable.
            let _ = self.local.release(&group).await;
            match held.lock.release().await {
                Ok(()) => released.push(group),
                Err(e) => {
                    tracing::warn!(%group, error = %e, "scale lock lease not released; it expires on its own")
                }
            }
        }
        released.sort();
        released
    }
}

impl Drop for LeaseScaleLock {
    fn drop(&mut self) {
        for held in self.held.lock().unwrap_or_else(|e| e.into_inner()).values() {
            held.renewer.abort();
        }
    }
}

/// Leader election on a Lease (invariant 2: one monitor acts at a time).
///
/// Call [`LeaderElector::try_acquire_or_renew`] every [`LeaderElector::retry_period`]; act
/// only while [`LeaderElector::is_leader`] is true. Leadership lapses on its own when renewals
/// stop succeeding, two thirds into the lease duration — before any other replica may take
/// over — so a partitioned leader stops acting first.
pub struct LeaderElector {
    lock: LeaseLock,
    last_renewal: Mutex<Option<Instant>>,
}

impl LeaderElector {
    /// An elector for the Lease `namespace/name`, as `identity`, with `duration` (default
    /// deployments use 15s).
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            lock: LeaseLock::new(client, namespace, name, identity, duration),
            last_renewal: Mutex::new(None),
        }
    }

    /// How often to call [`LeaderElector::try_acquire_or_renew`]: a third of the duration.
    pub fn retry_period(&self) -> Duration {
        self.lock.duration / 3
    }

    /// The identity this elector campaigns as.
    pub fn identity(&self) -> &str {
        self.lock.identity()
    }

    /// One election round; returns whether this replica leads now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let started = Instant::now();
        let leads = self.lock.try_acquire_or_renew().await;
        let mut last = self.last_renewal.lock().unwrap_or_else(|e| e.into_inner());
        match leads {
            Ok(true) => {
                *last = Some(started);
                Ok(true)
            }
            Ok(false) => {
                *last = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether this replica leads: its last successful round was less than two thirds of the
    /// lease duration ago.
    pub fn is_leader(&self) -> bool {
        let deadline = self.lock.duration * 2 / 3;
        self.last_renewal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < deadline)
    }

    /// Steps down and frees the Lease for another replica at once.
    pub async fn release(&self) -> Result<(), Error> {
        *self.last_renewal.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.lock.release().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_dns_safe_and_distinct() {
        assert_eq!(
            lease_name("spotguard-scale-", "web-spot"),
            "spotguard-scale-web-spot"
        );
        let a = lease_name("spotguard-scale-", "Web_Spot");
        let b = lease_name("spotguard-scale-", "web-spot");
        assert_ne!(a, b);
        assert!(a.starts_with("spotguard-scale-web-spot-"), "{a}");
        let long = lease_name("p-", &"x".repeat(400));
        assert!(long.len() <= 253, "{}", long.len());
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'));
    }
}
