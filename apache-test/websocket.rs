//! WebSockets through a real Apache: apps that switch protocols their own
//! way (Node's 'upgrade' event, Rack's socket hijack) behind our module,
//! driven by a small WebSocket client (RFC 6455) written for these tests.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Apache, get_json, serve_app};

/// The handshake key of RFC 6455 §1.3 and the answer it must get.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// One client WebSocket.
struct WebSocket {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The response head's headers.
    headers: Vec<(String, String)>,
}

fn handshake(apache: &Apache, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        apache.port
    )
    .into_bytes()
}

/// A client frame: always masked (RFC 6455 §5.3).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

impl WebSocket {
    /// Opens a WebSocket on `path`, asserting the 101 and its accept key.
    fn open(apache: &Apache, path: &str) -> WebSocket {
        WebSocket::open_sending(apache, path, &[])
    }

    /// Opens a WebSocket, sending `first` in the same write as the handshake.
    fn open_sending(apache: &Apache, path: &str, first: &[u8]) -> WebSocket {
        let stream = TcpStream::connect(("127.0.0.1", apache.port)).expect("connect to Apache");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut raw = handshake(apache, path);
        raw.extend_from_slice(first);
        writer.write_all(&raw).unwrap();
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        assert!(
            status_line.starts_with("HTTP/1.1 101 "),
            "{status_line}\n{}",
            apache.error_log()
        );
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let ws = WebSocket {
            reader,
            writer,
            headers,
        };
        assert_eq!(ws.header("Sec-WebSocket-Accept"), Some(ACCEPT));
        assert_eq!(
            ws.header("Upgrade").map(str::to_ascii_lowercase).as_deref(),
            Some("websocket")
        );
        ws
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.writer
            .write_all(&client_frame(opcode, payload))
            .unwrap();
    }

    /// The next server frame: (opcode, payload).
    fn recv(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        self.reader.read_exact(&mut head).expect("a frame header");
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                self.reader.read_exact(&mut n).unwrap();
                u16::from_be_bytes(n) as usize
            }
            127 => {
                let mut n = [0u8; 8];
                self.reader.read_exact(&mut n).unwrap();
                u64::from_be_bytes(n) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        self.reader
            .read_exact(&mut payload)
            .expect("a frame payload");
        (head[0] & 0x0f, payload)
    }

    fn assert_echo(&mut self, opcode: u8, payload: &[u8]) {
        self.send(opcode, payload);
        let (got_opcode, got) = self.recv();
        assert_eq!(got_opcode, opcode);
        assert!(got == payload, "echo of {} bytes differs", payload.len());
    }

    /// Asserts that the server closes the TCP connection (after any frames).
    fn assert_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "bytes after the close: {rest:?}"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        }
    }

    /// The closing handshake started by the client.
    fn close(mut self) {
        self.send(OP_CLOSE, &1000u16.to_be_bytes());
        assert_eq!(self.recv(), (OP_CLOSE, 1000u16.to_be_bytes().to_vec()));
        self.assert_closed();
    }
}

