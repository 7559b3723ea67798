//! A switched-protocol connection (a WebSocket) on the Apache side.
//!
//! After the app's 101, the client connection and this thread's agent
//! connection carry the new protocol's bytes both ways: the client's bytes
//! go to the agent as `BODY` frames, the app's `BODY` frames go to the
//! client as raw bytes, and each direction ends with `END`
//! (docs/protocol.md, "Upgraded connections").
//!
//! One thread serves both directions with `poll`, and never blocks on a
//! write: the agent socket is non-blocking, with an outbox for what it does
//! not take yet, and client writes go through Apache's non-blocking write
//! path (what the socket does not take stays with Apache until it is
//! writable). Each direction has a bound on what waits: while the agent's
//! outbox is full the client is not read, and while bytes for the client
//! wait the agent is not read. So a slow reader slows its writer down
//! without filling memory, and neither direction can stop the other: a
//! client that writes a lot before it reads anything works as it would
//! against the app directly. Both sources read ahead in user space (the
//! agent connection's buffer, Apache's input filters), which `poll` cannot
//! see: a source is only waited for once a read has found it empty.
//!
//! The tunnel ends when the app's direction has ended (`END`: the app closed
//! its side) and everything has reached the client, on an `ERROR`, or when
//! either connection fails. The client ending its direction first is passed
//! on as `END`, and the app's remaining bytes still reach it.

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::module::client::AgentConnection;
use crate::module::handler::{ID, Outcome, RequestIo, TUNNEL_WRITE_MAX};
use crate::protocol::{self, MAX_BODY_CHUNK, Message, encode_body_header};

/// How often a quiet tunnel checks whether Apache is stopping (it closes
/// the client connection under us, which wakes no poll on our duplicate).
const STOP_CHECK_INTERVAL_MS: u16 = 1000;

/// Bytes waiting in either direction above which its source is not read.
const WAITING_LIMIT: usize = 4 * MAX_BODY_CHUNK;

/// Sends the app's 101 with `headers` to the client and relays both
/// directions until the tunnel ends. The agent connection cannot be reused
/// afterwards.
pub fn run(
    conn: &mut AgentConnection,
    io: &mut dyn RequestIo,
    reason: &[u8],
    headers: &[(&[u8], &[u8])],
) -> Outcome {
    let client = match io.open_tunnel(101, reason, headers) {
        Ok(fd) => fd,
        Err(e) => {
            log::info!(target: "MP0210", "the client connection could not switch protocols: {e}");
            return Outcome::Aborted;
        }
    };
    match relay(conn, io, &client) {
        Ok(()) => Outcome::Done,
        Err(e) => {
            // A client that goes away mid-WebSocket is business as usual.
            log::debug!(target: "MP0211", "a tunnel ended early: {e}");
            Outcome::Aborted
        }
    }
}

/// Bytes accepted from one side and not yet written to the other.
#[derive(Default)]
struct Waiting {
    bytes: Vec<u8>,
    /// How much of `bytes` is written.
    done: usize,
}

impl Waiting {
    fn len(&self) -> usize {
        self.bytes.len() - self.done
    }

    fn has_room(&self) -> bool {
        self.len() < WAITING_LIMIT
    }

    fn rest(&self) -> &[u8] {
        &self.bytes[self.done..]
    }

    /// Marks `n` more bytes written; forgets them all once all are.
    fn advance(&mut self, n: usize) {
        self.done += n;
        if self.done == self.bytes.len() {
            self.bytes.clear();
            self.done = 0;
        }
    }

