//! The frame protocol spoken on every channel.
//!
//! One framing serves the Apache module ↔ the agent, the status tools ↔ the
//! agent, and the agent ↔ an application process (through the loaders in
//! `src/loaders/`). The normative description is `docs/protocol.md`; the test
//! vectors in `docs/protocol-vectors.json` are checked here and by the
//! loaders' own tests, so every implementation agrees byte for byte.
//!
//! # A frame
//!
//! Every frame is a 12-byte header followed by the payload. All integers are
//! big-endian.
//!
//! ```text
//!  0       1       2       3       4               8               12
//!  +-------+-------+-------+-------+-------+-------+-------+-------+
//!  |  'M'  |  'P'  |version| type  |  request id   |payload length |
//!  +-------+-------+-------+-------+-------+-------+-------+-------+
//!  |  payload (payload length bytes, at most 1 MiB) ...
//!  +-------+-------+-------+--
//!
//!  HELLO   4d 50 01 01 | 00 00 00 00 | 00 00 00 0d | 01  00 00 30 39  00 00 00 00 00 00 00 07
//!          magic v type  request id    length=13     role pid=12345   generation=7
//! ```
//!
//! Inside a payload, `bytes` is a `u32` length then the bytes, and `pairs`
//! is a `u32` count then count × (`bytes` name, `bytes` value). A payload
//! must be consumed exactly.
//!
//! # Incomplete is not invalid
//!
//! As in mini-redis, a reader first *checks* that a whole frame is buffered
//! and only then *parses* it. Fewer bytes than the header, or than the header
//! plus the announced payload, is "incomplete" (`Ok(None)`: read more); a bad
//! magic, version, type or length, or a payload that does not decode, is
//! "invalid" (`Err`: close the connection). Every strict prefix of a valid
//! frame is incomplete. Lengths are checked against [`MAX_PAYLOAD_LEN`] from
//! the header alone, and every length inside a payload against the bytes
//! that remain, before anything is allocated.
//!
//! # Layout
//!
//! - [`frame`]: the header, the constants and type codes, check-before-parse.
//! - [`message`]: the typed [`Message`] and its payload codec; [`parse_frame`].
//! - [`connection`]: [`Connection`], the one owner of a stream's read buffer
//!   and write buffer, so no layer can read past a frame.
//!
//! # Versioning
//!
//! [`VERSION`] changes when an existing message changes meaning or layout.
//! New message types may be added without a version change; a peer that
//! receives a type it does not know answers `ERROR` and closes.

use std::fmt;
use std::io;
use std::time::Duration;

pub mod connection;
pub mod frame;
pub mod message;
pub mod pairs;

pub use connection::Connection;
pub use frame::{
    FrameHeader, HEADER_LEN, MAGIC, MAX_BODY_CHUNK, MAX_PAYLOAD_LEN, VERSION, check_frame, kind,
    kind_name,
};
pub use message::{
    ERROR_UNSUPPORTED_VERSION, Message, Pairs, REQUEST_HAS_BODY, REQUEST_HTTPS, REQUEST_UPGRADE,
    RequestHead, ResponseHead, Role, encode_body_header, encode_request, parse_frame,
};
pub use pairs::PairList;

/// While it waits for a response, the module checks that its client is
/// still there whenever the agent has been quiet this long, and closes the
/// connection if the client left. So a module connection cannot have been
/// closed for that reason sooner: the agent looks for the close only on a
/// request that waited at least this long for a process.
pub const CLIENT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Everything that can go wrong reading or writing frames.
///
/// Every variant but [`Error::Io`] means the peer broke the protocol (or
/// closed mid-frame): the connection is out of step and must be closed.
#[derive(Debug)]
pub enum Error {
    /// The underlying stream failed (including read/write timeouts).
    Io(io::Error),
    /// The first two bytes were not `MP`: the peer does not speak this protocol.
    BadMagic([u8; 2]),
    /// The version byte was not [`VERSION`]. The spec asks the receiver to
    /// answer `ERROR` with [`ERROR_UNSUPPORTED_VERSION`] where it can.
    BadVersion(u8),
    /// The type byte is not a known message type.
    UnknownType(u8),
    /// A payload length above [`MAX_PAYLOAD_LEN`], rejected from the header
    /// alone (or refused before sending).
    TooLarge(u32),
    /// A complete payload that does not decode: a truncated field, a length
    /// or count beyond the payload, trailing bytes, a bad enum value.
    Malformed(&'static str),
    /// The peer closed the connection in the middle of a frame.
    UnexpectedEof,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::BadMagic(m) => {
                write!(
                    f,
                    "bad magic {:02x} {:02x}: the peer does not speak the frame protocol",
                    m[0], m[1]
                )
            }
            Error::BadVersion(v) => {
                write!(
                    f,
                    "unsupported protocol version {v} (this side speaks {VERSION})"
                )
            }
            Error::UnknownType(t) => write!(f, "unknown message type 0x{t:02x}"),
            Error::TooLarge(n) => {
                write!(
                    f,
                    "payload of {n} bytes exceeds the limit of {MAX_PAYLOAD_LEN} bytes"
                )
            }
            Error::Malformed(what) => write!(f, "malformed payload: {what}"),
            Error::UnexpectedEof => f.write_str("connection closed in the middle of a frame"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_source() {
        let e = Error::from(io::Error::new(io::ErrorKind::BrokenPipe, "gone"));
        assert!(e.to_string().contains("gone"));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            Error::UnknownType(0x7f).to_string(),
            "unknown message type 0x7f"
        );
        assert!(Error::BadMagic(*b"GE").to_string().contains("47 45"));
        assert!(std::error::Error::source(&Error::UnexpectedEof).is_none());
    }
}
