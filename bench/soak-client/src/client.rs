//! One request on a keep-alive connection, its retry after a keep-alive
//! close, and its classification; the request mixes.

use crate::http::{self, ReadError, Reader, Response};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bytes of the POST /echo body, and of /big and /big.bin.
pub const POST_SIZE: usize = 102_400;
pub const BIG_SIZE: usize = 1_048_576;

/// How a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Status,
    Body,
    Timeout,
    ClosedMidResponse,
    ClosedBeforeResponse,
    Protocol,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Connect,
        Kind::Status,
        Kind::Body,
        Kind::Timeout,
        Kind::ClosedMidResponse,
        Kind::ClosedBeforeResponse,
        Kind::Protocol,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Status => "status",
            Kind::Body => "body",
            Kind::Timeout => "timeout",
            Kind::ClosedMidResponse => "closed_mid_response",
            Kind::ClosedBeforeResponse => "closed_before_response",
            Kind::Protocol => "protocol",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// How a reused connection turned out to be closed before any byte of the
/// response: an orderly end of stream, a reset (or other error) while
/// reading, or an error while writing the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    EndOfStream,
    Reset,
    WriteFailed,
}

impl Cause {
    pub const ALL: [Cause; 3] = [Cause::EndOfStream, Cause::Reset, Cause::WriteFailed];

    pub fn name(self) -> &'static str {
        match self {
            Cause::EndOfStream => "end_of_stream",
            Cause::Reset => "reset",
            Cause::WriteFailed => "write_failed",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a good answer's body is.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    Exact(&'static [u8]),
    /// `n` bytes, every one of them this byte.
    Repeated(u8, usize),
}

impl Expect {
    fn matches(self, body: &[u8]) -> bool {
        match self {
            Expect::Exact(want) => body == want,
            Expect::Repeated(b, n) => body.len() == n && body.iter().all(|&x| x == b),
        }
    }

    fn describe(self) -> String {
        match self {
            Expect::Exact(want) => http::snippet(want),
            Expect::Repeated(b, n) => format!("{n} bytes of {:?}", b as char),
        }
    }
}

/// One kind of request: its bytes on the wire and the body it must get.
pub struct Route {
    pub name: &'static str,
    pub request: Vec<u8>,
    pub expect: Expect,
}

/// The routes and the rotation through them (indices into `routes`).
pub struct Mix {
    pub routes: Vec<Route>,
    pub rotation: Vec<usize>,
}

impl Mix {
    /// The soak apps (bench/apps/soak-*), per 10 requests: 7 GET / → "hello",
    /// 1 GET /big → 1 MiB of "x", 1 GET /slow → "slow" after 200 ms, 1 POST
    /// /echo with 100 KiB → "echo 102400".
    pub fn app(host: &str) -> Mix {
        let payload = vec![b'p'; POST_SIZE];
        let routes = vec![
            Route {
                name: "GET /",
                request: http::request("GET", "/", host, None),
                expect: Expect::Exact(b"hello"),
            },
            Route {
                name: "GET /big",
                request: http::request("GET", "/big", host, None),
                expect: Expect::Repeated(b'x', BIG_SIZE),
            },
            Route {
                name: "GET /slow",
                request: http::request("GET", "/slow", host, None),
                expect: Expect::Exact(b"slow"),
            },
            Route {
                name: "POST /echo",
                request: http::request(
                    "POST",
                    "/echo",
                    host,
                    Some(("application/octet-stream", &payload)),
                ),
                expect: Expect::Exact(b"echo 102400"),
            },
        ];
        Mix {
            routes,
            rotation: vec![0, 0, 0, 0, 0, 0, 0, 1, 2, 3],
        }
    }

    /// Apache's own static files (bench/apps/static, with a generated
    /// big.bin), per 10 requests: 9 GET /hello.txt → "hello\n", 1 GET
    /// /big.bin → 1 MiB of "x".
    pub fn static_files(host: &str) -> Mix {
        let routes = vec![
            Route {
                name: "GET /hello.txt",
                request: http::request("GET", "/hello.txt", host, None),
                expect: Expect::Exact(b"hello\n"),
            },
            Route {
                name: "GET /big.bin",
                request: http::request("GET", "/big.bin", host, None),
                expect: Expect::Repeated(b'x', BIG_SIZE),
            },
        ];
        Mix {
            routes,
            rotation: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        }
    }
}

/// A socket whose reads and writes end at the request's deadline.
struct Timed {
    stream: TcpStream,
    deadline: Instant,
}

