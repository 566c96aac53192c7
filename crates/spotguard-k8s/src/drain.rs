//! Draining a node through the Eviction API, as `kubectl drain` does.
//!
//! 1. The node's pods are listed (`fieldSelector=spec.nodeName=<node>`) and sorted out like
//!    `kubectl drain` sorts them: mirror pods, finished pods and DaemonSet pods stay
//!    ([`PodOutcome::Skipped`]). A pod with `emptyDir` storage without
//!    [`DrainOptions::delete_emptydir_data`], or a pod no controller manages without
//!    [`DrainOptions::force`], refuses the **whole** drain up front: those pods are reported
//!    [`PodOutcome::Failed`] and nothing is evicted, as `kubectl drain` refuses without
//!    `--delete-emptydir-data` / `--force`.
//! 2. Every other pod is evicted (`policy/v1` Eviction, with the grace-period override and a
//!    UID precondition so a same-named replacement is never evicted by mistake). At most
//!    [`DrainOptions::concurrency`] eviction requests are in flight; a 429 (a PDB allows no
//!    disruption now) or a 5xx is retried with backoff until [`DrainOptions::timeout`].
//!    Evictions should go through a client whose `kube::Config::default_retry` is off
//!    ([`crate::KubeCluster::from_config`] builds one): kube's own retry layer would retry a
//!    429 internally for minutes and hide which PDB refused. Every call is also bounded by
//!    the drain's deadline.
//! 3. The drain waits until every evicted pod is gone (deleted, or replaced by a pod with a
//!    new UID), polling the node's pod list.
//!
//! Pods still blocked by a PDB when the time is up are reported [`PodOutcome::Blocked`],
//! naming the PDB the API server gave in its 429.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod as KPod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::json;
use spotguard_core::config::DrainOptions;
use spotguard_core::model::OwnerKind;
use spotguard_core::ports::{DrainReport, PodOutcome, PodReport, SkipReason};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::error::{object_name, Error};
use crate::translate::pod_from_k8s;

/// Backoff between eviction attempts refused with 429 or 5xx.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Polling of the node's pods while waiting for evicted pods to go.
const GONE_POLL_MIN: Duration = Duration::from_millis(50);
const GONE_POLL_MAX: Duration = Duration::from_millis(500);

/// What the first pass decided for a pod.
enum Plan {
    Skip(SkipReason),
    Refuse(String),
    Evict,
}

fn plan(pod: &KPod, options: &DrainOptions) -> Result<Plan, Error> {
    let model = pod_from_k8s(pod)?;
    if model.mirror {
        return Ok(Plan::Skip(SkipReason::Mirror));
    }
    if model.terminal {
        return Ok(Plan::Skip(SkipReason::Terminal));
    }
    if matches!(model.owner, OwnerKind::DaemonSet) {
        return Ok(Plan::Skip(SkipReason::DaemonSet));
    }
    if matches!(model.owner, OwnerKind::Node) {
        return Ok(Plan::Skip(SkipReason::Mirror));
    }
    let terminating = pod.metadata.deletion_timestamp.is_some();
    if model.local_storage && !options.delete_emptydir_data && !terminating {
        return Ok(Plan::Refuse(
            "uses emptyDir local storage that eviction deletes (set delete_emptydir_data)".into(),
        ));
    }
    if matches!(model.owner, OwnerKind::None) && !options.force {
        return Ok(Plan::Refuse(
            "is not managed by a controller and would not be recreated (set force)".into(),
        ));
    }
    Ok(Plan::Evict)
}

/// The PDB a 429 names: `The disruption budget <name> needs ...`.
pub fn blocking_pdb(status: &kube::core::Status, namespace: &str) -> Option<String> {
    let causes = status
        .details
        .as_ref()
        .map(|d| d.causes.as_slice())
        .unwrap_or_default();
    causes
        .iter()
        .map(|c| c.message.as_str())
        .chain(std::iter::once(status.message.as_str()))
        .find_map(|m| {
            let rest = m.split("disruption budget ").nth(1)?;
            let name = rest.split_whitespace().next()?;
            Some(format!("{namespace}/{}", name.trim_end_matches(['.', ','])))
        })
}

/// How one eviction ended.
enum Eviction {
    /// Accepted (or the pod was already gone); wait for it to disappear.
    Accepted,
    /// Never accepted before the deadline.
    Blocked(Option<String>),
    Failed(String),
}

