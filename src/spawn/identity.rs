//! Who an app runs as: the user-switching rules.
//!
//! With the agent running as root (reference §4.5):
//!
//! 1. The reference file is the startup file (`lstat`: a symlink's own owner).
//! 2. User: `PassengerUserSwitching off` → `PassengerDefaultUser`; else
//!    `PassengerUser` if set; else the reference file's owner. An owner that
//!    is root or unknown falls back to `PassengerDefaultUser` (logged once
//!    per app, at notice level, with the reason).
//! 3. Group: switching off → `PassengerDefaultGroup` (or the default user's
//!    primary group); else `PassengerGroup` if set (`!STARTUP_FILE!` = the
//!    reference file's group); else the chosen user's primary group. Root
//!    or unknown → the default group.
//! 4. Supplementary groups come from the group database for that user.
//!
//! A name in a directive that does not exist is an error naming it. Root
//! is never used: a configuration that would need it is refused.
//! Without root, every app runs as the agent's own user.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::AppOptions;

use super::UserPolicy;

/// Who an app runs as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user.
    pub user: User,
    /// The primary group.
    pub group: Group,
    /// Supplementary groups (including the primary one).
    pub groups: Vec<Gid>,
    /// Why the default user was chosen, when it was a fallback.
    pub fallback: Option<String>,
}

/// The special `PassengerGroup` value: the startup file's group.
const STARTUP_FILE_GROUP: &str = "!STARTUP_FILE!";

/// Decides who the app described by `options` runs as.
pub fn resolve_identity(options: &AppOptions, policy: &UserPolicy) -> Result<Identity, String> {
    let me = nix::unistd::geteuid();
    if !me.is_root() {
        let user =
            user_by_uid(me).ok_or_else(|| format!("the agent's uid {me} has no password entry"))?;
        let group = group_by_gid(user.gid)
            .ok_or_else(|| format!("group {} is not in the group database", user.gid))?;
        return Ok(Identity {
            groups: vec![group.gid],
            user,
            group,
            fallback: None,
        });
    }
    let default_user = user_by_name(&policy.default_user)
        .ok_or_else(|| format!("PassengerDefaultUser {}: no such user", policy.default_user))?;
    if default_user.uid.is_root() {
        return Err("PassengerDefaultUser is root; apps never run as root".into());
    }
    let default_group = match &policy.default_group {
        Some(name) => group_by_name(name)
            .ok_or_else(|| format!("PassengerDefaultGroup {name}: no such group"))?,
        None => group_by_gid(default_user.gid).ok_or_else(|| {
            format!(
                "the primary group {} of {} does not exist",
                default_user.gid, default_user.name
            )
        })?,
    };
    let reference = Path::new(&options.app_root).join(&options.startup_file);
    let reference_meta = std::fs::symlink_metadata(&reference).ok();

    let (user, fallback) = if !policy.user_switching {
        (default_user.clone(), None)
    } else if let Some(name) = &options.user {
        let user =
            user_by_name(name).ok_or_else(|| format!("PassengerUser {name}: no such user"))?;
        if user.uid.is_root() {
            (
                default_user.clone(),
                Some(format!("PassengerUser {name} is root")),
            )
        } else {
            (user, None)
        }
    } else {
        match reference_meta.as_ref().map(|m| Uid::from_raw(m.uid())) {
            Some(uid) if uid.is_root() => (
                default_user.clone(),
                Some(format!("{} is owned by root", reference.display())),
            ),
            Some(uid) => match user_by_uid(uid) {
                Some(user) => (user, None),
                None => (
                    default_user.clone(),
                    Some(format!(
                        "{} is owned by uid {uid}, which has no password entry",
                        reference.display()
                    )),
                ),
            },
            None => (
                default_user.clone(),
                Some(format!("{} cannot be read", reference.display())),
            ),
        }
    };

    let group = if !policy.user_switching {
        default_group.clone()
    } else if let Some(name) = &options.group {
        let group = if name == STARTUP_FILE_GROUP {
            reference_meta
                .as_ref()
                .and_then(|m| group_by_gid(Gid::from_raw(m.gid())))
        } else {
            Some(
                group_by_name(name)
                    .ok_or_else(|| format!("PassengerGroup {name}: no such group"))?,
            )
        };
        group
            .filter(|g| g.gid.as_raw() != 0)
            .unwrap_or_else(|| default_group.clone())
    } else if fallback.is_some() {
        default_group.clone()
    } else {
        group_by_gid(user.gid)
            .filter(|g| g.gid.as_raw() != 0)
            .unwrap_or_else(|| default_group.clone())
    };

    let name = std::ffi::CString::new(user.name.clone()).map_err(|e| e.to_string())?;
    let mut groups =
        nix::unistd::getgrouplist(&name, group.gid).unwrap_or_else(|_| vec![group.gid]);
    groups.retain(|g| g.as_raw() != 0 || group.gid.as_raw() == 0);
    if !groups.contains(&group.gid) {
        groups.push(group.gid);
    }
    Ok(Identity {
        user,
        group,
        groups,
        fallback,
    })
}

/// Checks, by the permission bits, that `ident` can use the app's files:
/// search and read the app root, read the startup file, and write `log/`
/// if it exists. Returns the first path that fails and why.
pub fn check_access(options: &AppOptions, ident: &Identity) -> Result<(), String> {
    let root = Path::new(&options.app_root);
    let checks: [(&Path, u32, &str); 3] = [
        (root, 0o5, "read and search"),
        (&root.join(&options.startup_file), 0o4, "read"),
        (&root.join("log"), 0o3, "write to"),
    ];
    for (path, want, what) in checks {
        let Ok(meta) = std::fs::metadata(path) else {
            if path.ends_with("log") {
                continue;
            }
            return Err(format!("{} does not exist", path.display()));
        };
        if !allowed(&meta, ident, want) {
            return Err(format!(
                "user {} (group {}) cannot {what} {}",
                ident.user.name,
                ident.group.name,
                path.display()
            ));
        }
    }
    Ok(())
}

/// Whether the mode bits of `meta` grant `want` (rwx as 0o7) to `ident`.
fn allowed(meta: &std::fs::Metadata, ident: &Identity, want: u32) -> bool {
    if ident.user.uid.is_root() {
        return true;
    }
    let mode = meta.mode();
    let bits = if meta.uid() == ident.user.uid.as_raw() {
        (mode >> 6) & 0o7
    } else if ident.groups.iter().any(|g| g.as_raw() == meta.gid()) {
        (mode >> 3) & 0o7
    } else {
        mode & 0o7
    };
    bits & want == want
}

fn user_by_name(name: &str) -> Option<User> {
    User::from_name(name).ok().flatten()
}

fn user_by_uid(uid: Uid) -> Option<User> {
    User::from_uid(uid).ok().flatten()
}

fn group_by_name(name: &str) -> Option<Group> {
    Group::from_name(name).ok().flatten()
}

fn group_by_gid(gid: Gid) -> Option<Group> {
    Group::from_gid(gid).ok().flatten()
}
