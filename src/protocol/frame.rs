//! The frame header, the protocol constants and the type codes.
//!
//! This is the "check" half of check-before-parse: [`FrameHeader::decode`]
//! validates the 12 header bytes (magic, version, type, length cap) and
//! [`check_frame`] says whether the whole frame is buffered yet. Neither
//! allocates nor looks at the payload; [`super::message`] decodes payloads.

use super::Error;

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"MP";

/// The protocol version carried in byte 2 of every header.
pub const VERSION: u8 = 1;

/// Size of the fixed header: magic (2), version (1), type (1), request id (4),
/// payload length (4).
pub const HEADER_LEN: usize = 12;

/// Largest payload a peer may announce (1 MiB). A larger length is rejected
/// from the header alone, before anything is allocated or read.
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;

/// Largest `BODY` chunk by convention, and the cap on the total of the body
/// prefix that may follow a `REQUEST`. Receivers do not enforce it per frame
/// (the hard limit is [`MAX_PAYLOAD_LEN`]); senders stay within it so memory
/// per request stays bounded.
pub const MAX_BODY_CHUNK: usize = 64 * 1024;

/// The message type codes (byte 3 of the header). See `docs/protocol.md`
/// for each payload.
pub mod kind {
    /// `HELLO`: first frame of a client connection (role, pid, generation).
    pub const HELLO: u8 = 0x01;
    /// `HELLO_OK`: the agent's answer to `HELLO` (agent pid, instance id).
    pub const HELLO_OK: u8 = 0x02;
    /// `CONFIGURE`: the Apache parent pushes its configuration to the agent.
    pub const CONFIGURE: u8 = 0x03;
    /// `CONFIGURE_OK`: the agent accepted the configuration.
    pub const CONFIGURE_OK: u8 = 0x04;
    /// `REQUEST`: starts a request (flags, options, environment).
    pub const REQUEST: u8 = 0x10;
    /// `BODY`: one chunk of a request or response body.
    pub const BODY: u8 = 0x11;
    /// `END`: end of a request body or of a response.
    pub const END: u8 = 0x12;
    /// `MORE`: the request body continues; ask for it with `READ_BODY`.
    pub const MORE: u8 = 0x13;
    /// `READ_BODY`: asks for at most n more bytes of request body.
    pub const READ_BODY: u8 = 0x14;
    /// `RELEASE`: the app hijacked the request's connection and returned;
    /// its process may take another request.
    pub const RELEASE: u8 = 0x15;
    /// `RESPONSE`: the response head (status, reason, headers).
    pub const RESPONSE: u8 = 0x20;
    /// `ERROR`: a failed request or a protocol error (code, message).
    pub const ERROR: u8 = 0x30;
    /// `PING`: liveness check.
    pub const PING: u8 = 0x40;
    /// `PONG`: answer to `PING`.
    pub const PONG: u8 = 0x41;
    /// `STATUS`: a status tool's query.
    pub const STATUS: u8 = 0x50;
    /// `STATUS_REPLY`: the agent's status document.
    pub const STATUS_REPLY: u8 = 0x51;
    /// `READY`: an app process finished loading (on the readiness pipe).
    pub const READY: u8 = 0x60;
    /// `SPAWN_ERROR`: an app process failed to load (on the readiness pipe).
    pub const SPAWN_ERROR: u8 = 0x61;
    /// `FORK`: the agent asks a preloader for a worker (fds attached).
    pub const FORK: u8 = 0x70;
    /// `FORKED`: the preloader's answer to `FORK` (the worker's pid).
    pub const FORKED: u8 = 0x71;
    /// `OOB_WORK`: the agent tells an idle process to do out-of-band work.
    pub const OOB_WORK: u8 = 0x72;
    /// `OOB_DONE`: the process finished its out-of-band work.
    pub const OOB_DONE: u8 = 0x73;
}

