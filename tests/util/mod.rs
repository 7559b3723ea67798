//! Fixtures for the integration tests: a real `passenger-agent` on a private
//! instance directory, killed and reaped when the test ends.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mod_passenger::protocol::{Connection, Message, Role};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A private directory under the temp dir, removed on drop, readable by the
/// app user.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mp-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(dir)
    }

    /// Writes a file (and its parents), readable by everyone.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running agent.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    _dir: TempDir,
}

impl Agent {
    pub fn start() -> Agent {
        let dir = TempDir::new("agent");
        let instance = dir.0.join("registry/mod_passenger.test");
        let child = Command::new(env!("CARGO_BIN_EXE_passenger-agent"))
            .arg("--instance-dir")
            .arg(&instance)
            .spawn()
            .expect("passenger-agent starts");
        let socket = instance.join("agent.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent did not start listening"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent {
            child,
            socket,
            _dir: dir,
        }
    }

    /// A connection that said HELLO as `role`.
    pub fn connect(&self, role: Role) -> Connection<UnixStream> {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut conn = Connection::new(stream);
        conn.send(
            0,
            &Message::Hello {
                role,
                pid: std::process::id(),
                generation: 1,
            },
        )
        .unwrap();
        match conn.read_frame().unwrap() {
            Some((_, Message::HelloOk { .. })) => conn,
            other => panic!("expected HELLO_OK, got {other:?}"),
        }
    }

    /// A raw stream, no handshake.
    pub fn raw(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal WSGI app directory.
pub fn wsgi_app(dir: &Path, body: &str) {
    let app = format!(
        "def application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [{body:?}.encode()]\n"
    );
    std::fs::write(dir.join("passenger_wsgi.py"), app).unwrap();
    std::fs::set_permissions(
        dir.join("passenger_wsgi.py"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
}
