//! Hook scripts (`PassengerCtl hook_<name> <command>`) through a real
//! Apache: each event runs its script with its variables, and a failing
//! `before_watchdog_initialization` keeps the agent from starting.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{Apache, Scenario, app_pid, serve_app, vhost};

/// Writes an executable shell script `name` with `body` into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let script = dir.join(name);
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(
        &script,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    script
}

/// A script that appends its hook name and the event's variables to `log`.
fn recording_script(dir: &Path, log: &Path) -> PathBuf {
    let body = format!(
        "echo \"$PASSENGER_HOOK_NAME pid=$PASSENGER_PROCESS_PID root=$PASSENGER_APP_ROOT \
         id=$PASSENGER_ERROR_ID instance=$PASSENGER_INSTANCE_DIR\" >> {}",
        log.display()
    );
    script(dir, &format!("record-{}.sh", std::process::id()), &body)
}

/// Waits until `log` has a line starting with `prefix`; returns the log.
fn wait_for_line(log: &Path, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l.starts_with(prefix)) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scratch(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("mp-e2e-hooks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("hooks.log");
    (dir, log)
}

#[test]
fn attached_and_detached_process_hooks_name_the_process_and_the_app() {
    let (dir, log) = scratch("attach");
    let script = recording_script(&dir, &log);
    let global = format!(
        "PassengerCtl hook_attached_process {0}\nPassengerCtl hook_detached_process {0}\nPassengerStatThrottleRate 0",
        script.display()
    );
    let mut apache = serve_app("wsgi", "", &global);
    apache.allow("MP1101");
    let pid = app_pid(&apache);
    let root = apache.dir.join("apps/wsgi");
    let text = wait_for_line(&log, "attached_process");
    let instance = apache.instance_dirs().pop().unwrap();
    assert!(
        text.contains(&format!(
            "attached_process pid={pid} root={} id= instance={}",
            root.display(),
            instance.display()
        )),
        "{text}"
    );
    // A restart detaches the process.
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::write(root.join("tmp/restart.txt"), "").unwrap();
    let second = app_pid(&apache);
    assert_ne!(second, pid);
    let text = wait_for_line(&log, "detached_process");
    assert!(
        text.contains(&format!(
            "detached_process pid={pid} root={}",
            root.display()
        )),
        "{text}"
    );
    // Stopping Apache stops the agent, which detaches the rest first.
    drop(apache);
    let text = wait_for_line(&log, &format!("detached_process pid={second} "));
    assert!(
        text.contains(&format!("detached_process pid={second} ")),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn spawn_failed_hook_gets_the_error_id_of_the_page() {
    let (dir, log) = scratch("spawn");
    let script = recording_script(&dir, &log);
    let global = format!("PassengerCtl hook_spawn_failed {}", script.display());
    let mut apache = serve_app("broken", "PassengerFriendlyErrorPages off", &global);
    apache.allow("MP0404");
    apache.allow("MP1101");
    let page = apache.get("/");
    assert_eq!(page.status, 500);
    let text = wait_for_line(&log, "spawn_failed");
    let id = page
        .text()
        .split("<code>")
        .nth(1)
        .and_then(|t| t.split("</code>").next())
        .expect("an error id")
        .to_owned();
    assert!(text.contains(&format!("id={id} ")), "{id} not in {text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failing_before_watchdog_initialization_hook_keeps_the_agent_from_starting() {
    let (dir, _) = scratch("init");
    let script = dir.join("fail.sh");
    std::fs::write(&script, "#!/bin/sh\necho refusing >&2\nexit 7\n").unwrap();
    std::fs::set_permissions(
        &script,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let config = vhost(
        "wsgi",
        "",
        &format!(
            "PassengerCtl hook_before_watchdog_initialization {}",
            script.display()
        ),
    );
    let mut apache = Apache::configure(Scenario::new(&config).app("wsgi"));
    for tag in ["MP0001", "MP0202", "MP0702", "MP1102", "refusing"] {
        apache.allow(tag);
    }
    // The agent refuses the configuration and exits; Apache goes on serving
    // everything but the apps, as for any agent that cannot start.
    apache.ctl("start");
    assert!(
        apache.wait_for_log("MP0001", Duration::from_secs(15)),
        "{}",
        apache.error_log()
    );
    let log = apache.error_log();
    assert!(
        log.contains("the before_watchdog_initialization hook script failed"),
        "{log}"
    );
    assert!(
        log.contains("refusing"),
        "the script's output is in the log:\n{log}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !apache.instance_dirs().is_empty() {
        assert!(Instant::now() < deadline, "the agent is still up:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(apache.get("/").status, 503, "{}", apache.error_log());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The users guide's own case: a hook script that hangs is found with
/// `passenger-status --show=backtraces`, which shows the thread waiting in
/// `run_single_hook_script` for that script; the frame is gone once the
/// script returns. Only root and the agent's user may look.
#[test]
fn a_hanging_hook_script_shows_in_the_backtraces() {
    let (dir, _log) = scratch("backtraces");
    let release = dir.join("release");
    let script = script(
        &dir,
        "hangs.sh",
        &format!(
            "i=0\nwhile [ ! -e {} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done",
            release.display()
        ),
    );
    let global = format!("PassengerCtl hook_attached_process {}", script.display());
    let mut apache = serve_app("wsgi", "", &global);
    apache.allow("MP1101");
    app_pid(&apache);
    assert!(
        apache.wait_for_log(
            "Running attached_process hook script",
            Duration::from_secs(10)
        ),
        "{}",
        apache.error_log()
    );
    let backtraces = |user: &str| {
        crate::status::passenger_status_as(
            user,
            &apache.dir.join("registry"),
            &["--show=backtraces"],
        )
    };
    let waiting = format!(
        "in 'run_single_hook_script' (src/agent/hooks.rs:{}) -- {}",
        hook_line(),
        script.display()
    );
    let out = backtraces("root");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hooks = text
        .split("\n\n")
        .find(|block| block.starts_with("Thread 'hooks'"))
        .unwrap_or_else(|| panic!("no hooks thread in:\n{text}"));
    let frames: Vec<&str> = hooks.lines().skip(1).map(str::trim).collect();
    assert_eq!(frames[0], waiting, "{text}");
    assert!(
        frames[1].starts_with("in 'run_hook_scripts' (src/agent/hooks.rs:"),
        "{text}"
    );
    assert!(frames[1].ends_with("-- attached_process"), "{text}");
    assert!(text.contains("Thread 'main' (tid "), "{text}");
    assert!(
        text.contains("Thread 'connection from uid 33' (tid "),
        "{text}"
    );

    let refused = backtraces("nobody");
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("only root and the agent's user may see the agent's threads"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    std::fs::write(&release, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&backtraces("root").stdout).into_owned();
        if !text.contains("run_single_hook_script") {
            assert!(text.contains("Thread 'hooks' (tid "), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "the frame stayed:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The line of the `run_single_hook_script` trace point in hooks.rs.
fn hook_line() -> usize {
    let source = include_str!("../src/agent/hooks.rs");
    1 + source
        .lines()
        .position(|l| l.contains("trace_point!(\"run_single_hook_script\""))
        .expect("the trace point is in hooks.rs")
}