/// The spec name of a type code (`"HELLO"`, `"READ_BODY"`, …), or `None`
/// for a code this side does not know. Meant for log lines.
pub fn kind_name(code: u8) -> Option<&'static str> {
    Some(match code {
        kind::HELLO => "HELLO",
        kind::HELLO_OK => "HELLO_OK",
        kind::CONFIGURE => "CONFIGURE",
        kind::CONFIGURE_OK => "CONFIGURE_OK",
        kind::REQUEST => "REQUEST",
        kind::BODY => "BODY",
        kind::END => "END",
        kind::MORE => "MORE",
        kind::READ_BODY => "READ_BODY",
        kind::RELEASE => "RELEASE",
        kind::RESPONSE => "RESPONSE",
        kind::ERROR => "ERROR",
        kind::PING => "PING",
        kind::PONG => "PONG",
        kind::STATUS => "STATUS",
        kind::STATUS_REPLY => "STATUS_REPLY",
        kind::READY => "READY",
        kind::SPAWN_ERROR => "SPAWN_ERROR",
        kind::FORK => "FORK",
        kind::FORKED => "FORKED",
        kind::OOB_WORK => "OOB_WORK",
        kind::OOB_DONE => "OOB_DONE",
        _ => return None,
    })
}

/// The decoded 12-byte header of a frame. Magic and version are implied:
/// a `FrameHeader` only exists for a header that carried the right ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message type, one of the codes in [`kind`].
    pub kind: u8,
    /// The request this frame belongs to; 0 outside a request (handshake,
    /// configuration, status).
    pub request_id: u32,
    /// Payload length in bytes; at most [`MAX_PAYLOAD_LEN`] once decoded.
    pub len: u32,
}

impl FrameHeader {
    /// The header as it goes on the wire.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC);
        b[2] = VERSION;
        b[3] = self.kind;
        b[4..8].copy_from_slice(&self.request_id.to_be_bytes());
        b[8..12].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Appends the header's 12 bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// Decodes and validates the header at the start of `buf`.
    ///
    /// Returns `Ok(None)` while fewer than [`HEADER_LEN`] bytes are
    /// available (incomplete, read more). Rejects, in this order, a bad
    /// magic, a bad version, an unknown type and a length above
    /// [`MAX_PAYLOAD_LEN`]. Bytes after the header are not looked at.
    pub fn decode(buf: &[u8]) -> Result<Option<FrameHeader>, Error> {
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        if h[0..2] != MAGIC {
            return Err(Error::BadMagic([h[0], h[1]]));
        }
        if h[2] != VERSION {
            return Err(Error::BadVersion(h[2]));
        }
        let kind = h[3];
        if kind_name(kind).is_none() {
            return Err(Error::UnknownType(kind));
        }
        let request_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        if len as usize > MAX_PAYLOAD_LEN {
            return Err(Error::TooLarge(len));
        }
        Ok(Some(FrameHeader {
            kind,
            request_id,
            len,
        }))
    }

