//! `passenger-status` against a real Apache: the pool view names the app
//! group and the process that served the request, `--show=json` gives the
//! agent's document, `--show=requests` the requests in flight, any user may
//! ask and sees only its own apps, and with no agent running it says so.

use std::io::{Read, Write};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::{Apache, app_pid, serve_app};

fn passenger_status(registry: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_passenger-status"))
        .arg("--instance-registry-dir")
        .arg(registry)
        .args(args)
        .output()
        .expect("passenger-status runs")
}

/// `passenger-status` run as `user` (through `runuser`).
pub(crate) fn passenger_status_as(user: &str, registry: &std::path::Path, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", user, "--", env!("CARGO_BIN_EXE_passenger-status")])
        .arg("--instance-registry-dir")
        .arg(registry)
        .args(args)
        .output()
        .expect("passenger-status runs")
}

/// `passenger-status` of `apache`, its text pool view.
pub(crate) fn pool_view(apache: &Apache) -> String {
    let out = passenger_status(&apache.dir.join("registry"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_pool_view_shows_the_group_and_the_process_that_served() {
    let apache = serve_app("wsgi", "", "");
    let pid = app_pid(&apache);
    let app_root = apache.dir.join("apps/wsgi");
    // The request is counted when the process is checked back in, just
    // after the client got its answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    let view = loop {
        let view = pool_view(&apache);
        if view.contains("Processed: 1 ") || Instant::now() > deadline {
            break view;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for needle in [
        "Max pool size : 6".to_owned(),
        "(Apache/2.4".to_owned(),
        "Processes     : 1".to_owned(),
        format!("{} (production):", app_root.display()),
        format!("  App root: {}", app_root.display()),
        format!("  * PID: {pid:<7} Sessions: 0       Processed: 1 "),
        "Last used: ".to_owned(),
    ] {
        assert!(view.contains(&needle), "{needle:?} missing from:\n{view}");
    }
}

#[test]
fn show_json_gives_the_agents_document() {
    let apache = serve_app("wsgi", "", "");
    let pid = app_pid(&apache);
    let out = passenger_status(&apache.dir.join("registry"), &["--show=json"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["pid"], apache.agent_pid());
    assert_eq!(doc["groups"][0]["processes"][0]["pid"], pid);
    assert!(
        doc["groups"][0]["processes"][0]["rss_kib"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn show_requests_lists_the_requests_in_flight() {
    let apache = serve_app("wsgi", "", "");
    let pid = app_pid(&apache);
    let port = apache.port;
    let slow = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /slow?2 HTTP/1.1\r\nHost: in-flight.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    });
    // The request is in the app for 2 s: find it there (before, it may be
    // seen checking out its process).
    let deadline = Instant::now() + Duration::from_secs(5);
    let request = loop {
        let out = passenger_status(&apache.dir.join("registry"), &["--show=requests"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["thread1"]["pid"], apache.agent_pid());
        let found = doc["thread1"]["active_clients"]
            .as_object()
            .unwrap()
            .values()
            .find(|c| {
                c["current_request"]["path"] == "/slow?2"
                    && c["current_request"]["state"] == "WAITING_FOR_APP_OUTPUT"
            })
            .map(|c| c["current_request"].clone());
        if let Some(request) = found {
            break request;
        }
        assert!(Instant::now() < deadline, "not in flight: {doc:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(request["method"], "GET");
    assert_eq!(request["host"], "in-flight.test");
    assert_eq!(request["session"]["pid"], pid);
    assert!(slow.join().unwrap().contains("200 OK"));
    // Over: no longer in flight.
    let out = passenger_status(&apache.dir.join("registry"), &["--show=server"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["thread1"]["requests_in_flight"], 0, "{doc:#}");
}

#[test]
fn show_xml_is_well_formed_and_names_the_process() {
    let apache = serve_app("wsgi", "", "");
    let pid = app_pid(&apache);
    let out = passenger_status(&apache.dir.join("registry"), &["--show=xml"]);
    assert!(out.status.success());
    let xml = String::from_utf8(out.stdout).unwrap();
    assert!(xml.contains(&format!("<pid>{pid}</pid>")), "{xml}");
    assert!(xml.contains("<app_type>wsgi</app_type>"), "{xml}");
    assert!(xml.contains("<user>nobody</user>"), "{xml}");
    let mut parser = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.dom.minidom; xml.dom.minidom.parseString(sys.stdin.buffer.read())",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut parser.stdin.take().unwrap(), xml.as_bytes()).unwrap();
    assert!(
        parser.wait().unwrap().success(),
        "not well-formed XML:\n{xml}"
    );
}

#[test]
fn without_a_running_agent_it_says_so() {
    let registry = std::env::temp_dir().join(format!("mp-e2e-status-{}", std::process::id()));
    std::fs::create_dir_all(&registry).unwrap();
    let out = passenger_status(&registry, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not seem to be running"), "{err}");
    std::fs::remove_dir_all(&registry).unwrap();
}

#[test]
fn each_user_sees_only_the_apps_that_run_as_itself() {
    let apache = serve_app("wsgi", "", "");
    let pid = app_pid(&apache);
    let as_user = |user: &str| {
        let out = passenger_status_as(user, &apache.dir.join("registry"), &[]);
        assert!(
            out.status.success(),
            "{user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // The root-owned app runs as nobody.
    let nobody = as_user("nobody");
    assert!(nobody.contains(&format!("* PID: {pid} ")), "{nobody}");
    let www_data = as_user("www-data");
    assert!(www_data.contains("App groups    : 0"), "{www_data}");
    assert!(!www_data.contains(&format!("{pid}")), "{www_data}");
}

#[test]
fn the_status_socket_answers_nothing_but_status() {
    use mod_passenger::protocol::{Connection, Message, Role};
    let apache = serve_app("wsgi", "", "");
    app_pid(&apache);
    let socket = apache.instance_dirs()[0].join("status.sock");
    let mut conn = Connection::new(std::os::unix::net::UnixStream::connect(socket).unwrap());
    let hello = Message::Hello {
        role: Role::Worker,
        pid: std::process::id(),
        generation: 0,
    };
    conn.send(0, &hello).unwrap();
    match conn.read_frame().unwrap() {
        Some((_, Message::Error { code, message })) => {
            assert_eq!(code, 403, "{message}");
        }
        other => panic!("a worker was let in: {other:?}"),
    }
}

/// `ps` names app processes as the original does, so the users guide's way
/// to find an app's user (its pid from passenger-status, then `ps`) and
/// scripts that look for "Passenger RubyApp" keep working.
#[test]
fn app_processes_carry_the_originals_titles() {
    let title = |pid: i64| {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        String::from_utf8_lossy(&raw)
            .replace('\0', " ")
            .trim_end()
            .to_owned()
    };
    let rack = serve_app("rack", "", "");
    let env = crate::harness::get_json(&rack, "/env");
    let root = rack.dir.join("apps/rack");
    let (pid, preloader) = (
        env["pid"].as_i64().unwrap(),
        env["loaded_by"].as_i64().unwrap(),
    );
    assert_ne!(pid, preloader, "smart spawning: {env}");
    assert_eq!(
        title(pid),
        format!("Passenger RubyApp: {} (production)", root.display())
    );
    assert_eq!(
        title(preloader),
        format!("Passenger AppPreloader: {}", root.display())
    );

    let node = serve_app("node", "", "");
    let answer = node.get("/").text();
    let pid: i64 = answer.rsplit(' ').next().unwrap().parse().unwrap();
    let root = node.dir.join("apps/node");
    assert_eq!(
        title(pid),
        format!("Passenger NodeApp: {} (production)", root.display())
    );
}
