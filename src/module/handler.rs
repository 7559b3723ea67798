//! The per-request flow on the Apache side.
//!
//! ```text
//! read the body prefix (≤ 64 KiB) from the client
//! send REQUEST [+ prefix + END|MORE] on this thread's agent connection
//! loop on the agent's frames:
//!     READ_BODY n  -> read ≤ n bytes from the client, answer BODY or END
//!     RESPONSE     -> status and headers to Apache
//!     BODY         -> bytes to the client (flushed when no frame is waiting)
//!     END          -> done; the connection is kept for the next request
//!     ERROR        -> before RESPONSE: answer with its status; after: abort
//! ```
//!
//! A `RESPONSE` 101 to a request that asked to upgrade turns both
//! connections into a tunnel ([`tunnel`]); the agent connection is closed
//! after it.
//!
//! A request on a reused connection that fails before the agent answered
//! anything is retried once on a fresh connection (the agent may have been
//! restarted), as long as the client's body was not consumed past the
//! prefix we still hold.

use std::io;
use std::os::fd::OwnedFd;

use crate::module::client::{self, AgentConnection};
use crate::module::tunnel;
use crate::protocol::{MAX_BODY_CHUNK, Message, RequestHead, ResponseHead, Role};

/// The request id on the agent connection: one request at a time, so a
/// constant does; a frame with another id means the connection is out of step.
pub(crate) const ID: u32 = 1;

/// The most [`RequestIo::tunnel_write`] takes at once (the shim's
/// `MP_TUNNEL_WRITE_MAX`).
pub const TUNNEL_WRITE_MAX: usize = crate::ffi::MP_TUNNEL_WRITE_MAX as usize;