impl Timed {
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request's timeout passed",
            ));
        }
        // Never below 1 ms: a zero socket timeout would mean none at all.
        Ok(left.max(Duration::from_millis(1)))
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.remaining()?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.remaining()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// A keep-alive connection and the number of complete responses it carried.
pub struct Conn {
    reader: Reader<Timed>,
    responses: u64,
}

impl Conn {
    fn open(addr: SocketAddr, deadline: Instant) -> io::Result<Conn> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request's timeout passed",
            ));
        }
        let stream = TcpStream::connect_timeout(&addr, left)?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: Reader::new(Timed { stream, deadline }),
            responses: 0,
        })
    }
}

/// A failed request: its kind and a short text saying what happened.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: Kind,
    pub text: String,
}

/// What became of one request.
#[derive(Debug)]
pub struct Outcome {
    pub failure: Option<Failure>,
    /// Sent a second time, on a new connection, after the reused connection
    /// it was first sent on closed before any byte of the response (the
    /// outcome is the second attempt's).
    pub retried: Option<Cause>,
    /// From the first byte written to the last byte read (including a
    /// retry), for requests that got a complete response.
    pub latency: Option<Duration>,
}

/// Why one attempt got no complete response.
enum Missed {
    /// Closed before any byte of the response arrived.
    Before(Cause, String),
    Mid(String),
    Timeout(String),
    Protocol(String),
}

/// Writes the request and reads its response on `c`.
fn attempt(c: &mut Conn, route: &Route, deadline: Instant) -> Result<Response, Missed> {
    c.reader.get_mut().deadline = deadline;
    if let Err(e) = c.reader.get_mut().write_all(&route.request) {
        return Err(if http::is_timeout(&e) {
            Missed::Timeout("timed out writing the request".into())
        } else {
            Missed::Before(
                Cause::WriteFailed,
                format!("writing the request failed ({e})"),
            )
        });
    }
    http::read_response(&mut c.reader).map_err(|e| match e {
        ReadError::Closed {
            received: 0,
            eof,
            how,
        } => Missed::Before(
            if eof {
                Cause::EndOfStream
            } else {
                Cause::Reset
            },
            how,
        ),
        ReadError::Closed { received, how, .. } => Missed::Mid(format!(
            "connection closed after {received} bytes of the response ({how})"
        )),
        ReadError::Timeout { received } => Missed::Timeout(format!(
            "no complete response within the timeout ({received} bytes of it received)"
        )),
        ReadError::Protocol(text) => Missed::Protocol(text),
    })
}

/// Sends one request on `conn` (opening it if needed; emptied when it cannot
/// carry another request) and classifies the result. A request sent on a
/// reused connection that closes before any byte of the response is sent
/// once more, on a new connection (RFC 9112 §9.3.1); every other failure is
/// final.
pub fn run_request(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    route: &Route,
    timeout: Duration,
) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut retried: Option<Cause> = None;
    let mut first_write: Option<Instant> = None;
    loop {
        let c = match conn {
            Some(c) => c,
            None => match Conn::open(addr, deadline) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    let text = format!(
                        "{}: connecting{} failed: {e}",
                        route.name,
                        retry_note(retried)
                    );
                    return Outcome {
                        failure: Some(Failure {
                            kind: Kind::Connect,
                            text,
                        }),
                        retried,
                        latency: None,
                    };
                }
            },
        };
        let earlier = c.responses;
        let t0 = *first_write.get_or_insert_with(Instant::now);
        match attempt(c, route, deadline) {
            Ok(response) => {
                c.responses += 1;
                if response.close {
                    *conn = None;
                }
                let latency = t0.elapsed();
                let failure = check(route, &response).map(|mut f| {
                    f.text.push_str(&retry_note(retried));
                    f
                });
                return Outcome {
                    failure,
                    retried,
                    latency: Some(latency),
                };
            }
            Err(Missed::Before(cause, _)) if earlier > 0 && retried.is_none() => {
                *conn = None;
                retried = Some(cause);
            }
            Err(missed) => {
                *conn = None;
                let on = if retried.is_some() {
                    retry_note(retried)
                } else if earlier > 0 {
                    format!(" (on a connection reused after {earlier} responses)")
                } else {
                    " (on a new connection)".to_string()
                };
                let (kind, what) = match missed {
                    Missed::Before(_, how) => (
                        Kind::ClosedBeforeResponse,
                        format!("connection closed before any byte of the response ({how})"),
                    ),
                    Missed::Mid(text) => (Kind::ClosedMidResponse, text),
                    Missed::Timeout(text) => (Kind::Timeout, text),
                    Missed::Protocol(text) => (Kind::Protocol, text),
                };
                let text = format!("{}: {what}{on}", route.name);
                return Outcome {
                    failure: Some(Failure { kind, text }),
                    retried,
                    latency: None,
                };
            }
        }
    }
}