/// A megabyte that is not all one byte.
fn megabyte() -> Vec<u8> {
    (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect()
}

fn messages_round_trip(app: &'static str) {
    messages_round_trip_on(&serve_app(app, "", ""));
}

fn messages_round_trip_on(apache: &Apache) {
    let mut ws = WebSocket::open(apache, "/chat");
    ws.assert_echo(OP_TEXT, b"hello");
    ws.assert_echo(OP_BINARY, &megabyte());
    ws.send(OP_PING, b"are you there");
    assert_eq!(ws.recv(), (OP_PONG, b"are you there".to_vec()));
    // Ordinary requests go on while the WebSocket is open.
    let plain = apache.get("/");
    assert_eq!(plain.status, 200);
    assert!(
        plain.text().starts_with("plain / upgrade= "),
        "{}",
        plain.text()
    );
    ws.assert_echo(OP_TEXT, b"still here");
    ws.close();
    assert_eq!(apache.get("/").status, 200);
}

#[test]
fn node_websocket_messages_round_trip_through_apache() {
    messages_round_trip("websocket-node");
}

#[test]
fn rack_websocket_messages_round_trip_through_apache() {
    messages_round_trip("websocket-rack");
}

fn server_closes_first(app: &'static str) {
    server_closes_first_on(&serve_app(app, "", ""));
}

fn server_closes_first_on(apache: &Apache) {
    let mut ws = WebSocket::open(apache, "/chat");
    ws.send(OP_TEXT, b"bye");
    assert_eq!(ws.recv(), (OP_CLOSE, 1000u16.to_be_bytes().to_vec()));
    // The client answers the server's close frame (RFC 6455 §5.5.1), as
    // browsers do; ws and faye wait for it before they close. An app that
    // closed at once may be gone already.
    let _ = ws
        .writer
        .write_all(&client_frame(OP_CLOSE, &1000u16.to_be_bytes()));
    ws.assert_closed();
}

#[test]
fn node_app_may_close_a_websocket_first() {
    server_closes_first("websocket-node");
}

#[test]
fn rack_app_may_close_a_websocket_first() {
    server_closes_first("websocket-rack");
}

fn first_message_with_the_handshake(app: &'static str) {
    let apache = serve_app(app, "", "");
    let mut ws = WebSocket::open_sending(&apache, "/chat", &client_frame(OP_TEXT, b"early"));
    assert_eq!(ws.recv(), (OP_TEXT, b"early".to_vec()));
    ws.close();
}

#[test]
fn node_gets_bytes_sent_together_with_the_handshake() {
    first_message_with_the_handshake("websocket-node");
}

#[test]
fn rack_gets_bytes_sent_together_with_the_handshake() {
    first_message_with_the_handshake("websocket-rack");
}

fn declined_upgrade(app: &'static str) {
    let apache = serve_app(app, "", "");
    let response = apache.request(&handshake(&apache, "/refuse"));
    assert_eq!(response.status, 403, "{}", apache.error_log());
    assert_eq!(response.text(), "refused");
}

#[test]
fn node_app_may_decline_an_upgrade() {
    declined_upgrade("websocket-node");
}

#[test]
fn rack_app_may_decline_an_upgrade() {
    declined_upgrade("websocket-rack");
}

#[test]
fn wsgi_apps_answer_upgrade_requests_like_any_other() {
    let apache = serve_app("wsgi", "", "");
    let response = apache.request(&handshake(&apache, "/env"));
    assert_eq!(response.status, 200, "{}", apache.error_log());
    let env: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(env["headers"]["HTTP_UPGRADE"], "websocket");
    assert_eq!(
        get_json(&apache, "/env")["headers"]["HTTP_UPGRADE"],
        serde_json::Value::Null
    );
}

#[test]
fn many_websockets_at_once() {
    let apache = serve_app("websocket-node", "", "");
    std::thread::scope(|scope| {
        for n in 0..8 {
            let apache = &apache;
            scope.spawn(move || {
                let mut ws = WebSocket::open(apache, "/chat");
                for i in 0..50 {
                    ws.assert_echo(OP_TEXT, format!("socket {n} message {i}").as_bytes());
                }
                ws.close();
            });
        }
    });
}

#[test]
fn an_open_websocket_survives_a_graceful_restart() {
    let apache = serve_app("websocket-node", "", "");
    let mut ws = WebSocket::open(&apache, "/chat");
    let pid = ws.header("X-App-Pid").unwrap().to_owned();
    ws.assert_echo(OP_TEXT, b"before");
    let out = apache.ctl("graceful");
    assert!(out.status.success(), "{}", apache.error_log());
    assert!(
        apache.wait_for_log("resuming normal operations", Duration::from_secs(10))
            && apache
                .error_log()
                .matches("resuming normal operations")
                .count()
                >= 2,
        "{}",
        apache.error_log()
    );
    ws.assert_echo(OP_TEXT, b"after");
    // A new WebSocket after the restart reaches the same app process.
    let mut fresh = WebSocket::open(&apache, "/chat");
    assert_eq!(fresh.header("X-App-Pid"), Some(pid.as_str()));
    fresh.assert_echo(OP_TEXT, b"new");
    fresh.close();
    ws.close();
}

#[test]
fn quiet_websockets_outlive_request_read_timeouts() {
    let global = "LoadModule reqtimeout_module /usr/lib/apache2/modules/mod_reqtimeout.so\nRequestReadTimeout header=5 body=1";
    let apache = serve_app("websocket-rack", "", global);
    let mut ws = WebSocket::open(&apache, "/chat");
    std::thread::sleep(Duration::from_millis(2500));
    ws.assert_echo(OP_TEXT, b"after a quiet while");
    ws.close();
}

#[test]
fn websockets_whose_clients_vanish_free_their_slots() {
    // One process serving 8 connections at a time (the app's advertised
    // concurrency): if a vanished client kept its slot, the second round
    // would wait forever.
    let apache = serve_app("websocket-rack", "", "PassengerMaxPoolSize 1");
    for round in 0..2 {
        let sockets: Vec<WebSocket> = (0..8)
            .map(|i| {
                let started = Instant::now();
                let mut ws = WebSocket::open(&apache, "/chat");
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "round {round}, socket {i} waited"
                );
                ws.assert_echo(OP_TEXT, b"hi");
                ws
            })
            .collect();
        // Gone without a closing handshake.
        drop(sockets);
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut ws = WebSocket::open(&apache, "/chat");
    ws.assert_echo(OP_TEXT, b"last");
    ws.close();
}

/// A Ruby process that serves one request at a time (no advertised
/// concurrency) is not held by the WebSockets the app took over and
/// returned from: several stay open on the pool's one process, and plain
/// requests are served beside them by the same process.
#[test]
fn websockets_leave_a_single_threaded_process_free() {
    let apache = serve_app("websocket-rack", "", "PassengerMaxPoolSize 1");
    std::fs::write(apache.dir.join("apps/websocket-rack/one-at-a-time"), b"").unwrap();
    let mut sockets: Vec<WebSocket> = (0..3)
        .map(|i| {
            let mut ws = WebSocket::open(&apache, "/chat");
            ws.assert_echo(OP_TEXT, format!("socket {i}").as_bytes());
            ws
        })
        .collect();
    let pid = sockets[0].header("X-App-Pid").unwrap().to_owned();
    assert!(
        sockets
            .iter()
            .all(|ws| ws.header("X-App-Pid") == Some(pid.as_str()))
    );
    assert_eq!(plain_pid(&apache), pid);
    let status = crate::status::pool_view(&apache);
    assert!(status.contains("Sessions: 0"), "{status}");
    assert!(status.contains("    Streams: 3 ("), "{status}");
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.assert_echo(OP_TEXT, format!("socket {i} again").as_bytes());
    }
    for ws in sockets {
        ws.close();
    }
    assert_eq!(plain_pid(&apache), pid);
}