    /// Length of the whole frame: header plus payload.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

/// Checks whether `buf` starts with a whole, valid-looking frame.
///
/// Returns the header when the header and all `len` payload bytes are in
/// `buf` (the frame is `buf[..header.frame_len()]`), `Ok(None)` when more
/// bytes are needed, and an error as soon as the header is invalid, without
/// waiting for the payload. The payload itself is not decoded.
pub fn check_frame(buf: &[u8]) -> Result<Option<FrameHeader>, Error> {
    match FrameHeader::decode(buf)? {
        Some(h) if buf.len() >= h.frame_len() => Ok(Some(h)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, id: u32, len: u32) -> [u8; HEADER_LEN] {
        FrameHeader {
            kind,
            request_id: id,
            len,
        }
        .to_bytes()
    }

    #[test]
    fn header_layout_is_big_endian() {
        let h = header(kind::REQUEST, 0x0102_0304, 0x0000_0a0b);
        assert_eq!(h, [b'M', b'P', 1, 0x10, 1, 2, 3, 4, 0, 0, 0x0a, 0x0b]);
        let mut v = vec![0xff];
        FrameHeader {
            kind: kind::REQUEST,
            request_id: 0x0102_0304,
            len: 0x0a0b,
        }
        .encode(&mut v);
        assert_eq!(&v[1..], &h);
    }

    #[test]
    fn header_round_trip() {
        let fh = FrameHeader {
            kind: kind::BODY,
            request_id: u32::MAX,
            len: MAX_PAYLOAD_LEN as u32,
        };
        assert_eq!(FrameHeader::decode(&fh.to_bytes()).unwrap(), Some(fh));
        assert_eq!(fh.frame_len(), HEADER_LEN + MAX_PAYLOAD_LEN);
    }

    #[test]
    fn short_header_is_incomplete() {
        let h = header(kind::PING, 0, 0);
        for n in 0..HEADER_LEN {
            assert!(
                matches!(FrameHeader::decode(&h[..n]), Ok(None)),
                "prefix {n}"
            );
            assert!(matches!(check_frame(&h[..n]), Ok(None)), "prefix {n}");
        }
        assert!(matches!(check_frame(&h), Ok(Some(_))));
    }

    #[test]
    fn payload_must_be_buffered() {
        let mut f = header(kind::BODY, 9, 3).to_vec();
        assert!(matches!(check_frame(&f), Ok(None)));
        f.extend_from_slice(b"ab");
        assert!(matches!(check_frame(&f), Ok(None)));
        f.extend_from_slice(b"cde");
        let h = check_frame(&f).unwrap().unwrap();
        assert_eq!(
            (h.kind, h.request_id, h.len, h.frame_len()),
            (kind::BODY, 9, 3, 15)
        );
    }

    #[test]
    fn oversized_length_rejected_from_header_alone() {
        let too_big = MAX_PAYLOAD_LEN as u32 + 1;
        let h = header(kind::BODY, 1, too_big);
        assert!(matches!(check_frame(&h), Err(Error::TooLarge(n)) if n == too_big));
        let h = header(kind::BODY, 1, u32::MAX);
        assert!(matches!(check_frame(&h), Err(Error::TooLarge(u32::MAX))));
        // Exactly the cap is fine (and incomplete without its payload).
        let h = header(kind::BODY, 1, MAX_PAYLOAD_LEN as u32);
        assert!(matches!(check_frame(&h), Ok(None)));
    }

    #[test]
    fn bad_magic_version_and_type_rejected() {
        let mut h = header(kind::PING, 0, 0);
        h[0] = b'G';
        assert!(matches!(
            check_frame(&h),
            Err(Error::BadMagic([b'G', b'P']))
        ));
        assert!(matches!(
            check_frame(b"GET / HTTP/1.1\r\n"),
            Err(Error::BadMagic([b'G', b'E']))
        ));

        let mut h = header(kind::PING, 0, 0);
        h[2] = 2;
        assert!(matches!(check_frame(&h), Err(Error::BadVersion(2))));
        h[2] = 0;
        assert!(matches!(check_frame(&h), Err(Error::BadVersion(0))));

        for unknown in [0x00, 0x05, 0x16, 0x31, 0x42, 0x62, 0xff] {
            let h = header(unknown, 0, 0);
            assert!(matches!(check_frame(&h), Err(Error::UnknownType(k)) if k == unknown));
        }
    }

    #[test]
    fn every_known_code_has_a_name() {
        let codes = [
            kind::HELLO,
            kind::HELLO_OK,
            kind::CONFIGURE,
            kind::CONFIGURE_OK,
            kind::REQUEST,
            kind::BODY,
            kind::END,
            kind::MORE,
            kind::READ_BODY,
            kind::RELEASE,
            kind::RESPONSE,
            kind::ERROR,
            kind::PING,
            kind::PONG,
            kind::STATUS,
            kind::STATUS_REPLY,
            kind::READY,
            kind::SPAWN_ERROR,
            kind::FORK,
            kind::FORKED,
            kind::OOB_WORK,
            kind::OOB_DONE,
        ];
        let known = (0..=255u8).filter(|c| kind_name(*c).is_some()).count();
        assert_eq!(known, codes.len());
        assert!(codes.iter().all(|c| kind_name(*c).is_some()));
        assert_eq!(kind_name(kind::READ_BODY), Some("READ_BODY"));
    }
}
