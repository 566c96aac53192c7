//! Graceful shutdown: SIGTERM or SIGINT trigger a [`Shutdown`] every loop watches. Loops stop
//! taking new work at once; the step under way gets `daemon.shutdown_timeout` to finish and
//! is abandoned after that (the ledger, saved at every step, lets the next process resume).
//! A second signal exits at once.

use std::sync::Arc;

use tokio::sync::watch;

/// A one-way switch from running to stopping, cheap to clone and to wait on.
#[derive(Debug, Clone)]
pub struct Shutdown {
    sender: Arc<watch::Sender<bool>>,
    receiver: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A switch in the running position.
    pub fn new() -> Self {
        let (sender, receiver) = watch::channel(false);
        Self {
            sender: Arc::new(sender),
            receiver,
        }
    }

    /// Flips the switch; every waiter wakes up.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// Whether the switch was flipped.
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Completes once the switch is flipped (at once if it already is).
    pub async fn triggered(&self) {
        let mut receiver = self.receiver.clone();
        // The sender lives as long as any clone of self, so this only ends when flipped.
        let _ = receiver.wait_for(|stopping| *stopping).await;
    }
}

/// Triggers `shutdown` on the first SIGTERM or SIGINT, and exits the process on the second.
pub fn on_signals(shutdown: Shutdown) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        for round in 0..2 {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if round == 0 {
                tracing::info!(
                    signal = name,
                    "shutting down: no new work, finishing the current step"
                );
                shutdown.trigger();
            } else {
                tracing::warn!(signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_once_triggered() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.is_triggered());
        let waiter = tokio::spawn({
            let s = shutdown.clone();
            async move { s.triggered().await }
        });
        shutdown.trigger();
        waiter.await.unwrap();
        assert!(shutdown.is_triggered());
        shutdown.triggered().await;
    }
}
