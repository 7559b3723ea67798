//! Rack apps through a real Apache: the Rack env under Rack::Lint, smart
//! spawning (the default for Ruby), streaming, the PhusionPassenger API and
//! Bundler.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use crate::harness::{Apache, get_json, serve_app, sha256_hex};

fn rack_apache(app: &'static str, extra: &str) -> Apache {
    serve_app(app, extra, "")
}

fn env(apache: &Apache, path: &str) -> serde_json::Value {
    get_json(apache, path)
}

#[test]
fn a_rack_app_gets_a_lint_clean_env() {
    let apache = rack_apache("rack", "");
    assert_eq!(apache.get("/").text(), "hello from rack");
    assert_eq!(apache.get("/static.txt").text(), "static file\n");
    let e = env(&apache, "/env?a=%20b&c");
    assert_eq!(e["QUERY_STRING"], "a=%20b&c");
    assert_eq!(e["SCRIPT_NAME"], "");
    assert_eq!(e["PATH_INFO"], "/env");
    assert_eq!(e["REQUEST_METHOD"], "GET");
    assert_eq!(e["rack.url_scheme"], "http");
    assert_eq!(e["passenger_defined"], true);
    assert_eq!(e["hijack"], true);
    assert_eq!(e["RACK_ENV"], serde_json::Value::Null);

    let body: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let digest = sha256_hex(&body);
    let mut raw = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
    raw.extend_from_slice(&body);
    assert_eq!(
        apache.request(&raw).text(),
        format!("{} {digest}", body.len())
    );
    let mut chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for piece in body.chunks(70_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(
        apache.request(&chunked).text(),
        format!("{} {digest}", body.len())
    );
    let head = apache.request(b"HEAD /cookies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(head.status, 201);
    let cookies = apache.get("/cookies");
    assert_eq!(cookies.all("Set-Cookie"), vec!["a=1", "b=2"]);
    assert!(
        !apache.error_log().contains("LintError"),
        "{}",
        apache.error_log()
    );
}

#[test]
fn ruby_apps_are_forked_from_a_preloader_by_default() {
    let apache = rack_apache("rack", "");
    let e = env(&apache, "/env");
    assert_eq!(
        e["forked"], true,
        "starting_worker_process(forked = true) in smart mode"
    );
    assert_ne!(e["loaded_by"], e["pid"], "the preloader loaded the app");
}

#[test]
fn direct_spawning_loads_the_app_in_each_process() {
    let direct = rack_apache("rack", "PassengerSpawnMethod direct");
    let e = env(&direct, "/env");
    assert_eq!(e["forked"], false);
    assert_eq!(e["loaded_by"], e["pid"]);
}

#[test]
fn a_streaming_rack_body_reaches_the_client_as_it_is_produced() {
    let apache = rack_apache("rack", "");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", apache.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut reader = BufReader::new(s);
    let (mut first, mut chunks, mut line) = (None, 0, String::new());
    while reader.read_line(&mut line).unwrap() > 0 {
        if line.starts_with("chunk ") {
            chunks += 1;
            first.get_or_insert(started.elapsed());
        }
        line.clear();
    }
    assert_eq!(chunks, 3);
    assert!(first.unwrap() + Duration::from_millis(600) < started.elapsed());
}

/// Opens a connection and sends the app's long-poll POST, its form
/// carrying `seq`.
fn start_long_poll(apache: &Apache, seq: u32) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", apache.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let form = format!("seq={seq}");
    write!(
        s,
        "POST /long_poll HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    s
}

/// A long poll as message_bus answers it: the app reads the form, hijacks
/// the socket of an ordinary POST and writes a chunked response from its
/// own thread, a message at a time; each reaches the client as it is
/// written, and the keep-alive connection carries the next request.
#[test]
fn a_hijacked_long_poll_streams_to_the_client() {
    let apache = rack_apache("rack", "");
    let mut s = start_long_poll(&apache, 42);
    let started = Instant::now();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut head = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 2 {
        head.push(line.trim_end().to_ascii_lowercase());
        line.clear();
    }
    assert_eq!(head[0], "http/1.1 200 ok", "{head:?}");
    assert!(
        head.contains(&"transfer-encoding: chunked".to_owned()),
        "{head:?}"
    );
    assert!(
        head.contains(&"cache-control: no-cache".to_owned()),
        "{head:?}"
    );
    let mut messages = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
        let mut chunk = vec![0; size + 2];
        std::io::Read::read_exact(&mut reader, &mut chunk).unwrap();
        if size == 0 {
            break;
        }
        messages.push((String::from_utf8(chunk).unwrap(), started.elapsed()));
    }
    let texts: Vec<&str> = messages.iter().map(|(m, _)| m.trim_end()).collect();
    assert_eq!(texts, ["message 0 for seq 42", "message 1 for seq 42"]);
    assert!(
        messages[0].1 + Duration::from_millis(300) < messages[1].1,
        "{messages:?}"
    );
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    // Framed by Content-Length or chunked, as the body's frames come.
    let next = crate::harness::read_response(&mut reader, false).unwrap();
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, "hello from rack")
    );
    assert!(
        !apache.error_log().contains("LintError"),
        "{}",
        apache.error_log()
    );
}

