//! Virtual time. [`SimClock::sleep`] registers a timer and waits; nothing moves until the
//! driver calls [`SimClock::advance_to`], which jumps to the next deadline at once and wakes
//! whatever was sleeping until then. A simulated day takes as long as the work done in it.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use futures::task::LocalSpawnExt;
//! use spotguard_core::ports::Clock;
//! use spotguard_sim::SimClock;
//!
//! let t0 = SystemTime::UNIX_EPOCH;
//! let clock = SimClock::new(t0);
//! let mut pool = futures::executor::LocalPool::new();
//! let c = clock.clone();
//! pool.spawner().spawn_local(async move { c.sleep(Duration::from_secs(600)).await }).unwrap();
//! pool.run_until_stalled();
//! assert_eq!(clock.next_deadline(), Some(t0 + Duration::from_secs(600)));
//! clock.advance_to(t0 + Duration::from_secs(600));
//! pool.run_until_stalled(); // the sleeper finished, ten virtual minutes later
//! assert_eq!(clock.next_deadline(), None);
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use spotguard_core::ports::Clock;

#[derive(Debug)]
struct State {
    now: SystemTime,
    next_id: u64,
    /// Deadlines with the id of their sleeper; entries of dropped sleepers are skipped.
    timers: BinaryHeap<Reverse<(SystemTime, u64)>>,
    wakers: HashMap<u64, Waker>,
}

/// A virtual clock shared by the engine, the simulated cluster and the driver.
#[derive(Debug, Clone)]
pub struct SimClock {
    state: Arc<Mutex<State>>,
}

impl SimClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                now: start,
                next_id: 0,
                timers: BinaryHeap::new(),
                wakers: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The earliest deadline of a pending sleep.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        let mut s = self.lock();
        while let Some(Reverse((at, id))) = s.timers.peek().copied() {
            if s.wakers.contains_key(&id) {
                return Some(at);
            }
            s.timers.pop();
        }
        None
    }

    /// Moves time forward to `to` (never backwards) and wakes every sleeper whose deadline
    /// has come.
    pub fn advance_to(&self, to: SystemTime) {
        let due: Vec<Waker> = {
            let mut s = self.lock();
            if to > s.now {
                s.now = to;
            }
            let mut due = Vec::new();
            while let Some(Reverse((at, id))) = s.timers.peek().copied() {
                if at > s.now {
                    break;
                }
                s.timers.pop();
                if let Some(w) = s.wakers.remove(&id) {
                    due.push(w);
                }
            }
            due
        };
        // Woken outside the lock: a waker may poll nothing here, but keep it re-entrant.
        for w in due {
            w.wake();
        }
    }

    /// A future that completes once virtual time reaches `deadline`.
    pub fn sleep_until(&self, deadline: SystemTime) -> Sleep {
        Sleep {
            clock: self.clone(),
            deadline,
            id: None,
        }
    }
}

#[async_trait]
impl Clock for SimClock {
    fn now(&self) -> SystemTime {
        self.lock().now
    }

    async fn sleep(&self, duration: Duration) {
        let deadline = self.now() + duration;
        self.sleep_until(deadline).await
    }
}

/// A pending virtual sleep.
#[derive(Debug)]
pub struct Sleep {
    clock: SimClock,
    deadline: SystemTime,
    id: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut s = this.clock.lock();
        if s.now >= this.deadline {
            if let Some(id) = this.id.take() {
                s.wakers.remove(&id);
            }
            return Poll::Ready(());
        }
        match this.id {
            Some(id) => {
                s.wakers.insert(id, cx.waker().clone());
            }
            None => {
                let id = s.next_id;
                s.next_id += 1;
                s.timers.push(Reverse((this.deadline, id)));
                s.wakers.insert(id, cx.waker().clone());
                this.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.clock.lock().wakers.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn sleepers_wake_in_deadline_order_and_time_jumps() {
        let t0 = SystemTime::UNIX_EPOCH;
        let clock = SimClock::new(t0);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut pool = LocalPool::new();
        for secs in [30u64, 10, 20] {
            let (c, o) = (clock.clone(), order.clone());
            pool.spawner()
                .spawn_local(async move {
                    c.sleep(Duration::from_secs(secs)).await;
                    o.lock().unwrap().push((secs, c.now()));
                })
                .unwrap();
        }
        pool.run_until_stalled();
        while let Some(next) = clock.next_deadline() {
            clock.advance_to(next);
            pool.run_until_stalled();
        }
        let got = order.lock().unwrap().clone();
        assert_eq!(
            got,
            [10, 20, 30]
                .map(|s| (s, t0 + Duration::from_secs(s)))
                .to_vec()
        );
    }

    #[test]
    fn zero_sleep_is_ready_and_dropped_sleeps_leave_no_timer() {
        let clock = SimClock::new(SystemTime::UNIX_EPOCH);
        futures::executor::block_on(clock.sleep(Duration::ZERO));
        let done = Arc::new(AtomicU32::new(0));
        let mut pool = LocalPool::new();
        let (c, d) = (clock.clone(), done.clone());
        pool.spawner()
            .spawn_local(async move {
                let short = c.sleep(Duration::from_secs(5));
                let long = c.sleep(Duration::from_secs(50));
                futures::pin_mut!(short, long);
                futures::future::select(short, long).await;
                d.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        pool.run_until_stalled();
        clock.advance_to(SystemTime::UNIX_EPOCH + Duration::from_secs(5));
        pool.run_until_stalled();
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(
            clock.next_deadline(),
            None,
            "the dropped 50s sleep left no timer"
        );
    }
}
