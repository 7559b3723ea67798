//! Node.js apps through a real Apache: `app.js` calling
//! `http.createServer(...).listen(port)` runs unchanged.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use crate::harness::{Apache, serve_app};

fn node_apache(extra: &str) -> Apache {
    serve_app("node", extra, "")
}

#[test]
fn an_unchanged_node_app_is_served() {
    let apache = node_apache("");
    let response = apache.get("/hello?x=1");
    assert_eq!(response.status, 200, "{}", apache.error_log());
    assert!(
        response.text().starts_with("hello from node /hello?x=1"),
        "{}",
        response.text()
    );
    assert_eq!(response.all("Set-Cookie"), vec!["a=1", "b=2"]);
    assert_eq!(apache.get("/static.txt").text(), "ok\n");
    let body = vec![b'x'; 300_000];
    let mut raw = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    assert_eq!(apache.request(&raw).text(), "received 300000");
}

#[test]
fn passenger_nodejs_names_the_interpreter() {
    let apache = node_apache("PassengerNodejs /usr/bin/node");
    assert_eq!(apache.get("/").status, 200, "{}", apache.error_log());
}

#[test]
fn node_responses_stream_and_requests_run_concurrently() {
    let apache = node_apache("");
    assert_eq!(apache.get("/").status, 200);
    let port = apache.port;
    let started = Instant::now();
    let streams: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let begun = Instant::now();
                let mut reader = BufReader::new(s);
                let mut first = None;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 0 {
                    if line.starts_with("chunk ") && first.is_none() {
                        first = Some(begun.elapsed());
                    }
                    line.clear();
                }
                first.unwrap()
            })
        })
        .collect();
    for s in streams {
        assert!(s.join().unwrap() < Duration::from_millis(1000));
    }
    // Two 1.2 s streams on one process (concurrency unlimited) overlap.
    assert!(
        started.elapsed() < Duration::from_millis(2200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        apache.error_log().matches("MP0301").count(),
        1,
        "one process serves both"
    );
}
