//! The typed messages and their payload codec.
//!
//! [`Message`] has one variant per type code in [`kind`]. Encoding appends
//! a whole frame (header and payload) to a caller's buffer, so a
//! [`super::Connection`] can batch several frames into one write. Decoding
//! takes a header already validated by [`FrameHeader::decode`] and exactly
//! its payload; every length and count inside is checked against the bytes
//! that remain before anything is allocated, and the payload must be
//! consumed exactly.
//!
//! Payload field types (`docs/protocol.md`, "Payload encoding"):
//! `u8`/`u16`/`u32`/`u64` big-endian; `bytes` = `u32` length + bytes;
//! `pairs` = `u32` count + count × (`bytes` name, `bytes` value).

use super::Error;
use super::PairList;
use super::frame::{FrameHeader, HEADER_LEN, check_frame, kind};

/// `REQUEST` flag: the request has a body; the body prefix (`BODY`* then
/// `END` or `MORE`) follows the `REQUEST` frame.
pub const REQUEST_HAS_BODY: u8 = 0x01;

/// `REQUEST` flag: the client connection is HTTPS.
pub const REQUEST_HTTPS: u8 = 0x02;

/// `REQUEST` flag: the client asks to switch protocols (a WebSocket); a
/// `RESPONSE` 101 turns the connection into a two-way tunnel. Never set
/// together with [`REQUEST_HAS_BODY`].
pub const REQUEST_UPGRADE: u8 = 0x04;

/// All `REQUEST` flags this version defines; other bits must be zero.
const REQUEST_KNOWN_FLAGS: u8 = REQUEST_HAS_BODY | REQUEST_HTTPS | REQUEST_UPGRADE;

/// `ERROR` code a peer sends before closing when it receives a frame with
/// another protocol version.
pub const ERROR_UNSUPPORTED_VERSION: u16 = 1;

