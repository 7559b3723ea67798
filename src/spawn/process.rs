//! A running app process: its pid, its output, its exit.
//!
//! A watcher thread per process relays the process's output to the log
//! (keeping the last lines for error reports), waits for it to exit and,
//! when the agent forked it, reaps it. Signals can never reach a recycled
//! pid: for our own children they are only sent before the reap (a zombie
//! keeps the pid reserved); a worker forked by a preloader is known only
//! through a pidfd, which names that one process for good.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, waitid, waitpid};
use nix::unistd::Pid;
use parking_lot::{Condvar, Mutex};

/// What the watcher knows, behind one lock.
struct State {
    /// The process has exited and was reaped: its pid is no longer ours.
    reaped: bool,
    /// Called once when the process has exited.
    on_exit: Option<Box<dyn FnOnce() + Send>>,
}

/// A handle on an app process.
pub struct ProcessHandle {
    pid: i32,
    /// Set for a process that is not our child (forked by a preloader).
    pidfd: Option<OwnedFd>,
    state: Mutex<State>,
    exited: Condvar,
}

impl std::fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessHandle({})", self.pid)
    }
}

impl ProcessHandle {
    /// Starts watching `pid`: relays `output` to the log (last lines kept in
    /// `kept`) and reaps the process when it exits.
    pub fn watch(
        pid: i32,
        output: OwnedFd,
        kept: Arc<Mutex<VecDeque<String>>>,
    ) -> Arc<ProcessHandle> {
        Self::start(pid, None, output, kept)
    }

    /// Starts watching a process forked by someone else (a preloader),
    /// through its pidfd: the output is relayed the same way; the exit is
    /// seen on the pidfd; the process's parent reaps it.
    pub fn watch_foreign(
        pid: i32,
        pidfd: OwnedFd,
        output: OwnedFd,
        kept: Arc<Mutex<VecDeque<String>>>,
    ) -> Arc<ProcessHandle> {
        Self::start(pid, Some(pidfd), output, kept)
    }

    fn start(
        pid: i32,
        pidfd: Option<OwnedFd>,
        output: OwnedFd,
        kept: Arc<Mutex<VecDeque<String>>>,
    ) -> Arc<ProcessHandle> {
        let handle = Arc::new(ProcessHandle {
            pid,
            pidfd,
            state: Mutex::new(State {
                reaped: false,
                on_exit: None,
            }),
            exited: Condvar::new(),
        });
        let watcher = Arc::clone(&handle);
        let spawned = std::thread::Builder::new()
            .name(format!("app-{pid}"))
            .spawn(move || {
                let _thread =
                    crate::trace::register_thread(format!("process {pid}: output and exit"));
                relay_output(pid, output, &kept);
                watcher.reap();
            });
        if let Err(e) = spawned {
            log::error!(target: "MP0303", "cannot watch process {pid}: {e}");
        }
        handle
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        self.state.lock().reaped
    }

    /// Runs `f` once the process has exited (now, if it already has).
    pub fn on_exit(&self, f: Box<dyn FnOnce() + Send>) {
        let mut state = self.state.lock();
        if state.reaped {
            drop(state);
            f();
        } else {
            state.on_exit = Some(f);
        }
    }

    /// Sends `signal` if the process is still ours. Returns whether it was sent.
    pub fn signal(&self, signal: Signal) -> bool {
        let state = self.state.lock();
        if state.reaped {
            return false;
        }
        match &self.pidfd {
            Some(pidfd) => super::pidfd::send_signal(pidfd, signal).is_ok(),
            // The lock keeps the watcher from reaping between the check and the kill.
            None => kill(Pid::from_raw(self.pid), signal).is_ok(),
        }
    }

    /// SIGKILL.
    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    /// Asks the process to stop (SIGTERM) and kills it if it is still there
    /// after `grace`.
    pub fn terminate(self: &Arc<Self>, grace: Duration) {
        if !self.signal(Signal::SIGTERM) {
            return;
        }
        let handle = Arc::clone(self);
        let _ = std::thread::Builder::new().name(format!("stop-{}", self.pid)).spawn(move || {
            let _thread = crate::trace::register_thread(format!("stopping process {}", handle.pid));
            let _trace = crate::trace_point!("ProcessHandle::terminate", format_args!("SIGTERM sent, waiting up to {} s", grace.as_secs()));
            if !handle.wait_exit(grace) {
                log::warn!(target: "MP0304", "process {} did not stop within {} s; killing it", handle.pid, grace.as_secs());
                handle.kill();
            }
        });
    }

    /// Waits up to `timeout` for the process to exit; true if it did.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let mut state = self.state.lock();
        if !state.reaped {
            self.exited.wait_for(&mut state, timeout);
        }
        state.reaped
    }

    /// Waits for the exit without reaping, then reaps under the lock (our
    /// own child), or waits for the pidfd to report the exit (a foreign one).
    fn reap(&self) {
        if let Some(pidfd) = &self.pidfd {
            loop {
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::NONE) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    _ => break,
                }
            }
            self.finish(None);
            return;
        }
        let pid = Pid::from_raw(self.pid);
        while let Err(nix::errno::Errno::EINTR) =
            waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
        {}
        self.finish(Some(pid));
    }

    /// Marks the process as gone (reaping `child` under the lock) and runs
    /// the exit callback.
    fn finish(&self, child: Option<Pid>) {
        let on_exit = {
            let mut state = self.state.lock();
            if let Some(pid) = child {
                let status = waitpid(pid, None);
                log::debug!(target: "MP0305", "process {} exited: {status:?}", self.pid);
            }
            state.reaped = true;
            self.exited.notify_all();
            state.on_exit.take()
        };
        if let Some(f) = on_exit {
            f();
        }
    }
}

/// Copies the process's output to the log, line by line, keeping the last
/// lines. Returns at EOF (the process exited or closed its output).
fn relay_output(pid: i32, output: OwnedFd, kept: &Mutex<VecDeque<String>>) {
    let mut reader = BufReader::new(std::fs::File::from(output));
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                log::info!(target: "MP0601", "[app {pid}] {text}");
                let mut kept = kept.lock();
                if kept.len() == super::KEPT_OUTPUT_LINES {
                    kept.pop_front();
                }
                kept.push_back(text.to_owned());
            }
        }
    }
}
