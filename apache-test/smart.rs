//! Smart spawning through a real Apache: a preloader loads the app once
//! and forks the workers; the agent checks each reported pid.

use std::time::{Duration, Instant};

use crate::harness::{Apache, get_json, serve_app};

fn apache(extra: &str) -> Apache {
    serve_app(
        "wsgi",
        &format!("PassengerSpawnMethod smart\n    {extra}"),
        "PassengerStatThrottleRate 0",
    )
}

fn env(apache: &Apache) -> serde_json::Value {
    get_json(apache, "/env")
}

#[test]
fn workers_are_forked_from_one_preloader() {
    let apache = apache("PassengerMinInstances 3");
    let first = env(&apache);
    let preloader = first["ppid"].as_i64().unwrap();
    assert_ne!(
        preloader,
        i64::from(apache.agent_pid()),
        "the worker was not forked by a preloader"
    );
    assert_eq!(
        first["loaded_by"], preloader,
        "the app was loaded by the preloader, not the worker"
    );
    // PassengerMinInstances brings up two more workers from the same preloader.
    let deadline = Instant::now() + Duration::from_secs(10);
    while children_of(preloader).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "workers: {:?}",
            children_of(preloader)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = apache.error_log();
    assert!(log.contains("started the preloader of"), "{log}");
}

#[test]
fn a_restart_replaces_the_preloader() {
    let apache = apache("");
    let before = env(&apache)["ppid"].as_i64().unwrap();
    env(&apache);
    std::fs::create_dir_all(apache.dir.join("apps/wsgi/tmp")).unwrap();
    std::fs::write(apache.dir.join("apps/wsgi/tmp/restart.txt"), b"").unwrap();
    let after = env(&apache)["ppid"].as_i64().unwrap();
    assert_ne!(before, after, "the old preloader served the restarted app");
}

/// The pids whose parent is `parent`.
fn children_of(parent: i64) -> Vec<i64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("PPid:"))
                        .map(|v| v.trim().parse::<i64>().ok())
                })
                .flatten()
                == Some(parent)
        })
        .collect()
}

#[test]
fn out_of_band_work_runs_after_the_response_on_a_process_out_of_rotation() {
    let apache = serve_app("wsgi", "", "");
    let marker = apache.dir.join("oob-marker");
    std::fs::write(&marker, b"").unwrap();
    std::fs::set_permissions(&marker, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let response = apache.get(&format!("/oob?{}", marker.display()));
    assert_eq!(response.status, 200);
    assert!(
        response.header("!~Request-OOB-Work").is_none(),
        "the internal header leaked"
    );
    let oob_pid: i64 = response.text().parse().unwrap();
    // Requests keep being served (by a stand-in process) while it works.
    assert_eq!(apache.get("/").status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ran = std::fs::read_to_string(&marker).unwrap();
        if ran.lines().any(|l| l.parse::<i64>().ok() == Some(oob_pid)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "oob_work never ran: {ran:?}\n{}",
            apache.error_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
