//! The module's side of the agent connection.
//!
//! Each Apache worker thread keeps one persistent connection to the agent in
//! a thread-local slot: a request takes it, and gives it back only when the
//! request ended cleanly, so a connection that saw an error is never reused.
//!
//! The agent's socket path is computed in the Apache parent during
//! post_config ([`set_agent_socket`]) and inherited by the children through
//! fork.

use std::cell::RefCell;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::protocol::{CLIENT_CHECK_INTERVAL, Connection, Message, Role};

/// A connection to the agent.
pub type AgentConnection = Connection<UnixStream>;

/// The agent's request socket. Written by the parent at post_config, read
/// by the children it forks afterwards.
static AGENT_SOCKET: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Whether an I/O error is the read timeout expiring.
pub fn is_wait_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// How long a worker keeps trying to reach an agent that is restarting.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);

thread_local! {
    static IDLE: RefCell<Option<AgentConnection>> = const { RefCell::new(None) };
}

/// Records where the agent listens.
pub fn set_agent_socket(path: PathBuf) {
    *AGENT_SOCKET.write() = Some(path);
}

/// Forgets the agent's socket (post_config could not start an agent).
pub fn clear_agent_socket() {
    *AGENT_SOCKET.write() = None;
}

/// The agent's socket, once post_config has found or started the agent.
pub fn agent_socket() -> Option<PathBuf> {
    AGENT_SOCKET.read().clone()
}

/// Takes this thread's idle connection, if it has one.
pub fn take_idle() -> Option<AgentConnection> {
    IDLE.with(|slot| slot.borrow_mut().take())
}

/// Gives a connection back for the next request on this thread.
pub fn put_idle(conn: AgentConnection) {
    if !conn.has_buffered_input() {
        IDLE.with(|slot| *slot.borrow_mut() = Some(conn));
    }
}

/// Opens a new connection and introduces ourselves with `role`, retrying
/// for a few seconds while the agent is (re)starting.
pub fn connect(role: Role) -> io::Result<AgentConnection> {
    let path = agent_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the passenger agent was not started",
        )
    })?;
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let mut pause = Duration::from_millis(20);
    loop {
        match UnixStream::connect(&path).and_then(|stream| handshake(stream, role)) {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() < deadline && is_transient(&e) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot connect to the passenger agent at {}: {e}",
                        path.display()
                    ),
                ));
            }
        }
    }
}

/// Errors that mean "the agent is not there yet".
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::WouldBlock
    )
}

/// Sends HELLO and waits for HELLO_OK.
pub fn handshake(stream: UnixStream, role: Role) -> io::Result<AgentConnection> {
    stream.set_read_timeout(Some(CLIENT_CHECK_INTERVAL))?;
    let mut conn = Connection::new(stream);
    let hello = Message::Hello {
        role,
        pid: std::process::id(),
        generation: 0,
    };
    conn.send(0, &hello).map_err(into_io)?;
    match conn.read_frame() {
        Ok(Some((_, Message::HelloOk { .. }))) => Ok(conn),
        Ok(Some((_, Message::Error { message, .. }))) => {
            Err(io::Error::new(io::ErrorKind::PermissionDenied, message))
        }
        Ok(Some(_)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected answer to HELLO",
        )),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the agent closed the connection",
        )),
        Err(e) => Err(into_io(e)),
    }
}

/// Keeps the kind of an I/O error (so a reset is seen as transient).
fn into_io(e: crate::protocol::Error) -> io::Error {
    match e {
        crate::protocol::Error::Io(e) => e,
        crate::protocol::Error::UnexpectedEof => io::Error::from(io::ErrorKind::UnexpectedEof),
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}
