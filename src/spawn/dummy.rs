//! A stand-in spawner for pool tests: each "app process" is a real `sleep`
//! child (so exits, signals and reaping are real), with no loader behind
//! its socket: a listening socket that takes connections and never
//! answers on them.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::{Error, ProcessHandle, Spawned, Spawner, Step};
use crate::config::AppOptions;

/// Counts spawns; can be told to fail or to be slow.
#[derive(Default)]
pub struct DummySpawner {
    /// Spawns so far.
    pub spawned: AtomicUsize,
    /// Make the next spawns fail.
    pub fail: AtomicBool,
    /// How long each spawn takes.
    pub delay: Mutex<Duration>,
    /// The handles of the processes started, in order.
    pub handles: Mutex<Vec<Arc<ProcessHandle>>>,
    /// The processes' sockets, in a directory of this spawner's.
    listeners: Mutex<Vec<UnixListener>>,
}

impl DummySpawner {
    fn socket_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("mp-dummy-{}-{:p}", std::process::id(), self))
    }
}

impl Drop for DummySpawner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.socket_dir());
    }
}

impl Spawner for DummySpawner {
    fn spawn(&self, options: &AppOptions) -> Result<Spawned, Box<Error>> {
        std::thread::sleep(*self.delay.lock());
        let n = self.spawned.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(Box::new(Error {
                step: Step::Ready,
                summary: "dummy failure".into(),
                details: String::new(),
                output: String::new(),
                user: "nobody".into(),
                group: "nogroup".into(),
                app_root: options.app_root.clone(),
                elapsed: Duration::ZERO,
                id: String::new(),
            }));
        }
        // Reaped by its ProcessHandle, like every app process.
        #[allow(clippy::zombie_processes)]
        let mut child = Command::new("sleep")
            .arg("60")
            .stdout(Stdio::piped())
            .spawn()
            .expect("sleep runs");
        let output: OwnedFd = child.stdout.take().expect("piped").into();
        let handle = ProcessHandle::watch(
            child.id() as i32,
            output,
            Arc::new(Mutex::new(VecDeque::new())),
        );
        self.handles.lock().push(Arc::clone(&handle));
        let dir = self.socket_dir();
        std::fs::create_dir_all(&dir).expect("the temporary directory is writable");
        let socket = dir.join(format!("dummy-{n}.sock"));
        self.listeners
            .lock()
            .push(UnixListener::bind(&socket).expect("a fresh socket path"));
        Ok(Spawned {
            handle,
            socket,
            concurrency: 1,
        })
    }
}
