//! Leases: the scale lock is exclusive across processes (invariant 1) and leader election
//! elects one monitor at a time, with takeover after a crashed leader's lease expires
//! (invariant 2).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spotguard_core::ports::ScaleLock;
use spotguard_k8s::testing::FakeApiServer;
use spotguard_k8s::{LeaderElector, LeaseLockConfig, LeaseScaleLock};

fn lock_config(identity: &str) -> LeaseLockConfig {
    LeaseLockConfig {
        namespace: "default".into(),
        identity: identity.into(),
        duration: Duration::from_secs(2),
        retry_interval: Duration::from_millis(10),
        acquire_timeout: Duration::from_secs(30),
        ..LeaseLockConfig::default()
    }
}

fn scale_lease(fake: &FakeApiServer) -> serde_json::Value {
    let lease = fake.get(
        "coordination.k8s.io",
        "leases",
        Some("default"),
        "spotguard-scale-web-spot",
    );
    lease.expect("the group's Lease exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_lock_is_exclusive_across_processes() {
    let fake = FakeApiServer::start().await;
    // Two processes: separate clients, separate identities, several tasks each.
    let locks = [
        Arc::new(LeaseScaleLock::new(fake.client(), lock_config("agent-a"))),
        Arc::new(LeaseScaleLock::new(fake.client(), lock_config("agent-b"))),
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
    let lease = scale_lease(&fake);
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released at the end: {lease}"
    );
    // Other groups have their own Lease and do not wait.
    locks[0].acquire("other").await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), locks[1].acquire("web-spot"))
        .await
        .unwrap()
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
    let fake = FakeApiServer::start().await;
    let stopping = LeaseScaleLock::new(fake.client(), lock_config("stopping"));
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
    assert!(scale_lease(&fake)["spec"]["holderIdentity"].is_null());
    let next = LeaseScaleLock::new(fake.client(), lock_config("next"));
    let started = std::time::Instant::now();
    next.acquire("web-spot").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "taken before the 2s lease would have expired: {:?}",
        started.elapsed()
    );
    assert_eq!(scale_lease(&fake)["spec"]["holderIdentity"], "next");
    next.release("web-spot").await.unwrap();
}

#[tokio::test]
async fn a_crashed_scale_lock_holder_is_taken_over_after_expiry() {
    let fake = FakeApiServer::start().await;
    let crashed = LeaseScaleLock::new(fake.client(), lock_config("crashed"));
    crashed.acquire("web-spot").await.unwrap();
    drop(crashed); // stops renewing, never releases
    let survivor = LeaseScaleLock::new(fake.client(), lock_config("survivor"));
    let started = std::time::Instant::now();
    survivor.acquire("web-spot").await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "waited for the 2s lease to expire: {waited:?}"
    );
    assert!(waited < Duration::from_secs(6), "{waited:?}");
    let lease = scale_lease(&fake);
    assert_eq!(lease["spec"]["holderIdentity"], "survivor");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    survivor.release("web-spot").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_is_exclusive_and_fails_over() {
    let fake = FakeApiServer::start().await;
    let duration = Duration::from_secs(2);
    let a = Arc::new(LeaderElector::new(
        fake.client(),
        "default",
        "spotguard-monitor",
        "replica-a",
        duration,
    ));
    let b = Arc::new(LeaderElector::new(
        fake.client(),
        "default",
        "spotguard-monitor",
        "replica-b",
        duration,
    ));

    // Both campaign concurrently for a while: exactly one leads at every check.
    let mut leaders = Vec::new();
    for _ in 0..20 {
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
    let crashed_at = std::time::Instant::now();
    let mut took_over = None;
    while crashed_at.elapsed() < Duration::from_secs(8) {
        if follower.try_acquire_or_renew().await.unwrap() {
            took_over = Some(crashed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took_over = took_over.expect("follower takes over after expiry");
    // The follower last saw the leader's final renewal at most one round before the crash.
    assert!(
        took_over >= duration - Duration::from_millis(150),
        "{took_over:?}"
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
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api, PostParams};

    let fake = FakeApiServer::start().await;
    let lock = LeaseScaleLock::new(fake.client(), lock_config("agent-a"));
    lock.acquire("web-spot").await.unwrap();
    lock.confirm("web-spot")
        .await
        .expect("a Lease just acquired is held");

    // Another identity takes the Lease (as after an expiry while this holder was stalled).
    let leases: Api<Lease> = Api::namespaced(fake.client(), "default");
    let mut lease = leases.get("spotguard-scale-web-spot").await.unwrap();
    lease.spec.as_mut().unwrap().holder_identity = Some("agent-b".into());
    leases
        .replace("spotguard-scale-web-spot", &PostParams::default(), &lease)
        .await
        .unwrap();
    // Past a third of the 2 s duration, confirm asks the API server instead of trusting the
    // last renewal.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let e = lock.confirm("web-spot").await.unwrap_err();
    assert!(e.message.contains("lost"), "{e}");
    assert_eq!(e.group, "web-spot");
    assert_eq!(
        scale_lease(&fake)["spec"]["holderIdentity"],
        "agent-b",
        "the other holder keeps it"
    );
}
