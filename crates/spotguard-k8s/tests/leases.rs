//! Leases: the scale lock is exclusive across processes (invariant 1) and leader election
//! elects one monitor at a time, with takeover after a crashed leader's lease expires
//! (invariant 2). On the real API server, each test with its Leases in a namespace of its own;
//! every "process" has its own client.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use spotguard_core::ports::ScaleLock;
use spotguard_k8s::{LeaderElector, LeaseLockConfig, LeaseScaleLock};

fn lock_config(namespace: &str, identity: &str, duration: Duration) -> LeaseLockConfig {
    LeaseLockConfig {
        namespace: namespace.into(),
        identity: identity.into(),
        duration,
        retry_interval: Duration::from_millis(10),
        acquire_timeout: Duration::from_secs(60),
        ..LeaseLockConfig::default()
    }
}

fn client() -> kube::Client {
    common::control_plane().admin_client()
}

async fn scale_lease(namespace: &str) -> Lease {
    let leases: Api<Lease> = Api::namespaced(client(), namespace);
    leases
        .get_opt("spotguard-scale-web-spot")
        .await
        .expect("reading the Lease")
        .expect("the group's Lease exists")
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_lock_is_exclusive_across_processes() {
    let ns = common::control_plane().create_namespace("leases").await;
    let duration = Duration::from_secs(2);
    // Two processes: separate clients, separate identities, several tasks each.
    let locks = [
        Arc::new(LeaseScaleLock::new(
            client(),
            lock_config(&ns, "agent-a", duration),
        )),
        Arc::new(LeaseScaleLock::new(
            client(),
            lock_config(&ns, "agent-b", duration),
        )),
    ];
    let desired = Arc::new(AtomicU32::new(0));
    let inside = Arc::new(AtomicU32::new(0));
    let max_inside = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for lock in &locks {
        for _ in 0..5 {
            let (lock, desired, inside, max_inside) = (
                lock.clone(),
                desired.clone(),
                inside.clone(),
                max_inside.clone(),
            );
            tasks.push(tokio::spawn(async move {
                lock.acquire("web-spot").await.unwrap();
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max_inside.fetch_max(n, Ordering::SeqCst);
                // Read-modify-write of desired capacity with a pause in the middle.
                let read = desired.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(15)).await;
                desired.store(read + 1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                lock.release("web-spot").await.unwrap();
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        max_inside.load(Ordering::SeqCst),
        1,
        "never two holders at once"
    );
    assert_eq!(
        desired.load(Ordering::SeqCst),
        10,
        "no lost update: N handlers raise by exactly N"
    );
    let lease = scale_lease(&ns).await;
    assert_eq!(holder(&lease), None, "released at the end: {lease:?}");
    // Other groups have their own Lease and do not wait: "other" stays held (and renewed)
    // while the other process takes "web-spot" well within its acquire timeout.
    locks[0].acquire("other").await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), locks[1].acquire("web-spot"))
        .await
        .expect("a free group's Lease is taken without waiting for another group's")
        .unwrap();
    locks[1].release("web-spot").await.unwrap();
    locks[0].release("other").await.unwrap();
    assert!(
        locks[0].release("other").await.is_err(),
        "releasing twice is an error naming the group"
    );
}

#[tokio::test]
async fn leases_held_at_shutdown_are_given_up_at_once() {
    let ns = common::control_plane()
        .create_namespace("leases-shutdown")
        .await;
    // A long lease: a successor that gets it at all within the lease duration got it because
    // it was released, not because it expired.
    let duration = Duration::from_secs(60);
    let stopping = LeaseScaleLock::new(client(), lock_config(&ns, "stopping", duration));
    stopping.acquire("web-spot").await.unwrap();
    stopping.acquire("api-spot").await.unwrap();
    // A handler abandoned at shutdown never calls release; the daemon releases what is left.
    assert_eq!(stopping.release_all().await, ["api-spot", "web-spot"]);
    assert!(
        stopping.release_all().await.is_empty(),
        "nothing held twice"
    );
    // Still usable in this process.
    stopping.acquire("api-spot").await.unwrap();
    stopping.release("api-spot").await.unwrap();
    assert_eq!(holder(&scale_lease(&ns).await), None);
    let next = LeaseScaleLock::new(client(), lock_config(&ns, "next", duration));
    let started = Instant::now();
    tokio::time::timeout(duration / 2, next.acquire("web-spot"))
        .await
        .expect("taken long before the released lease could have expired")
        .unwrap();
    assert!(started.elapsed() < duration, "{:?}", started.elapsed());
    assert_eq!(holder(&scale_lease(&ns).await).as_deref(), Some("next"));
    next.release("web-spot").await.unwrap();
}

/// A holder dropped with the lock (an embedder's timeout around a notice): the engine calls
/// `release_abandoned`, which frees the in-process side at once and releases the Lease in the
/// background, so another process takes it long before it could have expired. An `acquire`
/// dropped while it waits for a Lease someone else holds leaves nothing held either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_holder_gives_the_lock_up_without_waiting_for_expiry() {
    let ns = common::control_plane()
        .create_namespace("leases-abandoned")
        .await;
    let duration = Duration::from_secs(60);
    let dropped = LeaseScaleLock::new(client(), lock_config(&ns, "dropped", duration));
    let other = LeaseScaleLock::new(client(), lock_config(&ns, "other", duration));
    dropped.acquire("web-spot").await.unwrap();
    // `other` waits for the Lease and is dropped while waiting.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), other.acquire("web-spot"))
            .await
            .is_err(),
        "the Lease is held"
    );
    dropped.release_abandoned("web-spot");
    // This process's side is free at once...
    tokio::time::timeout(Duration::from_secs(5), dropped.acquire("web-spot"))
        .await
        .expect("the in-process side given up at once")
        .unwrap();
    dropped.release("web-spot").await.unwrap();
    dropped.acquire("web-spot").await.unwrap();
    dropped.release_abandoned("web-spot");
    // ...and the other process gets the Lease (its own dropped acquire left nothing held).
    let started = Instant::now();
    tokio::time::timeout(duration / 2, other.acquire("web-spot"))
        .await
        .expect("taken long before the abandoned lease could have expired")
        .unwrap();
    assert!(started.elapsed() < duration / 2, "{:?}", started.elapsed());
    assert_eq!(holder(&scale_lease(&ns).await).as_deref(), Some("other"));
    other.release("web-spot").await.unwrap();
}

#[tokio::test]
async fn a_crashed_scale_lock_holder_is_taken_over_after_expiry() {
    let ns = common::control_plane()
        .create_namespace("leases-crash")
        .await;
    let duration = Duration::from_secs(2);
    let crashed = LeaseScaleLock::new(client(), lock_config(&ns, "crashed", duration));
    crashed.acquire("web-spot").await.unwrap();
    drop(crashed); // stops renewing, never releases
    let survivor = LeaseScaleLock::new(client(), lock_config(&ns, "survivor", duration));
    let started = Instant::now();
    survivor.acquire("web-spot").await.unwrap();
    let waited = started.elapsed();
    // The survivor's own clock: it saw the record unchanged for the whole duration.
    assert!(
        waited >= duration,
        "waited for the 2s lease to expire: {waited:?}"
    );
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    let lease = scale_lease(&ns).await;
    assert_eq!(holder(&lease).as_deref(), Some("survivor"));
    assert_eq!(lease.spec.as_ref().unwrap().lease_transitions, Some(1));
    survivor.release("web-spot").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_is_exclusive_and_fails_over() {
    let ns = common::control_plane().create_namespace("leader").await;
    // Long enough that a slow round on a loaded machine never lets a renewing leader lapse.
    let duration = Duration::from_secs(4);
    let a = Arc::new(LeaderElector::new(
        client(),
        &ns,
        "spotguard-monitor",
        "replica-a",
        duration,
    ));
    let b = Arc::new(LeaderElector::new(
        client(),
        &ns,
        "spotguard-monitor",
        "replica-b",
        duration,
    ));

    // Both campaign concurrently for a while: exactly one leads at every check.
    let mut leaders = Vec::new();
    let mut last_round = Instant::now();
    for _ in 0..20 {
        last_round = Instant::now();
        let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(!(ra && rb), "two leaders at once");
        assert!(!(a.is_leader() && b.is_leader()));
        leaders.push(if a.is_leader() {
            "a"
        } else if b.is_leader() {
            "b"
        } else {
            "-"
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = leaders[0];
    assert_ne!(first, "-", "someone leads from the first round");
    assert!(
        leaders.iter().all(|l| *l == first),
        "the leader keeps renewing, no flapping: {leaders:?}"
    );
    let (leader, follower) = if first == "a" {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    };

    // The leader crashes (stops renewing). The follower takes over only after expiry.
    let crashed_at = Instant::now();
    let mut took_over = None;
    while crashed_at.elapsed() < Duration::from_secs(60) {
        if follower.try_acquire_or_renew().await.unwrap() {
            took_over = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took_over = took_over.expect("follower takes over after expiry");
    // The leader's last renewal was sent after `last_round` began; the follower saw it only
    // after that and waited a whole duration from then.
    assert!(
        took_over.duration_since(last_round) >= duration,
        "{:?} after the leader's last renewal",
        took_over.duration_since(last_round)
    );
    assert!(
        !leader.is_leader(),
        "the stalled leader stopped considering itself leader"
    );
    assert!(follower.is_leader());
    assert!(
        !leader.try_acquire_or_renew().await.unwrap(),
        "the old leader cannot come back while renewed"
    );

    // A graceful release hands over at once.
    follower.release().await.unwrap();
    assert!(!follower.is_leader());
    assert!(leader.try_acquire_or_renew().await.unwrap());
}

/// Before a write to desired capacity the holder confirms its Lease: a fresh one passes, and
/// one another identity took meanwhile is reported lost, so the write is not made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_lock_taken_over_is_reported_lost_before_the_write() {
    let ns = common::control_plane()
        .create_namespace("leases-lost")
        .await;
    // Long enough that the renewer (every third of it) does not race the takeover below.
    let duration = Duration::from_secs(6);
    let lock = LeaseScaleLock::new(client(), lock_config(&ns, "agent-a", duration));
    lock.acquire("web-spot").await.unwrap();
    let acquired = Instant::now();
    lock.confirm("web-spot")
        .await
        .expect("a Lease just acquired is held");

    // Another identity (another process, its own client) takes the Lease, as after an expiry
    // while this holder was stalled. The update is guarded by the resourceVersion read.
    let leases: Api<Lease> = Api::namespaced(client(), &ns);
    loop {
        let mut lease = leases.get("spotguard-scale-web-spot").await.unwrap();
        lease.spec.as_mut().unwrap().holder_identity = Some("agent-b".into());
        match leases
            .replace("spotguard-scale-web-spot", &PostParams::default(), &lease)
            .await
        {
            Ok(_) => break,
            // The holder's renewer wrote in between: take it from the fresh read.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("taking the Lease over: {e}"),
        }
    }
    // Past a third of the duration since the acquisition, confirm asks the API server instead
    // of trusting the last renewal.
    let wait = (duration / 3 + Duration::from_millis(500)).saturating_sub(acquired.elapsed());
    tokio::time::sleep(wait).await;
    let e = lock.confirm("web-spot").await.unwrap_err();
    assert!(e.message.contains("lost"), "{e}");
    assert_eq!(e.group, "web-spot");
    assert_eq!(
        holder(&scale_lease(&ns).await).as_deref(),
        Some("agent-b"),
        "the other holder keeps it"
    );
}
