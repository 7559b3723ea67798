//! [`Connection`]: one stream, its read buffer and its write buffer.
//!
//! The connection is the only owner of the bytes read from its stream, as in
//! mini-redis: request and response bodies are streamed through the same
//! `Connection` as every other frame, so no layer can read past the end of a
//! frame and lose the bytes of the next one.
//!
//! # Reading
//!
//! Bytes are read into a reused buffer, as many as the stream has, so a
//! small response (`RESPONSE`, `BODY`, `END`) usually arrives in one
//! `read()`. The buffer starts at [`SMALL_READ_BUF_LEN`] bytes (allocated on
//! the first read): the agent and every Apache thread hold one per
//! connection, and most connections only ever carry small frames. The first
//! frame that does not fit grows it to [`READ_BUF_LEN`], where it stays. Each
//! iteration first *checks* whether a whole frame is buffered and only then
//! *parses* it ([`super::check_frame`], [`Message::decode`]); a frame larger
//! than the buffer grows it to exactly that frame's size, which the header
//! check has capped at [`MAX_PAYLOAD_LEN`]. Nothing is allocated per frame
//! beyond the decoded message's own fields.
//!
//! A large `BODY` (at least [`DIRECT_BODY_MIN`] bytes) that is not yet
//! wholly buffered is finished with `readv` straight into the message's
//! `Vec`, with the read buffer as the second vector for whatever follows,
//! so its unread bytes are copied once (kernel → message) instead of twice.
//!
//! A read that fails (a timeout, `EINTR` is retried) leaves the partial
//! frame buffered: calling [`Connection::read_frame`] again resumes it.
//!
//! # Writing
//!
//! [`Connection::queue`] appends whole frames to a write buffer and
//! [`Connection::flush`] writes them with one `write()` where the stream
//! allows, so a response head, a small body and `END` cost one system call.
//! [`Connection::queue_body`] copies small chunks into the buffer and writes
//! large ones (at least [`DIRECT_BODY_MIN`] bytes) at once with `writev`,
//! behind whatever is queued, without copying them. After a write error
//! the peer's view of the stream is unknown: close the connection.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};

use super::Error;
use super::frame::{FrameHeader, HEADER_LEN, MAX_BODY_CHUNK, MAX_PAYLOAD_LEN, kind};
use super::message::{Message, encode_body_header};

/// Size of the read buffer: a full [`MAX_BODY_CHUNK`] with its header plus
/// room for the small frames that usually follow it (`END`), so one
/// `read()` can take them all.
pub const READ_BUF_LEN: usize = MAX_BODY_CHUNK + 4096;

/// Size of the read buffer until a frame needs more: a request's or a small
/// response's frames.
pub const SMALL_READ_BUF_LEN: usize = 8 * 1024;

/// A `BODY` payload at least this long skips the intermediate copy: on read,
/// its not-yet-buffered part goes straight into the message; on write
/// ([`Connection::queue_body`]), it is written from the caller's slice.
pub const DIRECT_BODY_MIN: usize = 16 * 1024;

/// A framed connection over a byte stream (a Unix socket, a pipe, or any
/// `Read + Write` in tests).
///
/// Not thread-safe by design: one thread owns a connection at a time.
pub struct Connection<S> {
    /// The stream; read only through `rbuf`, written only through `wbuf`
    /// (or `writev` right behind it).
    stream: S,
    /// Read buffer. Its length is its usable size (zero-filled once); the
    /// unread bytes are `rbuf[start..end]`.
    rbuf: Vec<u8>,
    /// First unread byte in `rbuf`.
    start: usize,
    /// One past the last byte read into `rbuf`.
    end: usize,
    /// A large `BODY` being read straight into its own buffer; kept across
    /// a failed read so `read_frame` can resume it.
    pending: Option<PendingBody>,
    /// Frames queued by `queue`, written by `flush`.
    wbuf: Vec<u8>,
    /// Payload length of a frame `queue` refused as too large: reported by
    /// the next `flush`, and until then later frames are dropped so the
    /// peer never sees them out of order.
    refused: Option<u32>,
}

