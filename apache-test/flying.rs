//! Flying Passenger: `flying-passenger` started by hand, Apache pointed at
//! it with `PassengerFlyWith`. Restarting and stopping Apache leave the
//! daemon and its app processes alone; stopping the daemon stops them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::harness::{Apache, Scenario, app_pid, process_alive, vhost};

/// A running `flying-passenger`, stopped (SIGTERM) when dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(name: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("mp-e2e-fly-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("registry")).unwrap();
        for d in [&dir, &dir.join("registry")] {
            std::fs::set_permissions(
                d,
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
            )
            .unwrap();
        }
        let socket = dir.join("fly.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_flying-passenger"))
            .arg(format!("--socket-file={}", socket.display()))
            .arg(format!(
                "--instance-registry-dir={}",
                dir.join("registry").display()
            ))
            .arg(format!("--log-file={}", dir.join("fly.log").display()))
            .arg("--max-pool-size=3")
            .spawn()
            .expect("flying-passenger starts");
        let daemon = Daemon { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !daemon.socket.exists() {
            assert!(Instant::now() < deadline, "no socket:\n{}", daemon.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("fly.log")).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn apache_flying_with(socket: &Path) -> Apache {
    let config = vhost(
        "wsgi",
        "",
        &format!("PassengerFlyWith {}", socket.display()),
    );
    Apache::start(Scenario::new(&config).app("wsgi"))
}

fn wait_until_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while process_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn apps_outlive_apache_restarts_and_stops_and_end_with_the_daemon() {
    let mut daemon = Daemon::start("life");
    let mut apache = apache_flying_with(&daemon.socket);
    let pid = app_pid(&apache) as i32;
    // A full restart, not a graceful one: the app process stays.
    assert!(apache.ctl("restart").status.success());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(app_pid(&apache) as i32, pid, "{}", daemon.log());
    // The daemon's settings are its own: --max-pool-size=3.
    let status = Command::new(env!("CARGO_BIN_EXE_passenger-status"))
        .arg("--instance-registry-dir")
        .arg(daemon.dir.join("registry"))
        .output()
        .unwrap();
    let view = String::from_utf8_lossy(&status.stdout);
    assert!(view.contains("Max pool size : 3"), "{view}");
    assert!(view.contains(&format!("* PID: {pid} ")), "{view}");
    // Apache gone: the app is still there.
    apache.stop();
    std::thread::sleep(Duration::from_millis(300));
    assert!(process_alive(pid), "the app ended with Apache");
    daemon.stop();
    assert!(wait_until_gone(pid), "the app outlived the daemon");
    assert!(!daemon.socket.exists(), "the socket was left behind");
}

#[test]
fn the_socket_is_for_root_and_apaches_user_only() {
    let daemon = Daemon::start("perm");
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let www_data = nix::unistd::User::from_name("www-data").unwrap().unwrap();
    assert_eq!(meta.gid(), www_data.gid.as_raw());
}
