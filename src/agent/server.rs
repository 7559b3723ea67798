//! The agent's threads around the sessions: the acceptor, signals, the
//! Apache-parent watch and the idle collector.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam::channel::Sender;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::agent::{Agent, session};
use crate::pool::Pool;

/// At most this many connections are served at once; more wait in the
/// listen backlog. Apache's workers each hold one.
const MAX_CONNECTIONS: usize = 4096;

/// The status socket is open to every local user: it serves fewer
/// connections at once, and drops one that stays silent this long.
const MAX_STATUS_CONNECTIONS: usize = 16;
const STATUS_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the request socket: mode 0660, group = Apache's group, so only
/// root and Apache's user can connect (checked again per connection).
pub fn bind(path: &Path, apache_gid: Option<u32>) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    if let Some(gid) = apache_gid {
        std::os::unix::fs::lchown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Blocks SIGTERM and SIGINT in this thread (and so in every thread started
/// after), to be received by the signal thread alone.
pub fn block_shutdown_signals() -> Result<SigSet, String> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    Ok(set)
}

/// Waits for SIGTERM/SIGINT and reports it.
pub fn spawn_signal_thread(set: SigSet, stop: Sender<&'static str>) -> Result<(), String> {
    spawn("signals", move || {
        if let Ok(signal) = set.wait() {
            let _ = stop.send(if signal == Signal::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            });
        }
    })
}

/// Reports when the Apache parent `pid` exits (through a pidfd).
pub fn spawn_parent_watch(pid: i32, stop: Sender<&'static str>) -> Result<(), String> {
    let pidfd = crate::spawn::pidfd::open(pid).map_err(|e| {
        let _ = stop.send("the Apache parent is gone");
        format!("cannot watch the Apache parent {pid}: {e}")
    })?;
    spawn("apache-watch", move || {
        loop {
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                _ => break,
            }
        }
        let _ = stop.send("the Apache parent exited");
    })
}

/// Runs the idle collector once a second.
pub fn spawn_idle_collector(pool: Weak<Pool>) -> Result<(), String> {
    spawn("idle-gc", move || {
        while let Some(pool) = pool.upgrade() {
            pool.collect_idle();
            drop(pool);
            std::thread::sleep(Duration::from_secs(1));
        }
    })
}

/// Binds the status socket: mode 0666, for `passenger-status` run by
/// anyone; each caller sees only the apps that run as its own user.
pub fn bind_status(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Which socket an acceptor serves.
#[derive(Debug, Clone, Copy)]
pub enum Door {
    /// The request socket: root, the agent's user and Apache's user, every role.
    Requests {
        /// Apache's user.
        apache_uid: Option<u32>,
    },
    /// The status socket: anyone, status requests only.
    Status,
}

/// Accepts connections, checks who is calling, and serves each on a thread.
pub fn spawn_acceptor(agent: Arc<Agent>, listener: UnixListener, door: Door) -> Result<(), String> {
    let active = Arc::new(AtomicUsize::new(0));
    let name = match door {
        Door::Requests { .. } => "accept",
        Door::Status => "accept-status",
    };
    spawn(name, move || {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    log::warn!(target: "MP0804", "accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let Some(peer_uid) = peer_uid(&stream) else {
                continue;
            };
            if let Door::Requests { apache_uid } = door
                && !privileged(peer_uid, apache_uid)
            {
                log::warn!(target: "MP0807", "refused a connection from uid {peer_uid}");
                continue;
            }
            let limit = match door {
                Door::Requests { .. } => MAX_CONNECTIONS,
                Door::Status => MAX_STATUS_CONNECTIONS,
            };
            if active.load(Ordering::Acquire) >= limit {
                log::warn!(target: "MP0805", "too many connections ({limit}); refusing one");
                continue;
            }
            active.fetch_add(1, Ordering::AcqRel);
            let agent = Arc::clone(&agent);
            let guard = ActiveGuard(Arc::clone(&active));
            let spawned = std::thread::Builder::new()
                .name("conn".into())
                .spawn(move || {
                    let _guard = guard;
                    let _thread = crate::trace::register_thread(match door {
                        Door::Requests { .. } => format!("connection from uid {peer_uid}"),
                        Door::Status => format!("status connection from uid {peer_uid}"),
                    });
                    let caller = match door {
                        Door::Requests { .. } => session::Caller::Trusted,
                        Door::Status => {
                            if stream.set_read_timeout(Some(STATUS_IDLE_TIMEOUT)).is_err() {
                                return;
                            }
                            session::Caller::StatusOnly(
                                (!privileged(peer_uid, None)).then_some(peer_uid),
                            )
                        }
                    };
                    session::serve(&agent, stream, caller);
                });
            if let Err(e) = spawned {
                log::error!(target: "MP0806", "cannot start a connection thread: {e}");
            }
        }
    })
}

/// Decrements the active-connection count when a connection thread ends.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Only root, the agent's own user and Apache's user may talk to the agent.
/// The uid of the process at the other end.
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    match getsockopt(stream, PeerCredentials) {
        Ok(creds) => Some(creds.uid()),
        Err(e) => {
            log::warn!(target: "MP0807", "cannot read a connection's credentials: {e}");
            None
        }
    }
}

/// Whether `uid` may use the request socket: root, the agent's own user
/// and Apache's.
pub fn privileged(uid: u32, apache_uid: Option<u32>) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw() || Some(uid) == apache_uid
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    let traced = name.to_owned();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _thread = crate::trace::register_thread(traced);
            f();
        })
        .map(drop)
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}