#[test]
fn apache_stops_promptly_with_websockets_open() {
    let mut apache = serve_app("websocket-rack", "", "");
    let mut ws = WebSocket::open(&apache, "/chat");
    ws.assert_echo(OP_TEXT, b"hello");
    let started = Instant::now();
    apache.stop();
    // Apache's children end their tunnels instead of waiting to be killed.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopping took {:?}:\n{}",
        started.elapsed(),
        apache.error_log()
    );
    ws.assert_closed();
}

/// A WebSocket client over TLS, in Python (its standard `ssl` module):
/// handshake, a text message, 1 MiB, and the closing handshake.
const WSS_CLIENT: &str = r#"
import base64, hashlib, os, socket, ssl, struct, sys
port = int(sys.argv[1])
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
sock = context.wrap_socket(socket.create_connection(('127.0.0.1', port), timeout=20))
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall(('GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n'
              'Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n'
              'Sec-WebSocket-Version: 13\r\n\r\n' % key).encode())
buf = b''
while b'\r\n\r\n' not in buf:
    buf += sock.recv(4096)
head, buf = buf.split(b'\r\n\r\n', 1)
assert head.startswith(b'HTTP/1.1 101 '), head
accept = base64.b64encode(hashlib.sha1((key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').encode()).digest())
assert b'Sec-WebSocket-Accept: ' + accept in head, head

def recv_exact(n):
    global buf
    while len(buf) < n:
        data = sock.recv(65536)
        assert data, 'closed early'
        buf += data
    out, buf = buf[:n], buf[n:]
    return out

def send(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    header = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
        bytes([0x80 | 126]) + struct.pack('>H', n) if n < 65536 else
        bytes([0x80 | 127]) + struct.pack('>Q', n))
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

def recv():
    first, second = recv_exact(2)
    n = second & 0x7f
    if n == 126:
        n = struct.unpack('>H', recv_exact(2))[0]
    elif n == 127:
        n = struct.unpack('>Q', recv_exact(8))[0]
    return first & 0x0f, recv_exact(n)

send(1, b'hello over TLS')
assert recv() == (1, b'hello over TLS')
big = os.urandom(1 << 20)
send(2, big)
assert recv() == (2, big)
send(8, struct.pack('>H', 1000))
assert recv() == (8, struct.pack('>H', 1000))
print('ok')
"#;

#[test]
fn websockets_work_over_tls() {
    let keys = std::env::temp_dir().join(format!("mp-wss-{}", std::process::id()));
    std::fs::create_dir_all(&keys).unwrap();
    let (cert, key) = (keys.join("cert.pem"), keys.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let global = "LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so\n\
        LoadModule socache_shmcb_module /usr/lib/apache2/modules/mod_socache_shmcb.so\n\
        SSLSessionCache shmcb:{dir}/ssl_scache(512000)";
    let tls = format!(
        "SSLEngine on\nSSLCertificateFile {}\nSSLCertificateKeyFile {}",
        cert.display(),
        key.display()
    );
    for app in ["websocket-node", "websocket-rack"] {
        let mut apache = serve_app(app, &tls, global);
        // mod_ssl notes it was built against a newer OpenSSL than the
        // machine's, which is Debian's business, not this test's.
        apache.allow("AH01882");
        let out = std::process::Command::new("python3")
            .args(["-c", WSS_CLIENT, &apache.port.to_string()])
            .output()
            .expect("python3 runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ok",
            "{app}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            apache.error_log()
        );
    }
    let _ = std::fs::remove_dir_all(&keys);
}

/// The pid in the app's plain answer ("plain / upgrade= pid=N").
fn plain_pid(apache: &Apache) -> String {
    let text = apache.get("/").text();
    text.rsplit("pid=").next().unwrap().to_owned()
}

#[test]
fn restart_txt_leaves_open_websockets_alone_and_new_requests_go_to_the_new_process() {
    let apache = serve_app("websocket-node", "", "PassengerStatThrottleRate 0");
    let mut ws = WebSocket::open(&apache, "/chat");
    let old_pid = ws.header("X-App-Pid").unwrap().to_owned();
    assert_eq!(plain_pid(&apache), old_pid);
    let tmp = apache.dir.join("apps/websocket-node/tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("restart.txt"), b"").unwrap();
    // Restart files are looked at when a request comes.
    assert_ne!(
        plain_pid(&apache),
        old_pid,
        "restart.txt did not restart the app"
    );
    // The old process still serves its WebSocket until it closes.
    ws.assert_echo(OP_TEXT, b"still the old process");
    ws.close();
    let old: i32 = old_pid.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the old process outlived its last WebSocket"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_ws_library_works_unchanged() {
    let apache = serve_app("websocket-ws", "", "");
    // The app's node_modules, as `npm install ws` would leave it, from
    // Debian's node-ws.
    let modules = apache.dir.join("apps/websocket-ws/node_modules");
    std::fs::create_dir_all(&modules).unwrap();
    std::os::unix::fs::symlink("/usr/share/nodejs/ws", modules.join("ws")).unwrap();
    messages_round_trip_on(&apache);
    server_closes_first_on(&apache);
}

#[test]
fn faye_websocket_works_unchanged() {
    let apache = serve_app("websocket-faye", "", "");
    messages_round_trip_on(&apache);
    server_closes_first_on(&apache);
}