/// Writes the app's Gemfile.lock for the rack gem installed here, so
/// Bundler resolves offline.
fn lock_rack(apache: &Apache, app: &str) {
    let version = std::process::Command::new("ruby")
        .args(["-e", "require 'rack'; print Rack.release"])
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    let lock = format!(
        "GEM\n  remote: https://rubygems.org/\n  specs:\n    rack ({version})\n\nPLATFORMS\n  ruby\n\nDEPENDENCIES\n  rack\n"
    );
    std::fs::write(apache.dir.join("apps").join(app).join("Gemfile.lock"), lock).unwrap();
}

#[test]
fn a_gemfile_app_runs_under_bundler() {
    let apache = rack_apache("rack-bundler", "");
    lock_rack(&apache, "rack-bundler");
    assert_eq!(
        apache.get("/").text(),
        "bundled yes",
        "{}",
        apache.error_log()
    );
}

#[test]
fn a_missing_gem_is_named_on_the_error_page() {
    let mut apache = rack_apache("rack-bundler", "PassengerFriendlyErrorPages on");
    apache.allow("MP0404");
    std::fs::write(
        apache.dir.join("apps/rack-bundler/Gemfile"),
        "source 'https://rubygems.org'\ngem 'rack'\ngem 'no_such_gem_anywhere'\n",
    )
    .unwrap();
    let page = apache.get("/");
    assert_eq!(page.status, 500);
    assert!(
        page.text().contains("no_such_gem_anywhere"),
        "{}",
        page.text()
    );
}

#[test]
fn a_real_rack_framework_runs_unchanged() {
    let apache = rack_apache("sinatra", "");
    let response = apache.get("/hello/w%C3%B6rld?q=x%20y");
    assert_eq!(response.status, 200, "{}", apache.error_log());
    assert_eq!(response.text(), "Hello, wörld! q=x y");
    let form = apache.request(
        b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 5\r\nConnection: close\r\n\r\na=b+c",
    );
    assert_eq!(form.text(), "got b c");
}

/// A client that leaves in the middle of a hijacked long poll costs
/// nothing but the poll itself: the app's next write finds the connection
/// gone, the process serves the next request, and nothing is logged.
#[test]
fn a_client_leaving_a_hijacked_long_poll_frees_the_process() {
    let apache = serve_app("rack", "", "PassengerMaxPoolSize 1");
    let pid = crate::harness::app_pid(&apache);
    {
        let mut s = start_long_poll(&apache, 1);
        let mut first = [0u8; 12];
        std::io::Read::read_exact(&mut s, &mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
    } // gone, with the poll's second message still to come
    let started = Instant::now();
    assert_eq!(apache.get("/").text(), "hello from rack");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(crate::harness::app_pid(&apache), pid);
}

/// A single-threaded app that hands a long poll to a thread of its own and
/// returns leaves its process free (the loader's RELEASE): with the pool's
/// only process holding an open poll, other requests are served by that
/// same process, and the poll is answered later.
#[test]
fn an_open_long_poll_leaves_the_only_process_free() {
    let apache = serve_app("rack", "", "PassengerMaxPoolSize 1");
    let pid = crate::harness::app_pid(&apache);
    let tmp = apache.dir.join("apps/rack/tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    // The app's user writes its markers there.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut poll = std::net::TcpStream::connect(("127.0.0.1", apache.port)).unwrap();
    poll.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    poll.write_all(b"GET /held_poll HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tmp.join("poll-held").exists() {
        assert!(Instant::now() < deadline, "the poll never reached the app");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..3 {
        assert_eq!(apache.get("/").text(), "hello from rack");
    }
    assert_eq!(
        crate::harness::app_pid(&apache),
        pid,
        "one process served all"
    );
    std::fs::write(tmp.join("answer-poll"), b"").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut poll, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.ends_with("\r\n\r\nanswered"), "{answer:?}");
    assert_eq!(crate::harness::app_pid(&apache), pid);
}
