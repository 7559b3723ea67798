//! The Apache side: everything the shim's hooks ask of Rust.
//!
//! Nothing here knows Apache's types: [`crate::ffi::exports`] converts the
//! shim's structs and calls in. The rules of this process: no thread is
//! started in the Apache parent, no panic crosses into C, no global state
//! outlives a configuration generation except what fork hands down to the
//! children (the agent's socket path and the server description).

pub mod client;
pub mod handler;
pub mod lifecycle;
pub mod matcher;
pub mod request;
pub mod tunnel;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

/// Apache's server description (`SERVER_SOFTWARE`), set at post_config.
static SERVER_SOFTWARE: RwLock<Vec<u8>> = RwLock::new(Vec::new());

/// Records Apache's server description for the apps' environment.
pub fn set_server_software(description: &str) {
    *SERVER_SOFTWARE.write() = description.as_bytes().to_vec();
}

/// Apache's server description.
pub fn server_software() -> Vec<u8> {
    SERVER_SOFTWARE.read().clone()
}

/// PassengerStatThrottleRate in seconds, set at post_config.
static STAT_THROTTLE_SECS: AtomicU64 = AtomicU64::new(0);

/// Records PassengerStatThrottleRate for the children's file checks.
pub fn set_stat_throttle(seconds: u64) {
    STAT_THROTTLE_SECS.store(seconds, Ordering::Relaxed);
}

/// How long a file check may be reused (PassengerStatThrottleRate).
pub fn stat_throttle() -> Duration {
    Duration::from_secs(STAT_THROTTLE_SECS.load(Ordering::Relaxed))
}