fn retry_note(retried: Option<Cause>) -> String {
    match retried {
        Some(cause) => format!(
            " (on the retry, after a keep-alive close: {})",
            cause.name()
        ),
        None => String::new(),
    }
}

/// A status or body failure of a complete response.
fn check(route: &Route, response: &Response) -> Option<Failure> {
    if !(200..300).contains(&response.status) {
        let text = format!(
            "{}: status {}, body {}",
            route.name,
            response.status,
            http::snippet(&response.body)
        );
        return Some(Failure {
            kind: Kind::Status,
            text,
        });
    }
    if !route.expect.matches(&response.body) {
        let text = format!(
            "{}: body of {} bytes {}, expected {}",
            route.name,
            response.body.len(),
            http::snippet(&response.body),
            route.expect.describe()
        );
        return Some(Failure {
            kind: Kind::Body,
            text,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// What the test server does with a request on a connection.
    #[derive(Clone, Copy)]
    enum Act {
        /// Reads the request and answers with these bytes.
        Answer(&'static [u8]),
        /// Reads the request and closes without answering.
        Close,
        /// Closes at once, leaving the request unread (the kernel resets).
        CloseUnread,
        /// Reads the request and never answers (until the client gives up).
        Stall,
    }

    const HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    /// A server on 127.0.0.1 that plays one script per connection it accepts,
    /// in order; it returns how many connections it accepted.
    fn server(scripts: Vec<Vec<Act>>) -> (SocketAddr, thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let mut accepted = 0;
            for script in scripts {
                let (mut s, _) = listener.accept().unwrap();
                accepted += 1;
                for act in script {
                    if let Act::CloseUnread = act {
                        break;
                    }
                    if !read_request(&mut s) {
                        break;
                    }
                    match act {
                        Act::Answer(bytes) => s.write_all(bytes).unwrap(),
                        Act::Stall => {
                            let mut rest = Vec::new();
                            let _ = s.read_to_end(&mut rest);
                        }
                        _ => break,
                    }
                }
            }
            accepted
        });
        (addr, handle)
    }

    /// Reads one request (head and Content-Length body); false at the end.
    fn read_request(s: &mut TcpStream) -> bool {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return false,
            }
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        let mut body = vec![0; length];
        s.read_exact(&mut body).is_ok()
    }

    fn hello() -> Route {
        Route {
            name: "GET /",
            request: http::request("GET", "/", "127.0.0.1", None),
            expect: Expect::Exact(b"hello"),
        }
    }

    fn run(conn: &mut Option<Conn>, addr: SocketAddr, route: &Route) -> Outcome {
        run_request(conn, addr, route, Duration::from_secs(5))
    }

    fn kind(o: &Outcome) -> Option<Kind> {
        o.failure.as_ref().map(|f| f.kind)
    }

    #[test]
    fn close_of_a_reused_connection_is_retried_on_a_new_one() {
        use Act::*;
        for closing in [Close, CloseUnread] {
            let (addr, srv) = server(vec![
                vec![Answer(HELLO), closing],
                vec![Answer(HELLO), Answer(HELLO)],
            ]);
            let mut conn = None;
            let route = hello();
            let first = run(&mut conn, addr, &route);
            assert!(first.failure.is_none() && first.retried.is_none() && first.latency.is_some());
            let second = run(&mut conn, addr, &route);
            assert!(second.failure.is_none(), "{:?}", second.failure);
            assert!(second.retried.is_some());
            assert!(second.latency.is_some());
            // The new connection is kept: the next request goes on it.
            let third = run(&mut conn, addr, &route);
            assert!(third.failure.is_none() && third.retried.is_none());
            drop(conn);
            assert_eq!(srv.join().unwrap(), 2);
        }
    }

    #[test]
    fn a_failed_retry_fails_the_request() {
        use Act::*;
        let (addr, srv) = server(vec![vec![Answer(HELLO), Close], vec![Close]]);
        let mut conn = None;
        let route = hello();
        assert!(run(&mut conn, addr, &route).failure.is_none());
        let o = run(&mut conn, addr, &route);
        assert_eq!(kind(&o), Some(Kind::ClosedBeforeResponse));
        assert_eq!(o.retried, Some(Cause::EndOfStream));
        assert!(o.failure.unwrap().text.contains("on the retry"));
        assert!(conn.is_none());
        assert_eq!(srv.join().unwrap(), 2);
    }

    #[test]
    fn a_close_on_a_new_connection_is_not_retried() {
        let (addr, srv) = server(vec![vec![Act::Close]]);
        let o = run(&mut None, addr, &hello());
        assert_eq!(kind(&o), Some(Kind::ClosedBeforeResponse));
        assert!(o.retried.is_none());
        assert!(o.failure.unwrap().text.contains("on a new connection"));
        assert_eq!(srv.join().unwrap(), 1);
    }

    #[test]
    fn a_close_in_the_middle_is_not_retried() {
        use Act::*;
        let half = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel";
        let (addr, srv) = server(vec![vec![Answer(HELLO), Answer(half)]]);
        let mut conn = None;
        let route = hello();
        assert!(run(&mut conn, addr, &route).failure.is_none());
        let o = run(&mut conn, addr, &route);
        assert_eq!(kind(&o), Some(Kind::ClosedMidResponse));
        assert!(o.retried.is_none());
        assert_eq!(srv.join().unwrap(), 1);
    }

    #[test]
    fn connection_close_means_a_new_connection_and_no_failure() {
        use Act::*;
        let closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello";
        let (addr, srv) = server(vec![vec![Answer(closing)], vec![Answer(HELLO)]]);
        let mut conn = None;
        let route = hello();
        assert!(run(&mut conn, addr, &route).failure.is_none());
        assert!(conn.is_none());
        let o = run(&mut conn, addr, &route);
        assert!(o.failure.is_none() && o.retried.is_none());
        assert_eq!(srv.join().unwrap(), 2);
    }

    #[test]
    fn status_body_protocol_timeout_and_connect_failures() {
        use Act::*;
        let (addr, srv) = server(vec![vec![
            Answer(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad"),
            Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhellO"),
            Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            Answer(b"SSH-2.0-OpenSSH\r\n\r\n"),
        ]]);
        let mut conn = None;
        let route = hello();
        let o = run(&mut conn, addr, &route);
        assert_eq!(kind(&o), Some(Kind::Status));
        assert_eq!(o.failure.unwrap().text, r#"GET /: status 502, body "bad""#);
        assert_eq!(kind(&run(&mut conn, addr, &route)), Some(Kind::Body));
        assert_eq!(kind(&run(&mut conn, addr, &route)), None); // chunked is fine
        let o = run(&mut conn, addr, &route);
        assert_eq!(kind(&o), Some(Kind::Protocol));
        assert!(o.retried.is_none());
        drop(conn);
        assert_eq!(srv.join().unwrap(), 1);

        let (addr, srv) = server(vec![vec![Stall]]);
        let mut conn = None;
        let t0 = Instant::now();
        let o = run_request(&mut conn, addr, &route, Duration::from_millis(200));
        assert_eq!(kind(&o), Some(Kind::Timeout));
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(conn.is_none());
        assert_eq!(srv.join().unwrap(), 1);

        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(kind(&run(&mut None, closed, &route)), Some(Kind::Connect));
    }

    #[test]
    fn post_bodies_and_mixes() {
        let mix = Mix::app("127.0.0.1:1");
        assert_eq!(mix.rotation.len(), 10);
        let count = |i| mix.rotation.iter().filter(|&&r| r == i).count();
        assert_eq!((count(0), count(1), count(2), count(3)), (7, 1, 1, 1));
        let echo = &mix.routes[3];
        assert!(echo.request.ends_with(&[b'p'; POST_SIZE]));
        assert!(echo.expect.matches(format!("echo {POST_SIZE}").as_bytes()));
        let big = vec![b'x'; BIG_SIZE];
        assert!(mix.routes[1].expect.matches(&big));
        assert!(!mix.routes[1].expect.matches(&big[1..]));
        let mut wrong = big.clone();
        wrong[BIG_SIZE / 2] = b'y';
        assert!(!mix.routes[1].expect.matches(&wrong));

        let mix = Mix::static_files("127.0.0.1:1");
        assert_eq!(mix.rotation.iter().filter(|&&r| r == 0).count(), 9);
        assert!(mix.routes[0].expect.matches(b"hello\n"));
        assert!(mix.routes[1].expect.matches(&big));
    }
}
