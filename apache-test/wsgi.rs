//! The WSGI slice through a real Apache: routing, the PEP 3333 environ,
//! bodies both ways, streaming, errors, and the agent's lifetime across
//! graceful restarts, stops and crashes.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{
    Apache, Scenario, json, pids_matching, process_alive, process_user, read_response, serve_app,
    sha256_hex, vhost,
};

fn wsgi_apache(extra: &str) -> Apache {
    serve_app("wsgi", extra, "")
}

#[test]
fn serves_the_app_and_leaves_static_files_to_apache() {
    let apache = wsgi_apache("");
    let response = apache.get("/");
    assert_eq!(response.status, 200, "{}", apache.error_log());
    assert_eq!(response.text(), "hello from wsgi");
    let static_file = apache.get("/static.txt");
    assert_eq!(static_file.status, 200);
    assert_eq!(static_file.text(), "static file\n");
    // The app never runs as root.
    let env = json(&apache.get("/env"));
    assert_ne!(env["uid"], 0);
    assert!(process_user(env["pid"].as_i64().unwrap() as i32) != 0);
}

#[test]
fn cached_pages_are_served_by_apache_for_gets_only() {
    let apache = wsgi_apache("");
    let public = apache.dir.join("apps/wsgi/public");
    std::fs::write(public.join("cached.html"), "a cached page\n").unwrap();
    std::fs::write(public.join("index.html"), "the cached front page\n").unwrap();
    // Rails page caching, as the original: /cached is served from cached.html
    // and / from index.html, by Apache, as HTML.
    let page = apache.get("/cached");
    assert_eq!(
        (page.status, page.text().as_str()),
        (200, "a cached page\n")
    );
    assert!(
        page.header("Content-Type")
            .is_some_and(|t| t.starts_with("text/html"))
    );
    assert_eq!(apache.get("/").text(), "the cached front page\n");
    // Anything but a GET goes to the app.
    let posted = apache.request(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    assert_eq!(posted.status, 200);
    std::fs::write(public.join("echo.html"), "cached echo\n").unwrap();
    let posted = apache.request(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    assert_ne!(posted.text(), "cached echo\n");
    // A path without a cached page still reaches the app.
    assert!(json(&apache.get("/env"))["pid"].as_i64().is_some());
}

#[test]
fn passenger_enabled_off_leaves_the_vhost_to_apache() {
    let apache = wsgi_apache("PassengerEnabled off");
    assert_eq!(apache.get("/").status, 404);
    assert_eq!(apache.get("/static.txt").status, 200);
}

#[test]
fn the_environ_is_pep_3333_correct() {
    let apache = wsgi_apache("");
    let raw = format!(
        "GET /env?a=%20b&c=d%2Fe HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nX-User: alice\r\nX_User: mallory\r\nConnection: close\r\n\r\n",
        apache.port
    );
    let response = apache.request(raw.as_bytes());
    assert_eq!(response.status, 200, "{}", apache.error_log());
    let env = json(&response);
    assert_eq!(env["QUERY_STRING"], "a=%20b&c=d%2Fe");
    assert_eq!(env["PATH_INFO"], "/env");
    assert_eq!(env["SCRIPT_NAME"], "");
    assert_eq!(env["REQUEST_METHOD"], "GET");
    assert_eq!(env["SERVER_PORT"], apache.port.to_string());
    assert_eq!(env["SERVER_NAME"], "127.0.0.1");
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(env["wsgi.url_scheme"], "http");
    assert_eq!(env["MY_SETENV"], "from-apache");
    assert_eq!(env["PASSENGER_APP_ENV"], serde_json::Value::Null);
    assert_eq!(env["os_env"]["PASSENGER_APP_ENV"], "production");
    assert_eq!(env["os_env"]["WSGI_ENV"], "production");
    // X_User can never pose as X-User.
    assert_eq!(env["headers"]["HTTP_X_USER"], "alice");
    assert_eq!(
        env["headers"]
            .as_object()
            .unwrap()
            .values()
            .filter(|v| *v == "mallory")
            .count(),
        0
    );
}

#[test]
fn passenger_app_env_reaches_the_app() {
    let apache = wsgi_apache("PassengerAppEnv staging");
    let env = json(&apache.get("/env"));
    assert_eq!(env["os_env"]["PASSENGER_APP_ENV"], "staging");
    assert_eq!(env["os_env"]["WSGI_ENV"], "staging");
}

#[test]
fn a_real_framework_gets_percent_decoded_paths() {
    let apache = Apache::start(Scenario::new(&vhost("flask", "", "")).app("flask"));
    let response = apache.get("/hello/w%C3%B6rld?q=x%20y");
    assert_eq!(response.status, 200, "{}", apache.error_log());
    assert_eq!(response.text(), "Hello, wörld! q=x y");
}

#[test]
fn request_bodies_with_content_length_and_chunked_are_streamed_to_the_app() {
    let apache = wsgi_apache("");
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256_hex(&body);
    let mut raw = format!(
        "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let response = apache.request(&raw);
    assert_eq!(response.status, 200, "{}", apache.error_log());
    assert_eq!(response.text(), format!("{} {digest}", body.len()));

    let mut chunked = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for piece in body.chunks(100_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let response = apache.request(&chunked);
    assert_eq!(response.status, 200, "{}", apache.error_log());
    assert_eq!(response.text(), format!("{} {digest}", body.len()));

    let small = b"POST /lines HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 6\r\nConnection: close\r\n\r\na\nb\nc\n";
    assert_eq!(apache.request(small).text(), "3");
}

#[test]
fn a_slow_generator_reaches_the_client_chunk_by_chunk() {
    let apache = wsgi_apache("");
    let mut stream = TcpStream::connect(("127.0.0.1", apache.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut first_chunk_at = None;
    let mut chunks = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.starts_with("chunk ") {
            chunks += 1;
            first_chunk_at.get_or_insert(started.elapsed());
        }
    }
    let total = started.elapsed();
    assert_eq!(chunks, 3);
    let first = first_chunk_at.unwrap();
    assert!(
        first + Duration::from_millis(600) < total,
        "first chunk at {first:?}, all done at {total:?}"
    );
}

#[test]
fn responses_keep_status_reason_repeated_headers_and_bodies() {
    let apache = wsgi_apache("");
    let cookies = apache.get("/cookies");
    assert_eq!(cookies.status_line, "HTTP/1.1 201 Created Here");
    assert_eq!(cookies.all("Set-Cookie"), vec!["a=1", "b=2"]);
    assert_eq!(cookies.header("X-Custom"), Some("yes"));
    assert_eq!(cookies.text(), "cookies");

    assert_eq!(apache.get("/write").text(), "written and returned");
    let exc = apache.get("/exc_info");
    assert_eq!(exc.status, 500);
    assert_eq!(exc.text(), "handled error");
    let big = apache.get("/big");
    assert_eq!(big.body.len(), 1024 * 1024);

    let head = apache.request(
        format!(
            "HEAD /cookies HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            apache.port
        )
        .as_bytes(),
    );
    assert_eq!(head.status, 201);
    assert!(head.body.is_empty());
}

#[test]
fn close_is_called_on_the_response_iterable() {
    let apache = wsgi_apache("");
    let marker = std::env::temp_dir().join(format!("mp-close-marker-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let response = apache.get(&format!("/close?{}", marker.display()));
    assert_eq!(response.text(), "closing");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !marker.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "closed");
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn wsgi_errors_goes_to_the_error_log() {
    let apache = wsgi_apache("");
    assert_eq!(apache.get("/errors").text(), "logged");
    assert!(
        apache.wait_for_log("message to wsgi.errors", Duration::from_secs(5)),
        "{}",
        apache.error_log()
    );
}

#[test]
fn a_dying_process_gives_502_and_is_replaced() {
    let mut apache = wsgi_apache("");
    apache.allow("MP0406");
    apache.allow("MP0705");
    apache.allow("MP0709");
    assert_eq!(apache.get("/").status, 200);
    assert_eq!(apache.get("/crash").status, 502);
    let response = apache.get("/");
    assert_eq!(response.status, 200, "{}", apache.error_log());
}

#[test]
fn an_app_that_fails_to_load_gets_a_500_and_a_log_line() {
    let mut apache = Apache::start(Scenario::new(&vhost("broken", "", "")).app("broken"));
    apache.allow("MP0404");
    let response = apache.get("/");
    assert_eq!(response.status, 500);
    let log = apache.error_log();
    assert!(
        log.contains("MP0404") && log.contains("module_that_does_not_exist"),
        "{log}"
    );
    assert!(log.contains("as user nobody"), "{log}");
}

#[test]
fn graceful_restart_keeps_the_agent_and_the_app_processes() {
    let apache = wsgi_apache("");
    let before = json(&apache.get("/env"))["pid"].as_i64().unwrap();
    let agent = apache.agent_pid();
    let out = apache.ctl("graceful");
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(500));
    let after = json(&apache.get("/env"))["pid"].as_i64().unwrap();
    assert_eq!(
        before, after,
        "the app process was restarted by a graceful restart"
    );
    assert_eq!(agent, apache.agent_pid());
}

#[test]
fn graceful_restarts_under_load_fail_no_request() {
    let apache = wsgi_apache("");
    assert_eq!(apache.get("/").status, 200);
    let static_file = load_during_graceful(&apache, "/static.txt");
    let app = load_during_graceful(&apache, "/");
    eprintln!(
        "graceful under load: static {static_file:?}, app {app:?}; keep-alive closes: static {}, app {}",
        static_file.keep_alive_closed, app.keep_alive_closed
    );
    assert!(app.ok > 100, "too few requests: {app:?}");
    // Apache closes idle keep-alive connections as it retires children
    // (for a static file too); a request that meets such a close was never
    // read, and a client sends it again (RFC 9112 §9.3.1). Anything else
    // is a failure.
    assert_eq!(
        (app.non_200, app.failed),
        (0, 0),
        "first failure: {:?}",
        app.first_failure
    );
    assert_eq!(
        (static_file.non_200, static_file.failed),
        (0, 0),
        "first failure: {:?}",
        static_file.first_failure
    );
}

/// What a load run saw.
#[derive(Debug, Default)]
struct LoadCounts {
    /// 200 answers.
    ok: usize,
    /// Other answers.
    non_200: usize,
    /// Requests on a reused keep-alive connection that the server closed
    /// before any byte of the answer: never read, to be sent again.
    keep_alive_closed: usize,
    /// Connections that failed otherwise (refused, mid-answer, timeout).
    failed: usize,
    /// The first of those failures.
    first_failure: Option<String>,
}

/// Four clients of keep-alive bursts during two `apache2 -k graceful`.
fn load_during_graceful(apache: &Apache, path: &'static str) -> LoadCounts {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let first_failure = Arc::new(parking_lot::Mutex::new(None));
    let port = apache.port;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, counts) = (stop.clone(), counts.clone());
            let first_failure = first_failure.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let (statuses, end) = keep_alive_burst(port, path, 20);
                    for s in statuses {
                        counts[usize::from(s != 200)].fetch_add(1, Ordering::Relaxed);
                    }
                    match end {
                        BurstEnd::Done => {}
                        BurstEnd::KeepAliveClosed => {
                            counts[2].fetch_add(1, Ordering::Relaxed);
                        }
                        BurstEnd::Failed(e) => {
                            counts[3].fetch_add(1, Ordering::Relaxed);
                            first_failure.lock().get_or_insert(e.to_string());
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    for _ in 0..2 {
        assert!(apache.ctl("graceful").status.success());
        std::thread::sleep(Duration::from_millis(1200));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let count = |i: usize| counts[i].load(Ordering::Relaxed);
    LoadCounts {
        ok: count(0),
        non_200: count(1),
        keep_alive_closed: count(2),
        failed: count(3),
        first_failure: first_failure.lock().take(),
    }
}

/// How a keep-alive burst ended.
enum BurstEnd {
    /// Every request was answered (or the server said `Connection: close`).
    Done,
    /// The server closed the reused connection before answering a request.
    KeepAliveClosed,
    /// Anything else went wrong.
    Failed(std::io::Error),
}

/// Sends up to `n` requests on one keep-alive connection; returns their
/// statuses and how the burst ended.
fn keep_alive_burst(port: u16, path: &str, n: usize) -> (Vec<u16>, BurstEnd) {
    let mut statuses = Vec::new();
    let stream = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(stream) => stream,
        Err(e) => return (statuses, BurstEnd::Failed(e)),
    };
    let setup = stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .and_then(|()| stream.try_clone());
    let mut writer = match setup {
        Ok(writer) => writer,
        Err(e) => return (statuses, BurstEnd::Failed(e)),
    };
    let mut reader = BufReader::new(stream);
    for i in 0..n {
        let close = if i + 1 == n {
            "Connection: close\r\n"
        } else {
            ""
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{close}\r\n");
        // A reused connection the server has closed fails on the write or
        // with nothing to read: the request was never read.
        let end_before_answer = |e: std::io::Error| {
            let closed = i > 0
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::UnexpectedEof
                );
            if closed {
                BurstEnd::KeepAliveClosed
            } else {
                BurstEnd::Failed(e)
            }
        };
        if let Err(e) = writer.write_all(request.as_bytes()) {
            return (statuses, end_before_answer(e));
        }
        // Nothing at all to read (end of stream or a reset) means the
        // server closed the connection without reading the request; once
        // a byte has come, any error is a failure.
        let first_byte = match reader.fill_buf() {
            Ok([]) => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = first_byte {
            return (statuses, end_before_answer(e));
        }
        let response = match read_response(&mut reader, false) {
            Ok(response) if response.status == 0 => {
                let bad =
                    std::io::Error::other(format!("bad status line {:?}", response.status_line));
                return (statuses, BurstEnd::Failed(bad));
            }
            Ok(response) => response,
            Err(e) => return (statuses, BurstEnd::Failed(e)),
        };
        statuses.push(response.status);
        if response
            .header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            break;
        }
    }
    (statuses, BurstEnd::Done)
}

#[test]
fn stop_leaves_no_agent_app_or_instance_directory() {
    let mut apache = wsgi_apache("");
    let app_pid = json(&apache.get("/env"))["pid"].as_i64().unwrap() as i32;
    let agent = apache.agent_pid();
    let instance = apache.instance_dirs()[0].clone();
    apache.stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    while (process_alive(agent) || process_alive(app_pid) || instance.exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!process_alive(agent), "the agent is still running");
    assert!(!process_alive(app_pid), "the app process is still running");
    assert!(!instance.exists(), "{} is still there", instance.display());
    assert!(pids_matching(&instance.to_string_lossy()).is_empty());
}

#[test]
fn a_killed_agent_is_replaced_and_requests_succeed() {
    let mut apache = wsgi_apache("");
    apache.allow("MP0002");
    apache.allow("AH00045");
    assert_eq!(apache.get("/").status, 200);
    let agent = apache.agent_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = apache.get("/");
        if response.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {}\n{}",
            response.status,
            apache.error_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(apache.agent_pid(), agent);
}

#[test]
fn passenger_root_tells_a_relocated_module_where_the_agent_is() {
    let dir = std::env::temp_dir().join(format!("mp-relocated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("mod_passenger.so");
    std::fs::copy(crate::harness::module_path(), &module).unwrap();
    let agent_dir = crate::harness::module_path()
        .parent()
        .unwrap()
        .to_path_buf();
    let apache = Apache::start(
        Scenario::new(&format!(
            "PassengerRoot {}\n{}",
            agent_dir.display(),
            vhost("wsgi", "", "")
        ))
        .app("wsgi")
        .module(module.clone()),
    );
    assert_eq!(apache.get("/").text(), "hello from wsgi");
    drop(apache);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_an_agent_apache_keeps_serving_and_says_why() {
    let dir = std::env::temp_dir().join(format!("mp-no-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("mod_passenger.so");
    std::fs::copy(crate::harness::module_path(), &module).unwrap();
    let mut apache = Apache::start(
        Scenario::new(&vhost("wsgi", "", ""))
            .app("wsgi")
            .module(module),
    );
    apache.allow("MP0001");
    apache.allow("MP0202");
    assert_eq!(apache.get("/static.txt").status, 200);
    assert_eq!(apache.get("/").status, 503);
    assert!(
        apache.error_log().contains("cannot find passenger-agent"),
        "{}",
        apache.error_log()
    );
    drop(apache);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn app_root_type_startup_file_and_python_can_be_given_explicitly() {
    let apache = Apache::start(
        Scenario::new(
            r#"<VirtualHost 127.0.0.1:{port}>
    ServerName 127.0.0.1
    DocumentRoot {dir}/apps/explicit/www
    PassengerAppRoot {dir}/apps/explicit/code
    PassengerAppType wsgi
    PassengerStartupFile app.py
    PassengerPython /usr/bin/python3.11
    <Directory {dir}/apps/explicit/www>
        Require all granted
    </Directory>
</VirtualHost>
"#,
        )
        .app("explicit"),
    );
    assert_eq!(
        apache.get("/anything").text(),
        "explicit app on /usr/bin/python3.11"
    );
    assert_eq!(apache.get("/index.txt").text(), "static\n");
}

/// A client that gives up in the middle of its upload (a mobile network,
/// a cancelled form): the request is dropped, the same process serves the
/// next request, and nothing is logged as a fault (the module notes the
/// unreadable body at info level).
#[test]
fn a_client_abandoning_its_upload_leaves_no_trace() {
    let apache = wsgi_apache("");
    let pid = crate::harness::app_pid(&apache);
    {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", apache.port)).unwrap();
        s.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n",
        )
        .unwrap();
        s.write_all(&[b'x'; 200_000]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    } // gone, 800000 bytes short
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(crate::harness::app_pid(&apache), pid);
}