/// A large `BODY` whose payload is read directly into `data`.
struct PendingBody {
    /// The frame's request id.
    request_id: u32,
    /// The payload, sized to the frame's length.
    data: Vec<u8>,
    /// How many bytes of `data` are filled.
    filled: usize,
}

/// Shows the stream and how many bytes are buffered, not the buffers.
impl<S: fmt::Debug> fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("stream", &self.stream)
            .field("buffered_input", &(self.end - self.start))
            .field(
                "pending_body",
                &self.pending.as_ref().map(|p| (p.filled, p.data.len())),
            )
            .field("queued_output", &self.wbuf.len())
            .finish()
    }
}

impl<S: Read + Write> Connection<S> {
    /// Wraps `stream`. Buffers are allocated on first use.
    pub fn new(stream: S) -> Self {
        Connection {
            stream,
            rbuf: Vec::new(),
            start: 0,
            end: 0,
            pending: None,
            wbuf: Vec::new(),
            refused: None,
        }
    }

    /// Reads one whole frame.
    ///
    /// `Ok(Some((request_id, message)))` for a frame; `Ok(None)` when the
    /// peer closed cleanly between frames; [`Error::UnexpectedEof`] when it
    /// closed inside one. A protocol error leaves the connection out of step:
    /// close it. An I/O error (a read timeout) keeps what was read, so a
    /// later call resumes the same frame.
    pub fn read_frame(&mut self) -> Result<Option<(u32, Message)>, Error> {
        if self.pending.is_some() {
            return self.finish_pending_body().map(Some);
        }
        loop {
            let avail = &self.rbuf[self.start..self.end];
            // Check: how much of a valid frame do we have?
            let want = match FrameHeader::decode(avail)? {
                None => HEADER_LEN,
                Some(header) if avail.len() >= header.frame_len() => {
                    // Parse: the whole frame is here.
                    let len = header.frame_len();
                    let msg = Message::decode(&header, &avail[HEADER_LEN..len])?;
                    self.consume(len);
                    return Ok(Some((header.request_id, msg)));
                }
                Some(header)
                    if header.kind == kind::BODY && header.len as usize >= DIRECT_BODY_MIN =>
                {
                    self.start_pending_body(header);
                    return self.finish_pending_body().map(Some);
                }
                Some(header) => header.frame_len(),
            };
            if self.fill(want)? == 0 {
                return if self.start == self.end {
                    Ok(None)
                } else {
                    Err(Error::UnexpectedEof)
                };
            }
        }
    }

    /// Queues a frame in the write buffer; nothing is written until
    /// [`Connection::flush`].
    ///
    /// A message whose payload exceeds [`MAX_PAYLOAD_LEN`] is not queued:
    /// the next `flush` writes the frames queued before it and returns
    /// [`Error::TooLarge`], and frames queued in between are dropped, so the
    /// peer never sees frames that should have followed the missing one.
    /// The caller may then send an `ERROR` instead.
    pub fn queue(&mut self, request_id: u32, msg: &Message) {
        if self.refused.is_some() {
            return;
        }
        let len = msg.payload_len();
        if len > MAX_PAYLOAD_LEN {
            self.refused = Some(u32::try_from(len).unwrap_or(u32::MAX));
            return;
        }
        msg.encode(request_id, &mut self.wbuf);
    }

    /// Queues frames that were encoded with [`Message::encode`] beforehand
    /// (to send the same request again without encoding it again).
    pub fn queue_encoded(&mut self, frames: &[u8]) {
        if self.refused.is_none() {
            self.wbuf.extend_from_slice(frames);
        }
    }

