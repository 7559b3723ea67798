//! Restart files (reference §4.8): `tmp/restart.txt`, `tmp/always_restart.txt`
//! and `PassengerRestartDir`, through a real Apache.

use std::time::Duration;

use crate::harness::{Apache, app_pid, serve_app};

fn apache(extra: &str, global: &str) -> Apache {
    serve_app("wsgi", extra, global)
}

fn touch(path: &std::path::Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"").unwrap();
}

#[test]
fn touching_restart_txt_restarts_the_app_while_in_flight_requests_finish() {
    let apache = apache("", "PassengerStatThrottleRate 0");
    let first = app_pid(&apache);
    assert_eq!(app_pid(&apache), first);
    let port = apache.port;
    let slow = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(
            &mut stream,
            b"GET /slow?1.5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        crate::harness::read_response(&mut std::io::BufReader::new(stream), false).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    touch(&apache.dir.join("apps/wsgi/tmp/restart.txt"));
    let second = app_pid(&apache);
    assert_ne!(second, first, "restart.txt did not restart the app");
    let slow = slow.join().unwrap();
    assert_eq!((slow.status, slow.text().as_str()), (200, "slow"));
    assert_eq!(app_pid(&apache), second, "a restart happens once per touch");
    // Touching again restarts again, even within the same second.
    touch(&apache.dir.join("apps/wsgi/tmp/restart.txt"));
    assert_ne!(app_pid(&apache), second);
}

#[test]
fn the_stat_throttle_delays_noticing_restart_txt() {
    let apache = apache("", "PassengerStatThrottleRate 2");
    let first = app_pid(&apache);
    app_pid(&apache);
    touch(&apache.dir.join("apps/wsgi/tmp/restart.txt"));
    assert_eq!(
        app_pid(&apache),
        first,
        "noticed before the throttle window ended"
    );
    std::thread::sleep(Duration::from_millis(2100));
    assert_ne!(app_pid(&apache), first);
}

#[test]
fn always_restart_txt_restarts_on_every_request() {
    let apache = apache("", "PassengerStatThrottleRate 5");
    app_pid(&apache);
    app_pid(&apache);
    touch(&apache.dir.join("apps/wsgi/tmp/always_restart.txt"));
    std::thread::sleep(Duration::from_millis(5100));
    let a = app_pid(&apache);
    let b = app_pid(&apache);
    let c = app_pid(&apache);
    assert!(a != b && b != c, "{a} {b} {c}");
    std::fs::remove_file(apache.dir.join("apps/wsgi/tmp/always_restart.txt")).unwrap();
    let d = app_pid(&apache);
    assert_eq!(app_pid(&apache), d);
}

#[test]
fn passenger_restart_dir_moves_the_files() {
    let apache = apache(
        "PassengerRestartDir {dir}/restart-here",
        "PassengerStatThrottleRate 0",
    );
    let first = app_pid(&apache);
    app_pid(&apache);
    touch(&apache.dir.join("apps/wsgi/tmp/restart.txt"));
    assert_eq!(
        app_pid(&apache),
        first,
        "the default location is not watched any more"
    );
    touch(&apache.dir.join("restart-here/restart.txt"));
    assert_ne!(app_pid(&apache), first);
}

#[test]
fn no_request_fails_during_restarts_under_load() {
    let apache = apache("", "PassengerStatThrottleRate 0");
    app_pid(&apache);
    let port = apache.port;
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (failures, done) = (failures.clone(), done.clone());
            std::thread::spawn(move || {
                let mut served = 0;
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while !done.load(std::sync::atomic::Ordering::Relaxed)
                    && std::time::Instant::now() < deadline
                {
                    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    std::io::Write::write_all(
                        &mut stream,
                        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    )
                    .unwrap();
                    match crate::harness::read_response(&mut std::io::BufReader::new(stream), false)
                    {
                        Ok(r) if r.status == 200 => served += 1,
                        _ => {
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                served
            })
        })
        .collect();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        touch(&apache.dir.join("apps/wsgi/tmp/restart.txt"));
    }
    std::thread::sleep(Duration::from_millis(400));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(served > 50, "only {served} requests");
    assert_eq!(failures.load(std::sync::atomic::Ordering::Relaxed), 0);
}
