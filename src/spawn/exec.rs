//! The only fork/exec code in the project.
//!
//! Everything the child needs (argv, environment, ids, the working
//! directory as a C string) is prepared before `fork`. Between fork and exec
//! the child only makes async-signal-safe system calls: `sigprocmask`, `setsid`, `dup2`,
//! `setgroups`, `setgid`, `setuid`, `chdir`. The app gets:
//!
//! - fd 0: /dev/null; fds 1 and 2: the output pipe the agent relays to the log;
//! - fd 3: its listening socket (created and bound by the agent);
//! - fd 4: the write end of the readiness pipe.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::{Gid, Uid};

use super::Identity;

/// Everything needed to start one app process.
#[derive(Debug)]
pub struct Plan {
    /// The interpreter.
    pub program: PathBuf,
    /// Its arguments (the loader).
    pub args: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// The working directory: the app root.
    pub cwd: PathBuf,
    /// Who the process runs as.
    pub identity: Identity,
}

/// A started process.
#[derive(Debug)]
pub struct Launched {
    /// Its pid (our child; reaped only by its `ProcessHandle`).
    pub pid: i32,
    /// The read end of its stdout/stderr.
    pub output: OwnedFd,
    /// The read end of its readiness pipe.
    pub ready: OwnedFd,
}

/// Duplicates `fd` to a number ≥ 10 (close-on-exec), so that the child's
/// `dup2` onto 3 and 4 can never clobber a source descriptor.
fn high_fd(fd: BorrowedFd) -> Result<OwnedFd, String> {
    let raw = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(|e| e.to_string())?;
    // SAFETY: fcntl just returned this new descriptor, which nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// Starts the process described by `plan`, with `listener` as its fd 3.
pub fn launch(plan: &Plan, listener: BorrowedFd) -> Result<Launched, String> {
    let (out_read, out_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let (ready_read, ready_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let listen_src = high_fd(listener)?;
    let ready_src = high_fd(ready_write.as_fd())?;
    drop(ready_write);

    let switch_user = nix::unistd::geteuid().is_root();
    let uid: Uid = plan.identity.user.uid;
    let gid: Gid = plan.identity.group.gid;
    let groups = plan.identity.groups.clone();
    let cwd = CString::new(plan.cwd.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let (listen_raw, ready_raw) = (listen_src.as_raw_fd(), ready_src.as_raw_fd());

    let mut command = Command::new(&plan.program);
    command
        .args(&plan.args)
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            out_write.try_clone().map_err(|e| e.to_string())?,
        ))
        .stderr(Stdio::from(out_write));
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls on values prepared before fork
    // (integers, a CString, a Vec that is only read). It allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // The agent blocks SIGTERM/SIGINT in its threads; the app must not inherit that.
            nix::sys::signal::SigSet::empty().thread_set_mask()?;
            nix::unistd::setsid()?;
            nix::unistd::dup2(listen_raw, 3)?;
            nix::unistd::dup2(ready_raw, 4)?;
            if switch_user {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
            }
            nix::unistd::chdir(cwd.as_c_str())?;
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| {
        format!(
            "cannot start {} as {}:{} in {}: {e}",
            plan.program.display(),
            plan.identity.user.name,
            plan.identity.group.name,
            plan.cwd.display()
        )
    })?;
    // The child is reaped by its ProcessHandle, not by std's Child.
    let pid = i32::try_from(child.id()).map_err(|e| e.to_string())?;
    drop(child);
    drop(command); // closes our copies of the output pipe's write end
    drop((listen_src, ready_src));
    Ok(Launched {
        pid,
        output: out_read,
        ready: ready_read,
    })
}