/// How Rust moves a request's bytes through Apache.
pub trait RequestIo {
    /// Reads request body bytes; `Ok(0)` at the end of the body.
    fn read_body(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sets the response status and headers.
    fn send_head(
        &mut self,
        status: u16,
        reason: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> io::Result<()>;
    /// Writes response body bytes, pushing them to the client when `flush`.
    fn write_body(&mut self, data: &[u8], flush: bool) -> io::Result<()>;
    /// Whether the client has closed its connection (never blocks).
    fn client_gone(&mut self) -> bool;
    /// Switches the client connection to the app's protocol: sends the
    /// interim response (101) with `headers` as they are, and returns a
    /// duplicate of the client socket for polling. Only the tunnel methods
    /// follow.
    fn open_tunnel(
        &mut self,
        status: u16,
        reason: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> io::Result<OwnedFd>;
    /// Reads tunnelled client bytes without blocking: `Ok(Some(0))` at the
    /// end of the client's stream, `Ok(None)` when nothing is ready.
    fn tunnel_read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Hands at most [`TUNNEL_WRITE_MAX`] tunnelled bytes to the client
    /// without blocking; `Ok(true)` when some are still pending (wait until
    /// the client socket is writable, then [`RequestIo::tunnel_flush`]).
    /// Called only when nothing is pending.
    fn tunnel_write(&mut self, data: &[u8]) -> io::Result<bool>;
    /// Writes pending tunnelled bytes without blocking; `Ok(true)` when
    /// some are still pending.
    fn tunnel_flush(&mut self) -> io::Result<bool>;
    /// Whether Apache closed the client connection itself (a child that
    /// is stopping does). Never blocks.
    fn tunnel_closed(&mut self) -> bool;
}

/// How a request ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A whole response was sent.
    Done,
    /// Nothing was sent: Apache should answer with this status.
    Failed(u16),
    /// The response started but cannot be completed: abort the connection.
    Aborted,
}

/// Where a request's body stands.
struct Body {
    /// Bytes read before the request was sent.
    prefix: Vec<u8>,
    /// The client's body has been read to its end.
    ended: bool,
    /// Bytes were read past the prefix, so the request can't be replayed.
    consumed_past_prefix: bool,
}

/// Serves one request through the agent. `content_length` is the body's
/// announced length, if any (it sizes the buffer of the body prefix). With
/// `error_override` (PassengerErrorOverride), a response of status 400 or
/// more is not sent: its body is read and dropped, and Apache answers with
/// its own ErrorDocument for that status.
pub fn handle(
    head: RequestHead,
    has_body: bool,
    content_length: Option<u64>,
    error_override: bool,
    io: &mut dyn RequestIo,
) -> Outcome {
    let mut body = Body {
        prefix: Vec::new(),
        ended: !has_body,
        consumed_past_prefix: false,
    };
    if has_body && let Err(e) = read_prefix(io, &mut body, content_length) {
        log::info!(target: "MP0201", "the client's request body could not be read: {e}");
        return Outcome::Failed(400);
    }
    // Encoded once: a retry on a fresh connection sends the same bytes.
    let upgrade = head.is_upgrade();
    let mut request_frame = Vec::new();
    Message::Request(head).encode(ID, &mut request_frame);
    let mut retried = false;
    loop {
        let (mut conn, reused) = match client::take_idle() {
            Some(conn) => (conn, true),
            None => match client::connect(Role::Worker) {
                Ok(conn) => (conn, false),
                Err(e) => {
                    log::error!(target: "MP0202", "{e}");
                    return Outcome::Failed(503);
                }
            },
        };
        match exchange(
            &mut conn,
            &request_frame,
            Asked {
                has_body,
                upgrade,
                error_override,
            },
            &mut body,
            io,
        ) {
            Exchange::Finished(outcome, keep) => {
                if keep {
                    client::put_idle(conn);
                }
                return outcome;
            }
            Exchange::Broken(e) if reused && !retried && !body.consumed_past_prefix => {
                log::debug!(target: "MP0203", "agent connection was stale ({e}); retrying");
                retried = true;
            }
            Exchange::Broken(e) => {
                log::error!(target: "MP0204", "lost the connection to the passenger agent: {e}");
                return Outcome::Failed(502);
            }
        }
    }
}

/// The result of one attempt on one connection.
enum Exchange {
    /// The request ended; `bool` = the connection is clean for reuse.
    Finished(Outcome, bool),
    /// The connection failed before the agent sent anything.
    Broken(String),
}

/// Reads up to [`MAX_BODY_CHUNK`] bytes of the body. A body of announced
/// length gets a buffer of that length plus one byte, room for the read
/// that finds its end, so a small POST does not cost a 64 KiB buffer.
fn read_prefix(
    io: &mut dyn RequestIo,
    body: &mut Body,
    content_length: Option<u64>,
) -> io::Result<()> {
    let room = content_length
        .and_then(|len| usize::try_from(len).ok())
        .map_or(MAX_BODY_CHUNK, |len| {
            len.saturating_add(1).min(MAX_BODY_CHUNK)
        });
    body.prefix.resize(room, 0);
    let mut filled = 0;
    while filled < room {
        let n = io.read_body(&mut body.prefix[filled..])?;
        if n == 0 {
            body.ended = true;
            break;
        }
        filled += n;
    }
    body.prefix.truncate(filled);
    Ok(())
}

/// What the request asked for, beyond its frame.
#[derive(Clone, Copy)]
struct Asked {
    /// A body follows the request.
    has_body: bool,
    /// The client asked to switch protocols.
    upgrade: bool,
    /// PassengerErrorOverride.
    error_override: bool,
}

/// Sends the request and relays frames until the request ends.
fn exchange(
    conn: &mut AgentConnection,
    request_frame: &[u8],
    asked: Asked,
    body: &mut Body,
    io: &mut dyn RequestIo,
) -> Exchange {
    let Asked {
        has_body,
        upgrade,
        error_override,
    } = asked;
    conn.queue_encoded(request_frame);
    if has_body {
        if !body.prefix.is_empty()
            && let Err(e) = conn.queue_body(ID, &body.prefix)
        {
            return Exchange::Broken(e.to_string());
        }
        conn.queue(
            ID,
            if body.ended {
                &Message::End
            } else {
                &Message::More
            },
        );
    }
    if let Err(e) = conn.flush() {
        return Exchange::Broken(e.to_string());
    }

    let mut started = false;
    let mut answered = false;
    // Set when the app's error response is replaced by Apache's ErrorDocument.
    let mut overridden = None;
    let mut chunk = Vec::new();
    loop {
        let frame = match conn.read_frame() {
            Ok(Some((id, msg))) if id == ID => msg,
            Ok(Some((id, _))) => {
                log::error!(target: "MP0205", "the agent answered with request id {id}, expected {ID}");
                return finish_broken(started);
            }
            Err(crate::protocol::Error::Io(e)) if client::is_wait_timeout(&e) => {
                // Nothing from the agent for a while: a good moment to see
                // whether anyone is still waiting for this response.
                if io.client_gone() {
                    log::debug!(target: "MP0208", "the client went away while the request waited");
                    return Exchange::Finished(Outcome::Aborted, false);
                }
                continue;
            }
            Ok(None) if !answered => {
                return Exchange::Broken("the agent closed the connection".into());
            }
            Err(e) if !answered => return Exchange::Broken(e.to_string()),
            Ok(None) => {
                log::error!(target: "MP0206", "the agent closed the connection mid-request");
                return finish_broken(started);
            }
            Err(e) => {
                log::error!(target: "MP0206", "the agent connection failed mid-request: {e}");
                return finish_broken(started);
            }
        };
        answered = true;
        match frame {
            Message::ReadBody { max } => {
                let reply = if body.ended {
                    Message::End
                } else {
                    chunk.resize((max as usize).clamp(1, MAX_BODY_CHUNK), 0);
                    match io.read_body(&mut chunk) {
                        Ok(0) => {
                            body.ended = true;
                            Message::End
                        }
                        Ok(n) => {
                            body.consumed_past_prefix = true;
                            chunk.truncate(n);
                            Message::Body(std::mem::take(&mut chunk))
                        }
                        Err(e) => {
                            log::info!(target: "MP0201", "the client's request body could not be read: {e}");
                            // The agent is waiting for body bytes that will
                            // never come: the connection can't be reused.
                            return Exchange::Finished(
                                if started {
                                    Outcome::Aborted
                                } else {
                                    Outcome::Failed(400)
                                },
                                false,
                            );
                        }
                    }
                };
                if let Err(e) = conn.send(ID, &reply) {
                    log::error!(target: "MP0206", "the agent connection failed mid-request: {e}");
                    return finish_broken(started);
                }
            }
            Message::Response(response) => {
                if started {
                    return finish_broken(started);
                }
                started = true;
                let ResponseHead {
                    status,
                    reason,
                    headers,
                } = response;
                if status == 101 {
                    if !upgrade {
                        log::error!(target: "MP0209", "the app switched protocols (101) on a request that did not ask to");
                        return finish_broken(false);
                    }
                    let headers: Vec<(&[u8], &[u8])> = headers
                        .iter()
                        .filter(|(name, _)| !name.starts_with(b"!~"))
                        .collect();
                    return Exchange::Finished(tunnel::run(conn, io, &reason, &headers), false);
                }
                if error_override && status >= 400 {
                    overridden = Some(status);
                    continue;
                }
                let headers: Vec<(&[u8], &[u8])> =
                    headers.iter().filter(|(n, _)| forwardable(n)).collect();
                if io.send_head(status, &reason, &headers).is_err() {
                    return Exchange::Finished(Outcome::Aborted, false);
                }
            }
            Message::Body(_) if overridden.is_some() => {}
            Message::Body(data) => {
                if !started {
                    return finish_broken(started);
                }
                let flush = !conn.has_buffered_input();
                if io.write_body(&data, flush).is_err() {
                    return Exchange::Finished(Outcome::Aborted, false);
                }
            }
            Message::End if started => {
                let outcome = overridden.map_or(Outcome::Done, Outcome::Failed);
                return Exchange::Finished(outcome, true);
            }
            Message::Error { code, message } => {
                log::debug!(target: "MP0207", "the agent answered {code}: {message}");
                let outcome = match overridden {
                    Some(status) => Outcome::Failed(status),
                    None if started => Outcome::Aborted,
                    None => Outcome::Failed(code),
                };
                return Exchange::Finished(outcome, true);
            }
            other => {
                log::error!(target: "MP0205", "unexpected frame from the agent: type {:#04x}", other.kind());
                return finish_broken(started);
            }
        }
    }
}

fn finish_broken(started: bool) -> Exchange {
    Exchange::Finished(
        if started {
            Outcome::Aborted
        } else {
            Outcome::Failed(502)
        },
        false,
    )
}

/// Response headers that go to the client: not hop-by-hop, not internal.
fn forwardable(name: &[u8]) -> bool {
    const HOP_BY_HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"status",
    ];
    !name.starts_with(b"!~") && !HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_internal_headers_stay_behind() {
        assert!(forwardable(b"Set-Cookie"));
        assert!(forwardable(b"Content-Length"));
        assert!(!forwardable(b"Connection"));
        assert!(!forwardable(b"transfer-encoding"));
        assert!(!forwardable(b"!~Request-OOB-Work"));
    }
}
