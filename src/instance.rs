//! Where an Apache instance's agent lives: the instance registry.
//!
//! Each Apache instance (identified by its ServerRoot and main config file)
//! has one instance directory under the registry directory
//! (`PassengerInstanceRegistryDir`, by default `/run/mod_passenger` for
//! root and `$TMPDIR` or `/tmp` otherwise). The directory name is stable
//! across restarts, so after `apachectl graceful` the new configuration
//! generation finds the agent that is already running.
//!
//! ```text
//! <registry>/mod_passenger.<16 hex digits>/   0711, owned by the agent's user
//!     agent.sock     the request socket: 0660, group = Apache's group
//!     status.sock    the status socket: 0666, status requests only
//!     agent.pid      the agent's pid
//!     apps/          0700: one listening socket per app process
//!     loaders/       0755: the loader scripts the apps run
//! ```

use std::path::{Path, PathBuf};

/// The default registry directory for an agent running as `euid`.
pub fn default_registry_dir(euid: u32) -> PathBuf {
    if euid == 0 {
        PathBuf::from("/run/mod_passenger")
    } else {
        std::env::var_os("TMPDIR")
            .filter(|dir| !dir.is_empty())
            .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
    }
}

/// The instance directory of the Apache instance with this ServerRoot and
/// config file, under `registry`.
pub fn instance_dir(registry: &Path, server_root: &[u8], config_file: &[u8]) -> PathBuf {
    let mut key = server_root.to_vec();
    key.push(0);
    key.extend_from_slice(config_file);
    registry.join(format!("mod_passenger.{:016x}", fnv1a64(&key)))
}

/// The request socket inside an instance directory.
pub fn agent_socket(instance_dir: &Path) -> PathBuf {
    instance_dir.join("agent.sock")
}

/// The status socket inside an instance directory: open to anyone, for
/// `passenger-status` (each caller sees its own apps).
pub fn status_socket(instance_dir: &Path) -> PathBuf {
    instance_dir.join("status.sock")
}

/// FNV-1a, 64 bits: a stable hash for naming (not for security; the
/// directory's safety comes from how it is created, see `agent::instance`).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_distinct() {
        let a = instance_dir(
            Path::new("/run/x"),
            b"/etc/apache2",
            b"/etc/apache2/apache2.conf",
        );
        let b = instance_dir(
            Path::new("/run/x"),
            b"/etc/apache2",
            b"/etc/apache2/other.conf",
        );
        assert_ne!(a, b);
        assert_eq!(
            a,
            instance_dir(
                Path::new("/run/x"),
                b"/etc/apache2",
                b"/etc/apache2/apache2.conf"
            )
        );
        assert!(a.to_string_lossy().starts_with("/run/x/mod_passenger."));
    }

    #[test]
    fn fnv_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
