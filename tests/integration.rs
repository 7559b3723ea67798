//! Integration tests: the real agent binary and real app processes, driven
//! over the frame protocol, without Apache.

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use mod_passenger::protocol::{Message, RequestHead, Role};
use util::{Agent, TempDir, wsgi_app};

fn request_to(app_root: &std::path::Path, path: &str) -> RequestHead {
    RequestHead {
        flags: 0,
        options: [
            ("PassengerAppRoot", &*app_root.to_string_lossy()),
            ("PassengerAppType", "wsgi"),
        ]
        .into_iter()
        .collect(),
        env: [
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", ""),
            ("PATH_INFO", path),
            ("QUERY_STRING", ""),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
        ]
        .into_iter()
        .collect(),
    }
}

/// Reads frames until END; returns (status, body).
fn read_response(
    conn: &mut mod_passenger::protocol::Connection<std::os::unix::net::UnixStream>,
) -> (u16, Vec<u8>) {
    let mut status = 0;
    let mut body = Vec::new();
    loop {
        match conn.read_frame().unwrap().expect("a frame") {
            (_, Message::Response(head)) => status = head.status,
            (_, Message::Body(data)) => body.extend_from_slice(&data),
            (_, Message::End) => return (status, body),
            (_, Message::Error { code, message }) => return (code, message.into_bytes()),
            (_, other) => panic!("unexpected frame {other:?}"),
        }
    }
}

#[test]
fn serves_a_wsgi_app_over_a_persistent_connection() {
    let agent = Agent::start();
    let app = TempDir::new("app");
    wsgi_app(&app.0, "hello");
    let mut conn = agent.connect(Role::Worker);
    for id in 1..=3 {
        conn.send(id, &Message::Request(request_to(&app.0, "/")))
            .unwrap();
        assert_eq!(read_response(&mut conn), (200, b"hello".to_vec()));
    }
}

#[test]
fn a_spawn_failure_is_a_500_with_the_reason() {
    let agent = Agent::start();
    let app = TempDir::new("broken");
    app.write("passenger_wsgi.py", "raise RuntimeError('cannot load')\n");
    let mut conn = agent.connect(Role::Worker);
    let mut head = request_to(&app.0, "/");
    head.options.push(b"PassengerFriendlyErrorPages", b"on");
    conn.send(1, &Message::Request(head)).unwrap();
    let (status, page) = read_response(&mut conn);
    assert_eq!(status, 500);
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("cannot load") && page.contains("loading the application"),
        "{page}"
    );
}

#[test]
fn the_agent_survives_malformed_frames() {
    let mut agent = Agent::start();
    let garbage: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"MP\x09\x01\x00\x00\x00\x00\x00\x00\x00\x00",
        b"MP\x01\xee\x00\x00\x00\x00\x00\x00\x00\x00",
        b"MP\x01\x01\x00\x00\x00\x00\xff\xff\xff\xff",
        b"MP\x01\x01\x00\x00\x00\x00\x00\x00\x00\x03\x01\x02",
    ];
    for bytes in garbage {
        let mut raw = agent.raw();
        raw.write_all(bytes).unwrap();
        raw.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer);
    }
    // A request cut off mid-frame, then the connection dropped.
    {
        let mut conn = agent.connect(Role::Worker);
        let mut frame = Vec::new();
        Message::Request(request_to(std::path::Path::new("/nonexistent"), "/"))
            .encode(1, &mut frame);
        conn.get_mut().write_all(&frame[..frame.len() / 2]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(agent.alive(), "the agent died on malformed input");
    let mut conn = agent.connect(Role::Worker);
    conn.send(1, &Message::Ping).unwrap();
    assert!(matches!(
        conn.read_frame().unwrap(),
        Some((1, Message::Pong))
    ));
}

#[test]
fn status_lists_groups_and_processes() {
    let agent = Agent::start();
    let app = TempDir::new("status");
    wsgi_app(&app.0, "hi");
    let mut conn = agent.connect(Role::Worker);
    conn.send(1, &Message::Request(request_to(&app.0, "/")))
        .unwrap();
    assert_eq!(read_response(&mut conn).0, 200);
    let mut status = agent.connect(Role::Status);
    status
        .send(
            0,
            &Message::Status {
                query: b"{}".to_vec(),
            },
        )
        .unwrap();
    let Some((_, Message::StatusReply { document })) = status.read_frame().unwrap() else {
        panic!()
    };
    let doc: serde_json::Value = serde_json::from_slice(&document).unwrap();
    let groups = doc["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["processes"].as_array().unwrap().len(), 1);
    assert_eq!(groups[0]["processes"][0]["processed"], 1);
}
