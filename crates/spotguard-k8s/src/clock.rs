//! [`TokioClock`]: the engine's [`Clock`] port on the operating system's clock and tokio's
//! timers, so an embedder running the engine on tokio writes no clock of its own.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use spotguard_core::ports::Clock;

/// The operating system's clock, with tokio's timers. Needs a tokio runtime with the time
/// driver enabled (`#[tokio::main]` has it).
///
/// ```
/// use std::time::Duration;
/// use spotguard_core::ports::Clock;
/// use spotguard_k8s::TokioClock;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let before = TokioClock.now();
/// TokioClock.sleep(Duration::from_millis(10)).await;
/// assert!(TokioClock.now() >= before + Duration::from_millis(10));
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await
    }
}