    /// Queues a `BODY` frame carrying `data` (1 byte to [`MAX_BODY_CHUNK`]
    /// by convention).
    ///
    /// A chunk shorter than [`DIRECT_BODY_MIN`] is copied into the write
    /// buffer. A longer one is written now, together with everything queued
    /// before it, in one `writev`, without being copied: hence the `Result`.
    /// More than [`MAX_PAYLOAD_LEN`] bytes is refused with
    /// [`Error::TooLarge`] and nothing is queued.
    pub fn queue_body(&mut self, request_id: u32, data: &[u8]) -> Result<(), Error> {
        if let Some(len) = self.refused {
            return Err(Error::TooLarge(len));
        }
        if data.len() > MAX_PAYLOAD_LEN {
            return Err(Error::TooLarge(
                u32::try_from(data.len()).unwrap_or(u32::MAX),
            ));
        }
        encode_body_header(request_id, data.len(), &mut self.wbuf);
        if data.len() < DIRECT_BODY_MIN {
            self.wbuf.extend_from_slice(data);
            return Ok(());
        }
        let result = write_all_vectored(
            &mut self.stream,
            &mut [IoSlice::new(&self.wbuf), IoSlice::new(data)],
        );
        self.wbuf.clear();
        Ok(result?)
    }

    /// Writes everything queued (one `write()` where the stream takes it
    /// all) and flushes the stream.
    ///
    /// Returns [`Error::TooLarge`] after writing the frames queued before a
    /// message that [`Connection::queue`] refused; the connection stays
    /// usable.
    pub fn flush(&mut self) -> Result<(), Error> {
        let written = if self.wbuf.is_empty() {
            Ok(())
        } else {
            self.stream.write_all(&self.wbuf)
        };
        self.wbuf.clear();
        written?;
        self.stream.flush()?;
        match self.refused.take() {
            Some(len) => Err(Error::TooLarge(len)),
            None => Ok(()),
        }
    }

    /// Queues `msg` and flushes: [`Connection::queue`] then
    /// [`Connection::flush`].
    pub fn send(&mut self, request_id: u32, msg: &Message) -> Result<(), Error> {
        self.queue(request_id, msg);
        self.flush()
    }

    /// The stream, e.g. to set timeouts.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream, mutably. Reading or writing it directly bypasses the
    /// buffers and breaks the framing.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Gives the stream back. Buffered input and queued output are dropped;
    /// check [`Connection::has_buffered_input`] first if that matters.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// True when bytes of a next frame were already read from the stream.
    /// A connection about to be reused for another request must return
    /// false: otherwise the peer sent something nobody asked for.
    pub fn has_buffered_input(&self) -> bool {
        self.start < self.end || self.pending.is_some()
    }

