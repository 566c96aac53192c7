//! What the engine's tests add to the in-memory ports of [`crate::memory`]: a lock that does
//! not lock and the test configuration.

use async_trait::async_trait;

use crate::config::{Config, GroupPair};
use crate::ports::*;

pub use crate::memory::{
    node_for, yield_now, AutoClock, MemoryCloud, MemoryCluster, MemoryLedgerStore,
};

/// A lock that does not lock: the negative control for the race test.
#[derive(Debug, Default)]
pub struct NoLock;

#[async_trait]
impl ScaleLock for NoLock {
    async fn acquire(&self, _: &str) -> Result<(), LockError> {
        Ok(())
    }
    async fn release(&self, _: &str) -> Result<(), LockError> {
        Ok(())
    }
    fn release_abandoned(&self, _: &str) {}
}

pub fn test_config() -> Config {
    let mut c = Config {
        groups: vec![GroupPair {
            spot: "web-spot".into(),
            on_demand: "web-od".into(),
        }],
        ..Config::default()
    };
    c.capacity_buffer.cpu_percent = 0;
    c.capacity_buffer.memory_percent = 0;
    c
}
