//! The pool's limits through a real Apache: the queue (503, 504), time and
//! memory limits, min instances and pre-start.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::harness::{Apache, app_pid, read_response, serve_app};

fn apache(extra: &str, global: &str) -> Apache {
    serve_app("wsgi", extra, global)
}

/// Starts a request in the background; returns its response when joined.
fn background(apache: &Apache, path: &str) -> std::thread::JoinHandle<crate::harness::Response> {
    let (port, path) = (apache.port, path.to_owned());
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        read_response(&mut std::io::BufReader::new(s), false).unwrap()
    })
}

#[test]
fn a_full_queue_answers_503_and_logs_it() {
    let mut apache = apache("PassengerMaxRequestQueueSize 1", "PassengerMaxPoolSize 1");
    apache.allow("MP0706");
    app_pid(&apache);
    let busy = background(&apache, "/slow?1.5");
    std::thread::sleep(Duration::from_millis(200));
    let queued = background(&apache, "/slow?0.1");
    std::thread::sleep(Duration::from_millis(200));
    let refused = apache.get("/");
    assert_eq!(refused.status, 503);
    assert!(refused.text().contains("queue full"), "{}", refused.text());
    assert_eq!(busy.join().unwrap().status, 200);
    assert_eq!(queued.join().unwrap().status, 200);
    assert!(apache.error_log().contains("MP0706"));
}

#[test]
fn a_request_that_waits_too_long_in_the_queue_gets_504() {
    let apache = apache("PassengerMaxRequestQueueTime 1", "PassengerMaxPoolSize 1");
    app_pid(&apache);
    let busy = background(&apache, "/slow?2.5");
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(apache.get("/").status, 504);
    assert!(started.elapsed() < Duration::from_millis(2200));
    assert_eq!(busy.join().unwrap().status, 200);
}

#[test]
fn a_request_over_max_request_time_gets_504_and_its_process_is_replaced() {
    let mut apache = apache("PassengerMaxRequestTime 1", "");
    apache.allow("MP0707");
    apache.allow("MP0406");
    let before = app_pid(&apache);
    let started = Instant::now();
    let response = apache.get("/slow?10");
    assert_eq!(response.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(app_pid(&apache), before);
}

#[test]
fn time_waiting_in_the_queue_does_not_count_against_max_request_time() {
    let apache = apache("PassengerMaxRequestTime 2", "PassengerMaxPoolSize 1");
    let before = app_pid(&apache);
    let busy = background(&apache, "/slow?1.5");
    std::thread::sleep(Duration::from_millis(200));
    // Waits about 1.3 s for the only process, then runs 1 s: 2.3 s in all,
    // but each process spends less than 2 s on each request.
    let queued = background(&apache, "/slow?1");
    assert_eq!(busy.join().unwrap().status, 200);
    assert_eq!(queued.join().unwrap().status, 200);
    assert_eq!(app_pid(&apache), before);
}

#[test]
fn a_process_over_the_memory_limit_is_replaced_after_its_request() {
    let apache = apache("PassengerMemoryLimit 50", "");
    let before = app_pid(&apache);
    assert_eq!(apache.get("/hog").text(), "hogging");
    let deadline = Instant::now() + Duration::from_secs(10);
    while app_pid(&apache) == before {
        assert!(
            Instant::now() < deadline,
            "never replaced:\n{}",
            apache.error_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(apache.error_log().contains("PassengerMemoryLimit"));
}

#[test]
fn min_instances_are_kept_after_the_first_request() {
    let apache = apache("PassengerMinInstances 3", "");
    app_pid(&apache);
    let deadline = Instant::now() + Duration::from_secs(10);
    while apache.error_log().matches("MP0301").count() < 3 {
        assert!(Instant::now() < deadline, "{}", apache.error_log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pre_start_spawns_the_app_without_a_request() {
    let apache = apache("", "PassengerPreStart http://127.0.0.1:{port}/");
    assert!(
        apache.wait_for_log("MP0301", Duration::from_secs(15)),
        "the app was not pre-started:\n{}",
        apache.error_log()
    );
    // The pre-start request's own log line follows the app's answer.
    assert!(
        apache.wait_for_log("pre-started", Duration::from_secs(15)),
        "{}",
        apache.error_log()
    );
}

#[test]
fn a_request_whose_client_left_while_queued_is_never_dispatched() {
    let apache = apache("", "PassengerMaxPoolSize 1");
    app_pid(&apache);
    let busy = background(&apache, "/slow?2.5");
    std::thread::sleep(Duration::from_millis(200));
    {
        let mut gone = std::net::TcpStream::connect(("127.0.0.1", apache.port)).unwrap();
        gone.write_all(b"GET /errors HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(busy.join().unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !apache.error_log().contains("message to wsgi.errors"),
        "{}",
        apache.error_log()
    );
    assert_eq!(apache.get("/errors").text(), "logged");
    assert!(apache.wait_for_log("message to wsgi.errors", Duration::from_secs(5)));
}