/// The `policy/v1` Eviction of a pod, with the UID precondition and the grace-period
/// override in `deleteOptions`.
///
/// Sent by hand: kube 5's `Api::evict` serializes the options as `delete_options`, a field the
/// API server ignores, which would silently drop both.
fn eviction_request(pod: &KPod, options: &DrainOptions) -> Result<http::Request<Vec<u8>>, String> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut delete_options = json!({});
    if let Some(grace) = options.grace_period {
        delete_options["gracePeriodSeconds"] = json!(grace.as_secs());
    }
    if let Some(uid) = &pod.metadata.uid {
        delete_options["preconditions"] = json!({"uid": uid});
    }
    let body = json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
        "deleteOptions": delete_options,
    });
    http::Request::post(format!(
        "/api/v1/namespaces/{namespace}/pods/{name}/eviction"
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(serde_json::to_vec(&body).map_err(|e| e.to_string())?)
    .map_err(|e| e.to_string())
}

async fn evict_one(
    client: Client,
    pod: &KPod,
    options: &DrainOptions,
    permits: &Semaphore,
    deadline: Instant,
) -> Eviction {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let request = match eviction_request(pod, options) {
        Ok(r) => r,
        Err(e) => return Eviction::Failed(format!("cannot build the eviction: {e}")),
    };
    let mut pause = RETRY_MIN;
    let mut blocked_by = None;
    let mut last_error: Option<String>;
    loop {
        let result = {
            let Ok(_permit) = permits.acquire().await else {
                return Eviction::Failed("drain stopped".into());
            };
            let mut attempt = http::Request::post(request.uri().clone())
                .body(request.body().clone())
                .expect("valid request");
            *attempt.headers_mut() = request.headers().clone();
            tokio::time::timeout_at(deadline, client.request::<kube::core::Status>(attempt)).await
        };
        let result = match result {
            Ok(result) => result,
            Err(_) => {
                return match blocked_by {
                    Some(pdb) => Eviction::Blocked(Some(pdb)),
                    None => Eviction::Failed(
                        "no answer to the eviction before the drain timed out".into(),
                    ),
                }
            }
        };
        match result {
            Ok(_) => return Eviction::Accepted,
            // Gone already, or replaced by a pod with another UID: either way it left.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                return Eviction::Accepted
            }
            Err(kube::Error::Api(s)) if s.code == 429 => {
                blocked_by = blocking_pdb(&s, &namespace).or(blocked_by);
                last_error = None;
                tracing::debug!(pod = %format!("{namespace}/{name}"), pdb = ?blocked_by, "eviction refused by a disruption budget; retrying");
            }
            Err(kube::Error::Api(s))
                if s.code >= 500 && !s.message.contains("more than one PodDisruptionBudget") =>
            {
                last_error = Some(format!("API server answered {}: {}", s.code, s.message));
            }
            Err(kube::Error::Api(s)) => {
                return Eviction::Failed(format!("eviction refused ({}): {}", s.code, s.message));
            }
            Err(other) => last_error = Some(other.to_string()),
        }
        let now = Instant::now();
        if now >= deadline {
            return match last_error {
                Some(e) if blocked_by.is_none() => {
                    Eviction::Failed(format!("not evicted before the drain timed out: {e}"))
                }
                _ => Eviction::Blocked(blocked_by),
            };
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// Evicted pods not yet seen gone: `namespace/name` → UID.
type Leaving = Arc<Mutex<BTreeMap<String, String>>>;

fn key_of(pod: &KPod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Drains `node`. See the module documentation for the steps.
///
/// `client` lists and watches; `evictions` sends the evictions (ideally without kube's retry
/// layer, see the module documentation; the same client works, with less precise reports).
pub async fn drain(
    client: Client,
    evictions: Client,
    node: &str,
    options: &DrainOptions,
) -> Result<DrainReport, Error> {
    let started = Instant::now();
    let deadline = started + options.timeout;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node_object = object_name("node", None, node);
    if nodes
        .get_opt(node)
        .await
        .map_err(|e| Error::api("get", &node_object, e))?
        .is_none()
    {
        return Err(Error::NotFound {
            object: node_object,
        });
    }
    let all_pods: Api<KPod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let mut pods = all_pods
        .list(&on_node)
        .await
        .map_err(|e| Error::api("list pods on", &node_object, e))?
        .items;
    pods.sort_by_key(key_of);

    let mut outcomes: BTreeMap<String, PodOutcome> = BTreeMap::new();
    let mut to_evict = Vec::new();
    let mut refused = false;
    for pod in &pods {
        match plan(pod, options)? {
            Plan::Skip(reason) => {
                outcomes.insert(key_of(pod), PodOutcome::Skipped(reason));
            }
            Plan::Refuse(message) => {
                refused = true;
                outcomes.insert(key_of(pod), PodOutcome::Failed { message });
            }
            Plan::Evict => to_evict.push(pod),
        }
    }
    if refused {
        for pod in to_evict {
            outcomes.insert(
                key_of(pod),
                PodOutcome::Failed {
                    message: "not evicted: the drain was refused because of other pods on the node"
                        .into(),
                },
            );
        }
        return Ok(report(node, outcomes));
    }

    let permits = Semaphore::new(options.concurrency.max(1) as usize);
    let leaving: Leaving = Arc::default();
    let evictions_done = Arc::new(tokio::sync::Notify::new());
    let evictions = async {
        let results = join_all(to_evict.iter().map(|pod| {
            let evictions = evictions.clone();
            let leaving = leaving.clone();
            let permits = &permits;
            async move {
                let outcome = evict_one(evictions, pod, options, permits, deadline).await;
                if let Eviction::Accepted = outcome {
                    leaving
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key_of(pod), pod.metadata.uid.clone().unwrap_or_default());
                }
                (key_of(pod), outcome)
            }
        }))
        .await;
        evictions_done.notify_one();
        results
    };
    let waiting = wait_until_gone(&all_pods, &on_node, &leaving, &evictions_done, deadline);
    let (results, ()) = tokio::join!(evictions, waiting);

    let still_there = leaving.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (key, eviction) in results {
        let outcome = match eviction {
            Eviction::Accepted if still_there.contains_key(&key) => PodOutcome::Failed {
                message: "evicted, but still terminating when the drain timed out".into(),
            },
            Eviction::Accepted => PodOutcome::Evicted,
            Eviction::Blocked(pdb) => PodOutcome::Blocked { pdb },
            Eviction::Failed(message) => PodOutcome::Failed { message },
        };
        outcomes.insert(key, outcome);
    }
    let report = report(node, outcomes);
    tracing::info!(
        node,
        evicted = report.evicted(),
        remaining = report.remaining().len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "drain finished"
    );
    Ok(report)
}

/// Polls the node's pods until every accepted eviction's pod is gone, the evictions are all
/// settled, or the deadline passes.
async fn wait_until_gone(
    pods: &Api<KPod>,
    on_node: &ListParams,
    leaving: &Leaving,
    evictions_done: &tokio::sync::Notify,
    deadline: Instant,
) {
    let mut all_settled = false;
    let mut pause = GONE_POLL_MIN;
    loop {
        let pending = !leaving.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        if all_settled && !pending {
            return;
        }
        if pending {
            match tokio::time::timeout_at(deadline, pods.list(on_node))
                .await
                .unwrap_or_else(|_| {
                    Err(kube::Error::Service(
                        "no answer before the drain deadline".into(),
                    ))
                }) {
                Ok(list) => {
                    let present: BTreeSet<(String, String)> = list
                        .items
                        .iter()
                        .map(|p| (key_of(p), p.metadata.uid.clone().unwrap_or_default()))
                        .collect();
                    leaving
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|key, uid| present.contains(&(key.clone(), uid.clone())));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing pods while waiting for evicted pods failed")
                }
            }
            if all_settled && leaving.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                return;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            if all_settled {
                return;
            }
            // Evictions settle at the deadline too; wait for them to report.
            evictions_done.notified().await;
            all_settled = true;
            continue;
        }
        let wait = pause.min(deadline - now);
        if !all_settled {
            tokio::select! {
                _ = evictions_done.notified() => all_settled = true,
                _ = tokio::time::sleep(wait) => {}
            }
        } else {
            tokio::time::sleep(wait).await;
        }
        pause = (pause * 3 / 2).min(GONE_POLL_MAX);
    }
}

fn report(node: &str, outcomes: BTreeMap<String, PodOutcome>) -> DrainReport {
    DrainReport {
        node: node.to_string(),
        pods: outcomes
            .into_iter()
            .map(|(pod, outcome)| PodReport { pod, outcome })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::{StatusCause, StatusDetails};

    #[test]
    fn pdb_named_in_the_429_cause() {
        let status = kube::core::Status {
            code: 429,
            message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
            reason: "TooManyRequests".into(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    reason: "DisruptionBudget".into(),
                    message:
                        "The disruption budget web-pdb needs 2 healthy pods and has 2 currently"
                            .into(),
                    field: String::new(),
                }],
                name: String::new(),
                group: String::new(),
                kind: String::new(),
                uid: String::new(),
                retry_after_seconds: 0,
            }),
            ..kube::core::Status::default()
        };
        assert_eq!(
            blocking_pdb(&status, "shop"),
            Some("shop/web-pdb".to_string())
        );
        let bare = kube::core::Status {
            code: 429,
            message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
            ..kube::core::Status::default()
        };
        assert_eq!(blocking_pdb(&bare, "shop"), None);
    }
}