/// Name/value pairs (options, environment, response headers). Order is
/// kept and names may repeat (`Set-Cookie`).
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Who is connecting, announced in `HELLO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// An Apache worker process: sends requests.
    Worker = 1,
    /// The Apache parent process: sends `CONFIGURE`.
    Control = 2,
    /// A status tool: sends `STATUS`.
    Status = 3,
}

impl TryFrom<u8> for Role {
    type Error = Error;

    fn try_from(value: u8) -> Result<Self, Error> {
        match value {
            1 => Ok(Role::Worker),
            2 => Ok(Role::Control),
            3 => Ok(Role::Status),
            _ => Err(Error::Malformed("unknown HELLO role")),
        }
    }
}

/// The payload of a `REQUEST` frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestHead {
    /// [`REQUEST_HAS_BODY`], [`REQUEST_HTTPS`], [`REQUEST_UPGRADE`]; other
    /// bits are zero.
    pub flags: u8,
    /// The application's settings keyed by directive name
    /// (`PassengerAppRoot`, …); only set values. Empty from agent to app.
    pub options: PairList,
    /// The CGI/WSGI environment of the request, built by the module.
    pub env: PairList,
}

impl RequestHead {
    /// Whether a body prefix follows this `REQUEST`.
    pub fn has_body(&self) -> bool {
        self.flags & REQUEST_HAS_BODY != 0
    }

    /// Whether the client connection is HTTPS.
    pub fn is_https(&self) -> bool {
        self.flags & REQUEST_HTTPS != 0
    }

    /// Whether the client asks to switch protocols.
    pub fn is_upgrade(&self) -> bool {
        self.flags & REQUEST_UPGRADE != 0
    }
}

/// The payload of a `RESPONSE` frame: the response head.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseHead {
    /// HTTP status code.
    pub status: u16,
    /// Reason phrase (may be empty).
    pub reason: Vec<u8>,
    /// Response headers in order; names may repeat.
    pub headers: PairList,
}

/// One protocol message: a frame's type and decoded payload. The request id
/// travels beside it (see [`Message::encode`], [`parse_frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `HELLO`: first frame of a client connection.
    Hello {
        /// What the client will do on this connection.
        role: Role,
        /// The client's process id (Apache parent or worker, status tool).
        pid: u32,
        /// The Apache configuration generation the client belongs to, so a
        /// stale agent or client is detected.
        generation: u64,
    },
    /// `HELLO_OK`: the agent accepted the `HELLO`.
    HelloOk {
        /// The agent's process id.
        agent_pid: u32,
        /// An id unique to this agent instance.
        instance: Vec<u8>,
    },
    /// `CONFIGURE`: the Apache parent sends the configuration.
    Configure {
        /// The configuration generation this applies to.
        generation: u64,
        /// The configuration document (JSON).
        config: Vec<u8>,
    },
    /// `CONFIGURE_OK`: the agent applied the configuration.
    ConfigureOk,
    /// `REQUEST`: starts a request.
    Request(RequestHead),
    /// `BODY`: one chunk of request or response body (1 byte to
    /// [`super::MAX_BODY_CHUNK`] by convention).
    Body(Vec<u8>),
    /// `END`: end of a request body or of a response.
    End,
    /// `MORE`: the request body continues; ask for it with `READ_BODY`.
    More,
    /// `READ_BODY`: asks for the next chunk of request body.
    ReadBody {
        /// The most bytes the asker wants in the answering `BODY`.
        max: u32,
    },
    /// `RESPONSE`: the response head; `BODY`* and `END` follow.
    Response(ResponseHead),
    /// `ERROR`: the request failed (before `RESPONSE`: code = HTTP status;
    /// after it: the response was cut short) or a protocol error.
    Error {
        /// HTTP status, or [`ERROR_UNSUPPORTED_VERSION`] for a version mismatch.
        code: u16,
        /// Human-readable explanation.
        message: String,
    },
    /// `PING`: liveness check.
    Ping,
    /// `PONG`: answer to `PING`.
    Pong,
    /// `STATUS`: a status tool's query.
    Status {
        /// The query (JSON).
        query: Vec<u8>,
    },
    /// `STATUS_REPLY`: the agent's answer to `STATUS`.
    StatusReply {
        /// The document (JSON or text).
        document: Vec<u8>,
    },
    /// `READY`: the app loaded and accepts connections on fd 3.
    Ready {
        /// How many requests the process handles at once; 0 = unlimited.
        concurrency: u32,
    },
    /// `SPAWN_ERROR`: the app failed to load.
    SpawnError {
        /// One-line summary.
        summary: Vec<u8>,
        /// Details such as a traceback.
        details: Vec<u8>,
    },
    /// `FORK`: asks a preloader to fork a worker. The worker's listening
    /// socket, readiness pipe and output pipe travel beside the frame as
    /// `SCM_RIGHTS` file descriptors, in that order.
    Fork,
    /// `FORKED`: the preloader forked a worker.
    Forked {
        /// The worker's pid (checked by the agent, never trusted blindly).
        pid: u32,
    },
    /// `OOB_WORK`: do out-of-band work now (the process is out of rotation).
    OobWork,
    /// `OOB_DONE`: the out-of-band work is finished.
    OobDone,
    /// `RELEASE`: the app hijacked the request's connection (rack.hijack)
    /// and returned from the request: the process may take another
    /// request while this one streams on; the connection carries no other.
    Release,
}

