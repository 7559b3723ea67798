//! Creating the instance directory safely.
//!
//! The directory is created with `mkdir` (which fails on anything already
//! there, including a symlink), then checked with `lstat`: it must be a real
//! directory owned by us. A leftover directory of ours from an agent that
//! died is removed and created anew; anything else (a symlink, a directory
//! owned by another user) is refused. The files inside are created fresh
//! by the agent itself, so nothing in the directory was ever placed there
//! by someone else.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The loader scripts, built into the agent so it never runs a script from
/// a place someone else could write to.
const LOADERS: [(&str, &str); 3] = [
    ("wsgi-loader.py", include_str!("../loaders/wsgi-loader.py")),
    ("rack-loader.rb", include_str!("../loaders/rack-loader.rb")),
    ("node-loader.js", include_str!("../loaders/node-loader.js")),
];

/// An instance directory and its parts.
#[derive(Debug, Clone)]
pub struct InstanceDir {
    /// The directory.
    pub dir: PathBuf,
}

impl InstanceDir {
    /// Creates `dir` (and its parts) for an agent running as the current user.
    pub fn create(dir: &Path) -> io::Result<InstanceDir> {
        let euid = nix::unistd::geteuid().as_raw();
        if let Some(registry) = dir.parent() {
            ensure_registry(registry, euid)?;
        }
        match DirBuilder::new().mode(0o711).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let meta = fs::symlink_metadata(dir)?;
                if !meta.file_type().is_dir() || meta.uid() != euid {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "refusing to use {}: it is not a directory owned by uid {euid}",
                            dir.display()
                        ),
                    ));
                }
                fs::remove_dir_all(dir)?;
                DirBuilder::new().mode(0o711).create(dir)?;
            }
            Err(e) => return Err(e),
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o711))?;
        let instance = InstanceDir {
            dir: dir.to_path_buf(),
        };
        DirBuilder::new().mode(0o700).create(instance.apps_dir())?;
        DirBuilder::new()
            .mode(0o755)
            .create(instance.loaders_dir())?;
        fs::set_permissions(instance.loaders_dir(), fs::Permissions::from_mode(0o755))?;
        for (name, text) in LOADERS {
            let path = instance.loaders_dir().join(name);
            fs::write(&path, text)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        }
        fs::write(dir.join("agent.pid"), format!("{}\n", std::process::id()))?;
        Ok(instance)
    }

    /// Where app sockets live (only the agent can enter).
    pub fn apps_dir(&self) -> PathBuf {
        self.dir.join("apps")
    }

    /// Where the loaders live (readable by the apps).
    pub fn loaders_dir(&self) -> PathBuf {
        self.dir.join("loaders")
    }

    /// The request socket.
    pub fn socket(&self) -> PathBuf {
        crate::instance::agent_socket(&self.dir)
    }

    /// Stops new connections from finding this agent (first step of shutdown).
    pub fn unlink_socket(&self) {
        let _ = fs::remove_file(self.socket());
    }

    /// Removes the directory (at shutdown), unless a newer agent has taken
    /// it over meanwhile.
    pub fn remove(&self) {
        let owner = fs::read_to_string(self.dir.join("agent.pid")).unwrap_or_default();
        if owner.trim() != std::process::id().to_string() {
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            log::warn!(target: "MP0501", "cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// Creates the registry directory if needed and checks that nobody but its
/// owner (us or root) can plant entries in it, unless it is sticky like /tmp.
fn ensure_registry(registry: &Path, euid: u32) -> io::Result<()> {
    match DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(registry)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(registry)?;
    let mode = meta.mode();
    let writable_by_others = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if !meta.file_type().is_dir()
        || (meta.uid() != euid && meta.uid() != 0)
        || (writable_by_others && !sticky)
    {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing to use the instance registry {}: it must be a directory owned by root or \
                 uid {euid}, not writable by others (or sticky, like /tmp)",
                registry.display()
            ),
        ));
    }
    Ok(())
}