    /// Writes what the (non-blocking) agent socket takes now.
    fn write_to(&mut self, mut stream: &UnixStream) -> io::Result<()> {
        while self.len() > 0 {
            match stream.write(self.rest()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Relays until the app's direction has ended and reached the client
/// (`Ok`), or something fails.
fn relay(
    conn: &mut AgentConnection,
    io: &mut dyn RequestIo,
    client: &OwnedFd,
) -> Result<(), String> {
    conn.get_ref()
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    // Frames for the agent, and raw bytes for the client.
    let mut to_agent = Waiting::default();
    let mut to_client = Waiting::default();
    // Apache holds client bytes it could not write yet.
    let mut client_pending = false;
    let mut client_sending = true;
    let mut app_sending = true;
    // Whether a side's last read found nothing left to read. Both sides
    // read ahead in user space (the agent connection takes what its socket
    // has, frames beyond the one asked for included; Apache's input filters
    // keep what a socket read brought beyond the length asked for), where
    // poll() cannot see it: a side whose reading stopped because the other
    // direction was full is read again, never waited for.
    let mut client_drained = false;
    let mut agent_drained = false;
    let mut chunk = vec![0u8; MAX_BODY_CHUNK];
    loop {
        // Client -> agent.
        while client_sending && to_agent.has_room() {
            match io.tunnel_read(&mut chunk) {
                Ok(None) => {
                    client_drained = true;
                    break;
                }
                Ok(Some(0)) => {
                    Message::End.encode(ID, &mut to_agent.bytes);
                    client_sending = false;
                }
                Ok(Some(n)) => {
                    client_drained = false;
                    encode_body_header(ID, n, &mut to_agent.bytes);
                    to_agent.bytes.extend_from_slice(&chunk[..n]);
                }
                Err(e) => return Err(format!("reading the client: {e}")),
            }
        }
        to_agent
            .write_to(conn.get_ref())
            .map_err(|e| format!("writing to the agent: {e}"))?;

        // Agent -> client.
        while app_sending && to_client.has_room() {
            match conn.read_frame() {
                Ok(Some((ID, Message::Body(data)))) => {
                    agent_drained = false;
                    to_client.bytes.extend_from_slice(&data);
                }
                Ok(Some((ID, Message::End))) => app_sending = false,
                Ok(Some((ID, Message::Error { code, message }))) => {
                    return Err(format!("the agent ended the tunnel ({code}): {message}"));
                }
                Ok(Some((id, other))) => {
                    return Err(format!(
                        "unexpected frame in a tunnel: type {:#04x}, request {id}",
                        other.kind()
                    ));
                }
                Ok(None) => return Err("the agent closed the connection".into()),
                Err(protocol::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    agent_drained = true;
                    break;
                }
                Err(e) => return Err(format!("reading the agent: {e}")),
            }
        }
        let to_client_error = |e: io::Error| format!("writing to the client: {e}");
        if client_pending {
            client_pending = io.tunnel_flush().map_err(to_client_error)?;
        }
        while !client_pending && to_client.len() > 0 {
            let piece = to_client.len().min(TUNNEL_WRITE_MAX);
            client_pending = io
                .tunnel_write(&to_client.rest()[..piece])
                .map_err(to_client_error)?;
            to_client.advance(piece);
        }
        if !app_sending && to_client.len() == 0 && !client_pending {
            return Ok(());
        }

        // A side with room on the way out and bytes possibly read ahead
        // moves now: its socket may have nothing left to wake a poll.
        if (client_sending && to_agent.has_room() && !client_drained)
            || (app_sending && to_client.has_room() && !agent_drained)
        {
            continue;
        }

        // Wait for whichever side can move next.
        let mut agent_events = PollFlags::empty();
        if app_sending && to_client.has_room() {
            agent_events |= PollFlags::POLLIN;
        }
        if to_agent.len() > 0 {
            agent_events |= PollFlags::POLLOUT;
        }
        let mut client_events = PollFlags::empty();
        if client_sending && to_agent.has_room() {
            client_events |= PollFlags::POLLIN;
        }
        if client_pending {
            client_events |= PollFlags::POLLOUT;
        }
        let mut fds = [
            PollFd::new(conn.get_ref().as_fd(), agent_events),
            PollFd::new(client.as_fd(), client_events),
        ];
        match poll(&mut fds, PollTimeout::from(STOP_CHECK_INTERVAL_MS)) {
            Ok(0) if io.tunnel_closed() => {
                return Err("Apache closed the client connection (stopping)".into());
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    use nix::sys::socket::{setsockopt, sockopt};

    use crate::protocol::Connection;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    /// A client connection over a socket pair, as the shim's tunnel
    /// callbacks present it.
    struct SocketClient {
        socket: UnixStream,
        /// Bytes the socket did not take yet (Apache's part).
        held: Vec<u8>,
        /// Bytes read from the socket and not handed out yet (what Apache's
        /// input filters keep beyond the length asked for).
        read_ahead: Vec<u8>,
        /// The interim response's reason phrase and headers.
        opened: Option<(Vec<u8>, Headers)>,
        /// How many polls waited a whole `STOP_CHECK_INTERVAL_MS` (the
        /// tunnel then asks whether Apache closed the client).
        idle_polls: Arc<AtomicUsize>,
    }

    /// What Apache's core input filter reads from its socket at a time
    /// (APR's socket bucket), until it has the length asked for.
    const SOCKET_READ_LEN: usize = 8000;

    impl RequestIo for SocketClient {
        fn read_body(&mut self, _: &mut [u8]) -> io::Result<usize> {
            unreachable!("a tunnel reads no request body")
        }
        fn send_head(&mut self, _: u16, _: &[u8], _: &[(&[u8], &[u8])]) -> io::Result<()> {
            unreachable!("a tunnel sends no ordinary head")
        }
        fn write_body(&mut self, _: &[u8], _: bool) -> io::Result<()> {
            unreachable!("a tunnel writes no ordinary body")
        }
        fn client_gone(&mut self) -> bool {
            unreachable!("a tunnel polls the client itself")
        }
        fn tunnel_closed(&mut self) -> bool {
            self.idle_polls.fetch_add(1, Ordering::Relaxed);
            false
        }
        fn open_tunnel(
            &mut self,
            status: u16,
            reason: &[u8],
            headers: &[(&[u8], &[u8])],
        ) -> io::Result<OwnedFd> {
            assert_eq!(status, 101);
            let headers = headers.iter().map(|(n, v)| (n.to_vec(), v.to_vec()));
            self.opened = Some((reason.to_vec(), headers.collect()));
            self.socket.set_nonblocking(true)?;
            self.socket.as_fd().try_clone_to_owned()
        }
        fn tunnel_read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
            let mut block = [0u8; SOCKET_READ_LEN];
            let mut eof = false;
            while self.read_ahead.len() < buf.len() {
                match self.socket.read(&mut block) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => self.read_ahead.extend_from_slice(&block[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if self.read_ahead.is_empty() {
                return Ok(eof.then_some(0));
            }
            let n = self.read_ahead.len().min(buf.len());
            buf[..n].copy_from_slice(&self.read_ahead[..n]);
            self.read_ahead.drain(..n);
            Ok(Some(n))
        }
        fn tunnel_write(&mut self, data: &[u8]) -> io::Result<bool> {
            assert!(self.held.is_empty() && data.len() <= TUNNEL_WRITE_MAX);
            self.held.extend_from_slice(data);
            self.tunnel_flush()
        }
        fn tunnel_flush(&mut self) -> io::Result<bool> {
            while !self.held.is_empty() {
                match self.socket.write(&self.held) {
                    Ok(n) => drop(self.held.drain(..n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) => return Err(e),
                }
            }
            Ok(false)
        }
    }

    /// What `start` returns: the client's and the agent's far ends, and the
    /// thread that returns the outcome and the client's recorded head.
    type Started = (
        UnixStream,
        Connection<UnixStream>,
        thread::JoinHandle<(Outcome, SocketClient)>,
    );

    /// Runs a tunnel.
    fn start() -> Started {
        start_after(&[], &[]).0
    }

    /// Runs a tunnel once the client has sent `from_client` and the agent
    /// `from_agent`, both wholly in their sockets before the tunnel reads
    /// anything. Send buffers are enlarged so that these bytes, and the
    /// tunnel's own writes of a full `WAITING_LIMIT`, fit at once. Also
    /// returns the client's count of idle polls.
    fn start_after(from_client: &[u8], from_agent: &[u8]) -> (Started, Arc<AtomicUsize>) {
        let (client_ours, mut client_peer) = UnixStream::pair().unwrap();
        let (agent_ours, mut agent_peer) = UnixStream::pair().unwrap();
        for socket in [&client_ours, &client_peer, &agent_ours, &agent_peer] {
            // The kernel doubles it, after capping it at net.core.wmem_max
            // (212992 by default).
            setsockopt(socket, sockopt::SndBuf, &(1 << 20)).unwrap();
        }
        for (socket, bytes) in [
            (&mut client_peer, from_client),
            (&mut agent_peer, from_agent),
        ] {
            socket.set_nonblocking(true).unwrap();
            socket
                .write_all(bytes)
                .expect("the socket buffer holds what is sent before the tunnel starts");
            socket.set_nonblocking(false).unwrap();
        }
        let idle_polls = Arc::new(AtomicUsize::new(0));
        let client = SocketClient {
            socket: client_ours,
            held: Vec::new(),
            read_ahead: Vec::new(),
            opened: None,
            idle_polls: Arc::clone(&idle_polls),
        };
        let tunnel = thread::spawn(move || {
            let mut client = client;
            let mut agent = Connection::new(agent_ours);
            let headers: [(&[u8], &[u8]); 1] = [(b"Upgrade", b"websocket")];
            let outcome = run(&mut agent, &mut client, b"Switching Protocols", &headers);
            (outcome, client)
        });
        (
            (client_peer, Connection::new(agent_peer), tunnel),
            idle_polls,
        )
    }

    #[test]
    fn bytes_flow_both_ways_and_the_apps_end_ends_the_tunnel() {
        let (mut client, mut agent, tunnel) = start();
        client.write_all(b"ping").unwrap();
        assert_eq!(
            agent.read_frame().unwrap(),
            Some((ID, Message::Body(b"ping".to_vec())))
        );
        agent.send(ID, &Message::Body(b"pong".to_vec())).unwrap();
        let mut answer = [0u8; 4];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"pong");
        // The client's end of stream becomes END; the app may still talk.
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(agent.read_frame().unwrap(), Some((ID, Message::End)));
        agent.send(ID, &Message::Body(b"bye".to_vec())).unwrap();
        agent.send(ID, &Message::End).unwrap();
        let (outcome, opened) = tunnel.join().unwrap();
        assert_eq!(outcome, Outcome::Done);
        let mut rest = Vec::new();
        drop(opened.socket);
        client.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye");
        let (reason, headers) = opened.opened.unwrap();
        assert_eq!(reason, b"Switching Protocols");
        assert_eq!(headers, vec![(b"Upgrade".to_vec(), b"websocket".to_vec())]);
    }

    #[test]
    fn megabytes_both_ways_at_once_do_not_deadlock() {
        const SIZE: usize = 4 << 20;
        let (client, mut agent, tunnel) = start();
        let pattern = |i: usize| (i % 251) as u8;
        // The client writes everything before it reads anything, and so
        // does the app: only independent directions get both through.
        let client_side = thread::spawn(move || {
            let mut writer = client.try_clone().unwrap();
            let data: Vec<u8> = (0..SIZE).map(pattern).collect();
            writer.write_all(&data).unwrap();
            writer.shutdown(std::net::Shutdown::Write).unwrap();
            let mut received = Vec::new();
            (&client)
                .take(SIZE as u64)
                .read_to_end(&mut received)
                .unwrap();
            received
        });
        let mut writer = agent.get_ref().try_clone().unwrap();
        let data: Vec<u8> = (0..SIZE).map(pattern).collect();
        let app_writes = thread::spawn(move || {
            let mut frame = Vec::new();
            for chunk in data.chunks(MAX_BODY_CHUNK) {
                frame.clear();
                encode_body_header(ID, chunk.len(), &mut frame);
                frame.extend_from_slice(chunk);
                writer.write_all(&frame).unwrap();
            }
            writer
        });
        let mut from_client = Vec::new();
        loop {
            match agent.read_frame().unwrap() {
                Some((ID, Message::Body(data))) => from_client.extend_from_slice(&data),
                Some((ID, Message::End)) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut writer = app_writes.join().unwrap();
        let mut end = Vec::new();
        Message::End.encode(ID, &mut end);
        writer.write_all(&end).unwrap();
        assert_eq!(tunnel.join().unwrap().0, Outcome::Done);
        let to_client = client_side.join().unwrap();
        assert!(
            from_client.len() == SIZE
                && from_client
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == pattern(i))
        );
        assert!(
            to_client.len() == SIZE && to_client.iter().enumerate().all(|(i, &b)| b == pattern(i))
        );
    }

    #[test]
    fn a_client_that_goes_away_ends_the_tunnel() {
        let (client, mut agent, tunnel) = start();
        drop(client);
        assert_eq!(agent.read_frame().unwrap(), Some((ID, Message::End)));
        // Writing to the vanished client fails: the tunnel is over.
        agent.send(ID, &Message::Body(b"anyone?".to_vec())).unwrap();
        assert_eq!(tunnel.join().unwrap().0, Outcome::Aborted);
    }

    /// Regression: a 1 MiB WebSocket echo from a Node app stopped short of
    /// the client. The agent connection reads ahead; when the way to the
    /// client filled up, reading stopped with the app's last frames already
    /// out of the socket, and the tunnel polled the socket for them. It
    /// waited for good (later a stop-check interval per stall).
    #[test]
    fn frames_read_ahead_from_the_agent_are_relayed_without_waiting() {
        // Just over the limit in full frames, then a small one: the reads
        // that take the last full frame also take the small one.
        let mut from_agent = Vec::new();
        for i in 0..WAITING_LIMIT / MAX_BODY_CHUNK {
            encode_body_header(ID, MAX_BODY_CHUNK, &mut from_agent);
            from_agent.resize(from_agent.len() + MAX_BODY_CHUNK, i as u8);
        }
        Message::Body(b"tail".to_vec()).encode(ID, &mut from_agent);
        let ((mut client, mut agent, tunnel), idle_polls) = start_after(&[], &from_agent);
        let mut received = vec![0u8; WAITING_LIMIT + 4];
        client.read_exact(&mut received).unwrap();
        assert_eq!(
            idle_polls.load(Ordering::Relaxed),
            0,
            "the tunnel waited on a poll with the app's bytes in hand"
        );
        assert_eq!(&received[WAITING_LIMIT..], b"tail");
        agent.send(ID, &Message::End).unwrap();
        assert_eq!(tunnel.join().unwrap().0, Outcome::Done);
    }

    /// The same on the client's side: Apache's input filters keep what a
    /// socket read brings beyond the length asked for.
    #[test]
    fn bytes_read_ahead_from_the_client_are_relayed_without_waiting() {
        let from_client: Vec<u8> = (0..WAITING_LIMIT + 100).map(|i| (i % 251) as u8).collect();
        let ((client, mut agent, tunnel), idle_polls) = start_after(&from_client, &[]);
        let mut received = Vec::new();
        while received.len() < from_client.len() {
            match agent.read_frame().unwrap() {
                Some((ID, Message::Body(data))) => received.extend_from_slice(&data),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            idle_polls.load(Ordering::Relaxed),
            0,
            "the tunnel waited on a poll with the client's bytes in hand"
        );
        assert!(received == from_client, "the client's bytes differ");
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(agent.read_frame().unwrap(), Some((ID, Message::End)));
        agent.send(ID, &Message::End).unwrap();
        assert_eq!(tunnel.join().unwrap().0, Outcome::Done);
    }
}