impl Message {
    /// The type code of this message (one of [`kind`]).
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => kind::HELLO,
            Message::HelloOk { .. } => kind::HELLO_OK,
            Message::Configure { .. } => kind::CONFIGURE,
            Message::ConfigureOk => kind::CONFIGURE_OK,
            Message::Request(_) => kind::REQUEST,
            Message::Body(_) => kind::BODY,
            Message::End => kind::END,
            Message::More => kind::MORE,
            Message::ReadBody { .. } => kind::READ_BODY,
            Message::Response(_) => kind::RESPONSE,
            Message::Error { .. } => kind::ERROR,
            Message::Ping => kind::PING,
            Message::Pong => kind::PONG,
            Message::Status { .. } => kind::STATUS,
            Message::StatusReply { .. } => kind::STATUS_REPLY,
            Message::Ready { .. } => kind::READY,
            Message::SpawnError { .. } => kind::SPAWN_ERROR,
            Message::Fork => kind::FORK,
            Message::Forked { .. } => kind::FORKED,
            Message::OobWork => kind::OOB_WORK,
            Message::OobDone => kind::OOB_DONE,
            Message::Release => kind::RELEASE,
        }
    }

    /// The encoded payload length, computed without encoding. A sender
    /// compares it with [`super::MAX_PAYLOAD_LEN`] before queueing
    /// ([`super::Connection::queue`] does).
    pub fn payload_len(&self) -> usize {
        match self {
            Message::Hello { .. } => 1 + 4 + 8,
            Message::HelloOk { instance, .. } => 4 + bytes_len(instance),
            Message::Configure { config, .. } => 8 + bytes_len(config),
            Message::ConfigureOk | Message::End | Message::More => 0,
            Message::Ping | Message::Pong => 0,
            Message::Fork | Message::OobWork | Message::OobDone | Message::Release => 0,
            Message::Forked { .. } => 4,
            Message::Request(r) => 1 + r.options.encoded_len() + r.env.encoded_len(),
            Message::Body(data) => data.len(),
            Message::ReadBody { .. } => 4,
            Message::Response(r) => 2 + bytes_len(&r.reason) + r.headers.encoded_len(),
            Message::Error { message, .. } => 2 + bytes_len(message.as_bytes()),
            Message::Status { query } => bytes_len(query),
            Message::StatusReply { document } => bytes_len(document),
            Message::Ready { .. } => 4,
            Message::SpawnError { summary, details } => bytes_len(summary) + bytes_len(details),
        }
    }

    /// Appends this message as a whole frame (header and payload) to `out`.
    ///
    /// Never fails. The caller keeps the payload within
    /// [`super::MAX_PAYLOAD_LEN`] (see [`Message::payload_len`]); a larger
    /// one is still encoded, and the peer rejects it from the header.
    pub fn encode(&self, request_id: u32, out: &mut Vec<u8>) {
        let len = self.payload_len();
        out.reserve(HEADER_LEN + len);
        let start = out.len();
        FrameHeader {
            kind: self.kind(),
            request_id,
            // Beyond u32 the frame is invalid anyway; saturate so the peer
            // sees an oversized length rather than a wrapped, plausible one.
            len: u32::try_from(len).unwrap_or(u32::MAX),
        }
        .encode(out);
        match self {
            Message::Hello {
                role,
                pid,
                generation,
            } => {
                out.push(*role as u8);
                out.extend_from_slice(&pid.to_be_bytes());
                out.extend_from_slice(&generation.to_be_bytes());
            }
            Message::HelloOk {
                agent_pid,
                instance,
            } => {
                out.extend_from_slice(&agent_pid.to_be_bytes());
                put_bytes(out, instance);
            }
            Message::Configure { generation, config } => {
                out.extend_from_slice(&generation.to_be_bytes());
                put_bytes(out, config);
            }
            Message::ConfigureOk | Message::End | Message::More => {}
            Message::Ping | Message::Pong => {}
            Message::Fork | Message::OobWork | Message::OobDone | Message::Release => {}
            Message::Forked { pid } => out.extend_from_slice(&pid.to_be_bytes()),
            Message::Request(r) => {
                out.push(r.flags);
                r.options.encode(out);
                r.env.encode(out);
            }
            Message::Body(data) => out.extend_from_slice(data),
            Message::ReadBody { max } => out.extend_from_slice(&max.to_be_bytes()),
            Message::Response(r) => {
                out.extend_from_slice(&r.status.to_be_bytes());
                put_bytes(out, &r.reason);
                r.headers.encode(out);
            }
            Message::Error { code, message } => {
                out.extend_from_slice(&code.to_be_bytes());
                put_bytes(out, message.as_bytes());
            }
            Message::Status { query } => put_bytes(out, query),
            Message::StatusReply { document } => put_bytes(out, document),
            Message::Ready { concurrency } => out.extend_from_slice(&concurrency.to_be_bytes()),
            Message::SpawnError { summary, details } => {
                put_bytes(out, summary);
                put_bytes(out, details);
            }
        }
        debug_assert_eq!(
            out.len() - start,
            HEADER_LEN + len,
            "payload_len disagrees with encode"
        );
    }

    /// Decodes the payload of a frame whose header was validated by
    /// [`FrameHeader::decode`]. `payload` must be exactly `header.len` bytes.
    ///
    /// Rejects with [`Error::Malformed`] a truncated field, a `bytes` length
    /// or pair count beyond the remaining bytes (before allocating), trailing
    /// bytes, an unknown role, unknown `REQUEST` flags and a non-UTF-8 `ERROR`
    /// message; with [`Error::UnknownType`] a type this side does not know.
    pub fn decode(header: &FrameHeader, payload: &[u8]) -> Result<Message, Error> {
        if payload.len() != header.len as usize {
            return Err(Error::Malformed(
                "payload size differs from the header's length",
            ));
        }
        let mut r = Reader { rest: payload };
        let msg = match header.kind {
            kind::HELLO => Message::Hello {
                role: Role::try_from(r.u8()?)?,
                pid: r.u32()?,
                generation: r.u64()?,
            },
            kind::HELLO_OK => Message::HelloOk {
                agent_pid: r.u32()?,
                instance: r.bytes()?,
            },
            kind::CONFIGURE => Message::Configure {
                generation: r.u64()?,
                config: r.bytes()?,
            },
            kind::CONFIGURE_OK => Message::ConfigureOk,
            kind::REQUEST => {
                let flags = r.u8()?;
                if flags & !REQUEST_KNOWN_FLAGS != 0 {
                    return Err(Error::Malformed("unknown REQUEST flags"));
                }
                if flags & REQUEST_UPGRADE != 0 && flags & REQUEST_HAS_BODY != 0 {
                    return Err(Error::Malformed("an upgrade REQUEST cannot have a body"));
                }
                Message::Request(RequestHead {
                    flags,
                    options: PairList::decode(&mut r.rest)?,
                    env: PairList::decode(&mut r.rest)?,
                })
            }
            // The whole payload is the chunk: nothing can trail it.
            kind::BODY => return Ok(Message::Body(payload.to_vec())),
            kind::END => Message::End,
            kind::MORE => Message::More,
            kind::READ_BODY => Message::ReadBody { max: r.u32()? },
            kind::RESPONSE => Message::Response(ResponseHead {
                status: r.u16()?,
                reason: r.bytes()?,
                headers: PairList::decode(&mut r.rest)?,
            }),
            kind::ERROR => {
                let code = r.u16()?;
                let message = String::from_utf8(r.bytes()?)
                    .map_err(|_| Error::Malformed("ERROR message is not UTF-8"))?;
                Message::Error { code, message }
            }
            kind::PING => Message::Ping,
            kind::PONG => Message::Pong,
            kind::STATUS => Message::Status { query: r.bytes()? },
            kind::STATUS_REPLY => Message::StatusReply {
                document: r.bytes()?,
            },
            kind::READY => Message::Ready {
                concurrency: r.u32()?,
            },
            kind::SPAWN_ERROR => Message::SpawnError {
                summary: r.bytes()?,
                details: r.bytes()?,
            },
            kind::FORK => Message::Fork,
            kind::FORKED => Message::Forked { pid: r.u32()? },
            kind::OOB_WORK => Message::OobWork,
            kind::OOB_DONE => Message::OobDone,
            kind::RELEASE => Message::Release,
            other => return Err(Error::UnknownType(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Appends a whole `REQUEST` frame built from borrowed parts: the same
/// bytes as [`Message::Request`] would encode, without owning them.
pub fn encode_request(
    request_id: u32,
    flags: u8,
    options: &PairList,
    env: &PairList,
    out: &mut Vec<u8>,
) {
    let len = 1 + options.encoded_len() + env.encoded_len();
    FrameHeader {
        kind: kind::REQUEST,
        request_id,
        len: u32::try_from(len).unwrap_or(u32::MAX),
    }
    .encode(out);
    out.push(flags);
    options.encode(out);
    env.encode(out);
}

/// Appends the 12-byte header of a `BODY` frame whose `len` payload bytes the
/// caller appends or writes next. Lets a body chunk go out without first
/// being copied into a [`Message::Body`]. `len` must not exceed
/// [`super::MAX_PAYLOAD_LEN`] (a larger one saturates, and the peer rejects it).
pub fn encode_body_header(request_id: u32, len: usize, out: &mut Vec<u8>) {
    FrameHeader {
        kind: kind::BODY,
        request_id,
        len: u32::try_from(len).unwrap_or(u32::MAX),
    }
    .encode(out);
}

/// Parses one frame from the start of `buf`.
///
/// `Ok(None)`: `buf` holds only a prefix of a frame; read more and call again.
/// `Ok(Some((request_id, message, consumed)))`: the frame was
/// `buf[..consumed]`. `Err`: the bytes can never become a valid frame.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(u32, Message, usize)>, Error> {
    let Some(header) = check_frame(buf)? else {
        return Ok(None);
    };
    let end = header.frame_len();
    let msg = Message::decode(&header, &buf[HEADER_LEN..end])?;
    Ok(Some((header.request_id, msg, end)))
}

fn bytes_len(b: &[u8]) -> usize {
    4 + b.len()
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Lengths beyond u32 only occur in payloads far above the cap, which the
    // peer rejects from the header; saturating keeps this infallible.
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

/// A cursor over a payload. Every read checks the remaining length first,
/// so a lying length or count fails before it can drive an allocation.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(Error::Malformed("truncated field"))?;
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        let len = self.u32()? as usize;
        if len > self.rest.len() {
            return Err(Error::Malformed("bytes length exceeds the payload"));
        }
        let (b, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(b.to_vec())
    }

    fn finish(self) -> Result<(), Error> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed("trailing bytes after the last field"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::MAX_PAYLOAD_LEN;

    fn list(pairs: &[(&str, &str)]) -> PairList {
        pairs.iter().copied().collect()
    }

    /// One instance of every message type, with fields that exercise byte
    /// order, empty and binary `bytes`, and repeated pair names.
    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                role: Role::Worker,
                pid: 0x0102_0304,
                generation: 0x0506_0708_090a_0b0c,
            },
            Message::Hello {
                role: Role::Control,
                pid: 1,
                generation: 0,
            },
            Message::Hello {
                role: Role::Status,
                pid: u32::MAX,
                generation: u64::MAX,
            },
            Message::HelloOk {
                agent_pid: 4242,
                instance: b"inst-1".to_vec(),
            },
            Message::Configure {
                generation: 3,
                config: br#"{"apps":[]}"#.to_vec(),
            },
            Message::ConfigureOk,
            Message::Request(RequestHead::default()),
            Message::Request(RequestHead {
                flags: REQUEST_HAS_BODY | REQUEST_HTTPS,
                options: list(&[("PassengerAppRoot", "/srv/app")]),
                env: list(&[("REQUEST_METHOD", "POST"), ("HTTP_X", ""), ("HTTP_X", "2")]),
            }),
            Message::Body(vec![0, 0xff, b'M', b'P', 1]),
            Message::Body(vec![]),
            Message::End,
            Message::More,
            Message::ReadBody { max: 65536 },
            Message::Response(ResponseHead {
                status: 200,
                reason: b"OK".to_vec(),
                headers: list(&[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]),
            }),
            Message::Response(ResponseHead {
                status: 204,
                reason: vec![],
                headers: PairList::new(),
            }),
            Message::Error {
                code: 502,
                message: "app died — sorry".into(),
            },
            Message::Ping,
            Message::Pong,
            Message::Status {
                query: b"{}".to_vec(),
            },
            Message::StatusReply {
                document: b"\x00binary\xff".to_vec(),
            },
            Message::Ready { concurrency: 0 },
            Message::SpawnError {
                summary: b"boom".to_vec(),
                details: b"Traceback\n".to_vec(),
            },
            Message::Fork,
            Message::Forked { pid: 31337 },
            Message::OobWork,
            Message::OobDone,
            Message::Release,
        ]
    }

    fn encoded(id: u32, m: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        m.encode(id, &mut out);
        out
    }

    #[test]
    fn round_trip_every_message() {
        for (i, m) in samples().into_iter().enumerate() {
            let id = i as u32 * 0x0101_0101;
            let bytes = encoded(id, &m);
            assert_eq!(bytes.len(), HEADER_LEN + m.payload_len());
            assert_eq!(bytes[3], m.kind());
            let (rid, back, used) = parse_frame(&bytes).unwrap().unwrap();
            assert_eq!((rid, &back, used), (id, &m, bytes.len()));
        }
    }

    #[test]
    fn encode_request_matches_the_message() {
        let head = RequestHead {
            flags: REQUEST_HAS_BODY,
            options: list(&[("PassengerAppRoot", "/srv/app")]),
            env: list(&[("REQUEST_METHOD", "POST")]),
        };
        let mut borrowed = Vec::new();
        encode_request(9, head.flags, &head.options, &head.env, &mut borrowed);
        assert_eq!(borrowed, encoded(9, &Message::Request(head)));
    }

    #[test]
    fn every_type_is_sampled() {
        let mut kinds: Vec<u8> = samples().iter().map(Message::kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let known = (0..=255u8)
            .filter(|c| crate::protocol::kind_name(*c).is_some())
            .count();
        assert_eq!(kinds.len(), known);
    }

    #[test]
    fn fixed_bytes() {
        let hello = Message::Hello {
            role: Role::Worker,
            pid: 12345,
            generation: 7,
        };
        assert_eq!(
            encoded(0, &hello),
            [
                b"MP\x01\x01\0\0\0\0\0\0\0\x0d".as_slice(),
                &[1, 0, 0, 0x30, 0x39, 0, 0, 0, 0, 0, 0, 0, 7],
            ]
            .concat()
        );
        assert_eq!(
            encoded(0x0a0b0c0d, &Message::End),
            b"MP\x01\x12\x0a\x0b\x0c\x0d\0\0\0\0"
        );
        assert_eq!(
            encoded(5, &Message::Body(b"hi".to_vec())),
            b"MP\x01\x11\0\0\0\x05\0\0\0\x02hi"
        );
        let req = Message::Request(RequestHead {
            flags: REQUEST_HAS_BODY,
            options: PairList::new(),
            env: list(&[("A", "bc")]),
        });
        assert_eq!(
            encoded(1, &req),
            b"MP\x01\x10\0\0\0\x01\0\0\0\x14\x01\0\0\0\0\0\0\0\x01\0\0\0\x01A\0\0\0\x02bc"
        );
        let err = Message::Error {
            code: 404,
            message: "no".into(),
        };
        assert_eq!(
            encoded(2, &err),
            b"MP\x01\x30\0\0\0\x02\0\0\0\x08\x01\x94\0\0\0\x02no"
        );
    }

    #[test]
    fn encode_appends_and_body_header_matches() {
        let mut out = b"xyz".to_vec();
        Message::Ping.encode(0, &mut out);
        assert_eq!(&out[..3], b"xyz");
        assert_eq!(&out[3..], b"MP\x01\x40\0\0\0\0\0\0\0\0");

        let mut out = Vec::new();
        encode_body_header(77, 3, &mut out);
        assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(b"abc");
        assert_eq!(out, encoded(77, &Message::Body(b"abc".to_vec())));
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for m in samples() {
            let bytes = encoded(3, &m);
            for n in 0..bytes.len() {
                assert!(
                    matches!(parse_frame(&bytes[..n]), Ok(None)),
                    "{m:?} prefix {n}"
                );
            }
        }
    }

    #[test]
    fn parse_consumes_only_one_frame() {
        let mut buf = encoded(1, &Message::Body(b"abc".to_vec()));
        let first = buf.len();
        Message::End.encode(1, &mut buf);
        let (_, m, used) = parse_frame(&buf).unwrap().unwrap();
        assert_eq!((m, used), (Message::Body(b"abc".to_vec()), first));
        let (_, m, used) = parse_frame(&buf[first..]).unwrap().unwrap();
        assert_eq!((m, used), (Message::End, HEADER_LEN));
    }

    /// A frame of type `k` around an arbitrary payload.
    fn raw(k: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        FrameHeader {
            kind: k,
            request_id: 0,
            len: payload.len() as u32,
        }
        .encode(&mut out);
        out.extend_from_slice(payload);
        out
    }

    fn malformed(frame: &[u8]) -> &'static str {
        match parse_frame(frame) {
            Err(Error::Malformed(what)) => what,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn trailing_bytes_rejected() {
        for m in samples() {
            if matches!(m, Message::Body(_)) {
                continue; // a BODY payload is all data
            }
            let mut payload = encoded(0, &m)[HEADER_LEN..].to_vec();
            payload.push(0);
            assert_eq!(
                malformed(&raw(m.kind(), &payload)),
                "trailing bytes after the last field"
            );
        }
    }

    #[test]
    fn truncated_fields_rejected() {
        // Every sample with a non-empty payload, cut short by one byte but
        // with a header announcing the shorter length: complete, not valid.
        for m in samples() {
            let payload = encoded(0, &m)[HEADER_LEN..].to_vec();
            if payload.is_empty() || matches!(m, Message::Body(_)) {
                continue;
            }
            let frame = raw(m.kind(), &payload[..payload.len() - 1]);
            assert!(
                matches!(parse_frame(&frame), Err(Error::Malformed(_))),
                "{m:?}"
            );
        }
        assert_eq!(malformed(&raw(kind::READY, &[0, 0, 1])), "truncated field");
        // A bytes length one past the end.
        assert_eq!(
            malformed(&raw(kind::STATUS, b"\0\0\0\x03ab")),
            "bytes length exceeds the payload"
        );
        assert_eq!(
            malformed(&raw(kind::STATUS, b"\xff\xff\xff\xffab")),
            "bytes length exceeds the payload"
        );
    }

    #[test]
    fn huge_pair_count_rejected_without_allocating() {
        // u32::MAX pairs would need ~200 GB if the Vec were sized first.
        let payload = [&[0u8][..], &u32::MAX.to_be_bytes(), &[0; 8]].concat();
        assert_eq!(
            malformed(&raw(kind::REQUEST, &payload)),
            "pair count exceeds the payload"
        );
        // One more pair than the bytes can hold (2 pairs need >= 16 bytes).
        let payload = [&[0u8][..], &2u32.to_be_bytes(), &[0; 15]].concat();
        assert_eq!(
            malformed(&raw(kind::REQUEST, &payload)),
            "pair count exceeds the payload"
        );
        // A count that fits the minimum but whose pairs run out.
        let payload = [&[0u8][..], &1u32.to_be_bytes(), &[0, 0, 0, 9, 0, 0, 0, 0]].concat();
        assert_eq!(
            malformed(&raw(kind::REQUEST, &payload)),
            "bytes length exceeds the payload"
        );
    }

    #[test]
    fn bad_enum_values_rejected() {
        for role in [0u8, 4, 255] {
            let payload = [&[role][..], &[0; 12]].concat();
            assert_eq!(malformed(&raw(kind::HELLO, &payload)), "unknown HELLO role");
        }
        assert!(Role::try_from(0).is_err());
        assert_eq!(Role::try_from(2).unwrap(), Role::Control);
        let payload = [&[0x08u8][..], &[0; 8]].concat();
        assert_eq!(
            malformed(&raw(kind::REQUEST, &payload)),
            "unknown REQUEST flags"
        );
        let payload = [&[REQUEST_UPGRADE | REQUEST_HAS_BODY][..], &[0; 8]].concat();
        assert_eq!(
            malformed(&raw(kind::REQUEST, &payload)),
            "an upgrade REQUEST cannot have a body"
        );
        assert_eq!(
            malformed(&raw(kind::ERROR, b"\x01\xf4\0\0\0\x02\xff\xfe")),
            "ERROR message is not UTF-8"
        );
    }

    #[test]
    fn decode_checks_payload_size_and_type() {
        let h = FrameHeader {
            kind: kind::PING,
            request_id: 0,
            len: 1,
        };
        assert!(matches!(Message::decode(&h, &[]), Err(Error::Malformed(_))));
        let h = FrameHeader {
            kind: 0x7f,
            request_id: 0,
            len: 0,
        };
        assert!(matches!(
            Message::decode(&h, &[]),
            Err(Error::UnknownType(0x7f))
        ));
        assert!(matches!(
            parse_frame(&raw(0x7f, &[])),
            Err(Error::UnknownType(0x7f))
        ));
    }

    #[test]
    fn oversized_frame_rejected_before_payload() {
        let mut h = FrameHeader {
            kind: kind::BODY,
            request_id: 1,
            len: 0,
        }
        .to_bytes();
        h[8..12].copy_from_slice(&(MAX_PAYLOAD_LEN as u32 + 1).to_be_bytes());
        assert!(
            matches!(parse_frame(&h), Err(Error::TooLarge(n)) if n as usize == MAX_PAYLOAD_LEN + 1)
        );
        let mut bad = h;
        bad[2] = 9;
        assert!(matches!(parse_frame(&bad), Err(Error::BadVersion(9))));
        bad = h;
        bad[1] = b'Q';
        assert!(matches!(
            parse_frame(&bad),
            Err(Error::BadMagic([b'M', b'Q']))
        ));
    }

    #[test]
    fn request_head_flags() {
        let r = RequestHead {
            flags: REQUEST_HTTPS,
            ..Default::default()
        };
        assert!(r.is_https() && !r.has_body());
    }

    // ---- docs/protocol-vectors.json ----

    use serde_json::Value;

    const VECTORS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/protocol-vectors.json"
    ));

    fn unhex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(s.len().is_multiple_of(2), "odd hex length");
        s.chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).expect("hex digit"))
            .collect()
    }

    /// A `bytes` field: `"name": "text"` or `"name_hex": "hex"`.
    fn field_bytes(v: &Value, name: &str) -> Vec<u8> {
        if let Some(s) = v.get(name).and_then(Value::as_str) {
            return s.as_bytes().to_vec();
        }
        let hex = v.get(format!("{name}_hex")).and_then(Value::as_str);
        unhex(hex.unwrap_or_else(|| panic!("missing bytes field {name} in {v}")))
    }

    fn field_u64(v: &Value, name: &str) -> u64 {
        v[name]
            .as_u64()
            .unwrap_or_else(|| panic!("missing integer field {name} in {v}"))
    }

    fn field_pairs(v: &Value, name: &str) -> Pairs {
        let list = v[name]
            .as_array()
            .unwrap_or_else(|| panic!("missing pairs {name} in {v}"));
        list.iter()
            .map(|p| {
                let p = p.as_array().expect("a pair is [name, value]");
                assert_eq!(p.len(), 2, "a pair is [name, value]");
                let s = |x: &Value| {
                    x.as_str()
                        .expect("pair item is a string")
                        .as_bytes()
                        .to_vec()
                };
                (s(&p[0]), s(&p[1]))
            })
            .collect()
    }

    /// The message a valid vector describes.
    fn expected(v: &Value) -> Message {
        let n = |f| field_u64(v, f);
        match v["type"].as_str().expect("type") {
            "HELLO" => Message::Hello {
                role: Role::try_from(n("role") as u8).unwrap(),
                pid: n("pid") as u32,
                generation: n("generation"),
            },
            "HELLO_OK" => Message::HelloOk {
                agent_pid: n("agent_pid") as u32,
                instance: field_bytes(v, "instance"),
            },
            "CONFIGURE" => Message::Configure {
                generation: n("generation"),
                config: field_bytes(v, "config"),
            },
            "CONFIGURE_OK" => Message::ConfigureOk,
            "REQUEST" => Message::Request(RequestHead {
                flags: n("flags") as u8,
                options: field_pairs(v, "options").into_iter().collect(),
                env: field_pairs(v, "env").into_iter().collect(),
            }),
            "BODY" => Message::Body(field_bytes(v, "data")),
            "END" => Message::End,
            "MORE" => Message::More,
            "READ_BODY" => Message::ReadBody {
                max: n("max") as u32,
            },
            "RESPONSE" => Message::Response(ResponseHead {
                status: n("status") as u16,
                reason: field_bytes(v, "reason"),
                headers: field_pairs(v, "headers").into_iter().collect(),
            }),
            "ERROR" => Message::Error {
                code: n("code") as u16,
                message: v["message"].as_str().expect("message").to_string(),
            },
            "PING" => Message::Ping,
            "PONG" => Message::Pong,
            "STATUS" => Message::Status {
                query: field_bytes(v, "query"),
            },
            "STATUS_REPLY" => Message::StatusReply {
                document: field_bytes(v, "document"),
            },
            "READY" => Message::Ready {
                concurrency: n("concurrency") as u32,
            },
            "SPAWN_ERROR" => Message::SpawnError {
                summary: field_bytes(v, "summary"),
                details: field_bytes(v, "details"),
            },
            "FORK" => Message::Fork,
            "FORKED" => Message::Forked {
                pid: n("pid") as u32,
            },
            "OOB_WORK" => Message::OobWork,
            "OOB_DONE" => Message::OobDone,
            "RELEASE" => Message::Release,
            other => panic!("unknown type {other} in vector {v}"),
        }
    }

    #[test]
    fn vectors_file_valid_frames() {
        let doc: Value = serde_json::from_str(VECTORS).expect("vectors file is JSON");
        let vectors = doc["vectors"].as_array().expect("a \"vectors\" array");
        let mut seen = std::collections::BTreeSet::new();
        for v in vectors {
            let name = v["name"].as_str().expect("name");
            let bytes = unhex(v["hex"].as_str().expect("hex"));
            let msg = expected(v);
            let id = field_u64(v, "request_id") as u32;
            let (rid, decoded, used) = parse_frame(&bytes)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .unwrap_or_else(|| panic!("{name}: incomplete"));
            assert_eq!((rid, &decoded, used), (id, &msg, bytes.len()), "{name}");
            assert_eq!(encoded(id, &msg), bytes, "{name}: re-encoding differs");
            assert_eq!(
                crate::protocol::kind_name(msg.kind()),
                v["type"].as_str(),
                "{name}"
            );
            for n in 0..bytes.len() {
                assert!(
                    matches!(parse_frame(&bytes[..n]), Ok(None)),
                    "{name}: prefix {n}"
                );
            }
            seen.insert(msg.kind());
        }
        let known = (0..=255u8)
            .filter(|c| crate::protocol::kind_name(*c).is_some())
            .count();
        assert_eq!(seen.len(), known, "the vectors cover every message type");
    }

    #[test]
    fn vectors_file_invalid_frames() {
        let doc: Value = serde_json::from_str(VECTORS).expect("vectors file is JSON");
        let invalid = doc["invalid"].as_array().expect("an \"invalid\" array");
        assert!(!invalid.is_empty());
        for v in invalid {
            let name = v["name"].as_str().expect("name");
            let bytes = unhex(v["hex"].as_str().expect("hex"));
            let got = parse_frame(&bytes);
            let ok = match v["error"].as_str().expect("error") {
                "incomplete" => matches!(got, Ok(None)),
                "bad_magic" => matches!(got, Err(Error::BadMagic(_))),
                "bad_version" => matches!(got, Err(Error::BadVersion(_))),
                "unknown_type" => matches!(got, Err(Error::UnknownType(_))),
                "too_large" => matches!(got, Err(Error::TooLarge(_))),
                "malformed" => matches!(got, Err(Error::Malformed(_))),
                other => panic!("{name}: unknown expected error {other}"),
            };
            assert!(ok, "{name}: got {got:?}");
        }
    }
}