    /// Marks `n` buffered bytes as used.
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // A frame larger than the usual buffer grew it; give that back.
            if self.rbuf.len() > READ_BUF_LEN {
                self.rbuf.truncate(READ_BUF_LEN);
                self.rbuf.shrink_to_fit();
            }
        }
    }

    /// Reads once from the stream, making room for a frame of `want` bytes
    /// (from `start`; `want` is at most a capped frame length). Returns the
    /// number of bytes read; 0 means end of stream.
    fn fill(&mut self, want: usize) -> Result<usize, Error> {
        if self.start > 0 {
            // Move the partial frame to the front so the read gets the most
            // room; each byte is moved at most once per frame.
            self.rbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let size = if want <= SMALL_READ_BUF_LEN {
            SMALL_READ_BUF_LEN
        } else {
            want.max(READ_BUF_LEN)
        };
        if self.rbuf.len() < size {
            self.rbuf.resize(size, 0);
        }
        loop {
            match self.stream.read(&mut self.rbuf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Moves the buffered part of a large `BODY` into its own buffer.
    /// Called when the header is buffered but not the whole payload.
    fn start_pending_body(&mut self, header: FrameHeader) {
        let mut data = vec![0u8; header.len as usize];
        let have = &self.rbuf[self.start + HEADER_LEN..self.end];
        data[..have.len()].copy_from_slice(have);
        self.pending = Some(PendingBody {
            request_id: header.request_id,
            data,
            filled: have.len(),
        });
        self.start = 0;
        self.end = 0;
    }

    /// Reads the rest of the pending `BODY` into its buffer, and whatever
    /// follows it into the (empty) read buffer, with `readv`.
    fn finish_pending_body(&mut self) -> Result<(u32, Message), Error> {
        if self.rbuf.len() < READ_BUF_LEN {
            self.rbuf.resize(READ_BUF_LEN, 0);
        }
        let Some(p) = self.pending.as_mut() else {
            unreachable!("finish_pending_body without a pending body");
        };
        while p.filled < p.data.len() {
            debug_assert_eq!((self.start, self.end), (0, 0));
            let room = p.data.len() - p.filled;
            let mut bufs = [
                IoSliceMut::new(&mut p.data[p.filled..]),
                IoSliceMut::new(&mut self.rbuf),
            ];
            match self.stream.read_vectored(&mut bufs) {
                Ok(0) => {
                    self.pending = None;
                    return Err(Error::UnexpectedEof);
                }
                Ok(n) if n <= room => p.filled += n,
                Ok(n) => {
                    p.filled += room;
                    self.end = n - room;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let p = self.pending.take().expect("checked above");
        Ok((p.request_id, Message::Body(p.data)))
    }
}

/// `write_all` for several buffers: `writev` until all are written.
fn write_all_vectored<W: Write>(w: &mut W, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PairList;
    use crate::protocol::message::{RequestHead, ResponseHead, Role};
    use std::os::unix::net::UnixStream;
    use std::thread;

    fn pair() -> (Connection<UnixStream>, Connection<UnixStream>) {
        let (a, b) = UnixStream::pair().unwrap();
        (Connection::new(a), Connection::new(b))
    }

    fn request() -> Message {
        Message::Request(RequestHead {
            flags: 0,
            options: [("PassengerAppRoot", "/srv")].into_iter().collect(),
            env: [("REQUEST_METHOD", "GET")].into_iter().collect(),
        })
    }

    #[test]
    fn send_and_read_round_trip() {
        let (mut a, mut b) = pair();
        a.send(
            0,
            &Message::Hello {
                role: Role::Worker,
                pid: 7,
                generation: 1,
            },
        )
        .unwrap();
        a.queue(9, &request());
        a.queue(9, &Message::End);
        a.flush().unwrap();
        assert_eq!(
            b.read_frame().unwrap(),
            Some((
                0,
                Message::Hello {
                    role: Role::Worker,
                    pid: 7,
                    generation: 1
                }
            ))
        );
        // Both queued frames arrived in one write and sit in one buffer.
        assert_eq!(b.read_frame().unwrap(), Some((9, request())));
        assert!(b.has_buffered_input());
        assert_eq!(b.read_frame().unwrap(), Some((9, Message::End)));
        assert!(!b.has_buffered_input());
        drop(a);
        assert_eq!(b.read_frame().unwrap(), None);
    }

    #[test]
    fn the_read_buffer_stays_small_until_a_frame_needs_more() {
        let (mut a, mut b) = pair();
        a.send(1, &request()).unwrap();
        assert_eq!(b.read_frame().unwrap(), Some((1, request())));
        assert_eq!(b.rbuf.len(), SMALL_READ_BUF_LEN);
        let mid = Message::Body(vec![7; SMALL_READ_BUF_LEN + 100]);
        a.send(1, &mid).unwrap();
        a.send(1, &request()).unwrap();
        assert_eq!(b.read_frame().unwrap(), Some((1, mid)));
        assert_eq!(b.read_frame().unwrap(), Some((1, request())));
        assert_eq!(b.rbuf.len(), READ_BUF_LEN);
    }

    #[test]
    fn clean_eof_is_none() {
        let (a, mut b) = pair();
        drop(a);
        assert_eq!(b.read_frame().unwrap(), None);
    }

    #[test]
    fn eof_mid_frame_is_unexpected() {
        for cut in [1, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 3] {
            let (mut a, mut b) = pair();
            let mut bytes = Vec::new();
            request().encode(1, &mut bytes);
            a.get_mut().write_all(&bytes[..cut]).unwrap();
            drop(a);
            assert!(
                matches!(b.read_frame(), Err(Error::UnexpectedEof)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn invalid_frame_is_an_error() {
        let (mut a, mut b) = pair();
        a.get_mut().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(matches!(b.read_frame(), Err(Error::BadMagic([b'G', b'E']))));
    }

    /// A stream that hands out one byte per read() and records writes.
    struct Trickle {
        input: Vec<u8>,
        pos: usize,
        output: Vec<u8>,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.input.len() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.input[self.pos];
            self.pos += 1;
            Ok(1)
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            // Partial writes too: at most 5 bytes at a time.
            let n = buf.len().min(5);
            self.output.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn all_kinds() -> Vec<(u32, Message)> {
        vec![
            (
                0,
                Message::Hello {
                    role: Role::Status,
                    pid: 1,
                    generation: 2,
                },
            ),
            (
                0,
                Message::HelloOk {
                    agent_pid: 3,
                    instance: b"i".to_vec(),
                },
            ),
            (3, request()),
            (3, Message::Body(vec![7; 100])),
            (3, Message::Body(vec![8; DIRECT_BODY_MIN + 5])),
            (3, Message::More),
            (3, Message::ReadBody { max: 10 }),
            (
                3,
                Message::Response(ResponseHead {
                    status: 200,
                    reason: b"OK".to_vec(),
                    headers: PairList::new(),
                }),
            ),
            (3, Message::End),
            (0, Message::Ping),
        ]
    }

    #[test]
    fn one_byte_reads_and_short_writes() {
        let frames = all_kinds();
        let mut input = Vec::new();
        for (id, m) in &frames {
            m.encode(*id, &mut input);
        }
        let mut c = Connection::new(Trickle {
            input: input.clone(),
            pos: 0,
            output: vec![],
        });
        for f in &frames {
            assert_eq!(c.read_frame().unwrap().as_ref(), Some(f));
        }
        assert_eq!(c.read_frame().unwrap(), None);

        for (id, m) in &frames {
            match m {
                Message::Body(d) => c.queue_body(*id, d).unwrap(),
                _ => c.queue(*id, m),
            }
        }
        c.flush().unwrap();
        assert_eq!(c.get_ref().output, input);
    }

    #[test]
    fn large_bodies_and_frames_over_a_socket() {
        let (mut a, mut b) = pair();
        let big_body: Vec<u8> = (0..MAX_BODY_CHUNK).map(|i| (i * 7 % 251) as u8).collect();
        let odd_body: Vec<u8> = (0..DIRECT_BODY_MIN + 1).map(|i| i as u8).collect();
        let big_status = Message::StatusReply {
            document: vec![b'x'; MAX_PAYLOAD_LEN - 4],
        };
        let max_body = Message::Body(vec![b'y'; MAX_PAYLOAD_LEN]);
        let expected = vec![
            (
                1,
                Message::Response(ResponseHead {
                    status: 200,
                    reason: vec![],
                    headers: PairList::new(),
                }),
            ),
            (1, Message::Body(big_body.clone())),
            (1, Message::Body(b"small".to_vec())),
            (1, Message::Body(odd_body.clone())),
            (0, big_status.clone()),
            (2, max_body.clone()),
            (1, Message::End),
        ];
        let writer = thread::spawn(move || {
            a.queue(
                1,
                &Message::Response(ResponseHead {
                    status: 200,
                    reason: vec![],
                    headers: PairList::new(),
                }),
            );
            a.queue_body(1, &big_body).unwrap();
            a.queue_body(1, b"small").unwrap();
            a.queue_body(1, &odd_body).unwrap();
            a.flush().unwrap();
            a.send(0, &big_status).unwrap();
            a.send(2, &max_body).unwrap();
            a.send(1, &Message::End).unwrap();
        });
        for f in &expected {
            assert_eq!(b.read_frame().unwrap().as_ref(), Some(f));
        }
        writer.join().unwrap();
        assert_eq!(b.read_frame().unwrap(), None);
        // The buffer grew for the 1 MiB frames and shrank back.
        assert!(b.rbuf.len() <= READ_BUF_LEN);
    }

    /// A stream that yields its input in fixed pieces, with a "timeout"
    /// (WouldBlock) between pieces.
    struct Stutter {
        pieces: Vec<Vec<u8>>,
        next: usize,
        blocked: bool,
    }

    impl Read for Stutter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.blocked {
                self.blocked = false;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let Some(piece) = self.pieces.get_mut(self.next) else {
                return Ok(0);
            };
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            piece.drain(..n);
            if piece.is_empty() {
                self.next += 1;
                self.blocked = true;
            }
            Ok(n)
        }
    }

    impl Write for Stutter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn timeouts_mid_frame_resume() {
        let body = Message::Body((0..40_000).map(|i| i as u8).collect());
        let mut bytes = Vec::new();
        request().encode(5, &mut bytes);
        body.encode(5, &mut bytes);
        Message::End.encode(5, &mut bytes);
        // Cut inside the REQUEST, inside the BODY header, twice inside the
        // BODY payload (the direct path), and inside END.
        let r = bytes.len() - 40_000 - 2 * HEADER_LEN;
        let cuts = [
            0,
            7,
            r + 5,
            r + 20,
            r + 30_000,
            bytes.len() - 3,
            bytes.len(),
        ];
        let pieces = cuts
            .windows(2)
            .map(|w| bytes[w[0]..w[1]].to_vec())
            .collect();
        let mut c = Connection::new(Stutter {
            pieces,
            next: 0,
            blocked: false,
        });
        let mut got = Vec::new();
        let mut blocked_in_direct_body = 0;
        loop {
            match c.read_frame() {
                Ok(Some(f)) => got.push(f),
                Ok(None) => break,
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked_in_direct_body += usize::from(c.pending.is_some());
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, vec![(5, request()), (5, body), (5, Message::End)]);
        assert_eq!(blocked_in_direct_body, 2);
    }

    #[test]
    fn eof_inside_a_large_body() {
        let (mut a, mut b) = pair();
        let mut bytes = Vec::new();
        Message::Body(vec![1; DIRECT_BODY_MIN * 2]).encode(4, &mut bytes);
        a.get_mut().write_all(&bytes[..bytes.len() - 1]).unwrap();
        drop(a);
        assert!(matches!(b.read_frame(), Err(Error::UnexpectedEof)));
    }

    #[test]
    fn oversized_queue_is_refused_in_order() {
        let (mut a, mut b) = pair();
        a.queue(
            1,
            &Message::Response(ResponseHead {
                status: 200,
                reason: vec![],
                headers: PairList::new(),
            }),
        );
        a.queue(1, &Message::Body(vec![0; MAX_PAYLOAD_LEN + 1]));
        a.queue(1, &Message::End); // dropped: would follow the missing frame
        assert!(matches!(a.queue_body(1, b"x"), Err(Error::TooLarge(_))));
        assert!(matches!(a.flush(), Err(Error::TooLarge(n)) if n as usize == MAX_PAYLOAD_LEN + 1));
        // The connection is usable again.
        a.send(
            1,
            &Message::Error {
                code: 500,
                message: "too big".into(),
            },
        )
        .unwrap();
        assert!(matches!(
            b.read_frame().unwrap(),
            Some((1, Message::Response(_)))
        ));
        assert!(matches!(
            b.read_frame().unwrap(),
            Some((1, Message::Error { code: 500, .. }))
        ));
        assert!(matches!(
            a.queue_body(1, &vec![0; MAX_PAYLOAD_LEN + 1]),
            Err(Error::TooLarge(_))
        ));
        a.flush().unwrap();
        drop(a);
        assert_eq!(b.read_frame().unwrap(), None);
    }

    #[test]
    fn into_inner_returns_the_stream() {
        let (a, _b) = UnixStream::pair().unwrap();
        let c = Connection::new(a);
        assert!(!c.has_buffered_input());
        assert!(format!("{c:?}").contains("buffered_input: 0"));
        let s = c.into_inner();
        s.set_nonblocking(true).unwrap();
    }
}
