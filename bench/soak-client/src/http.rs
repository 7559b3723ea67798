//! HTTP/1.1 on a byte stream: a request as bytes, and a response read and
//! framed by its status, `Transfer-Encoding: chunked`, `Content-Length` or
//! the end of the connection (RFC 9112 §6.3).

use std::io::{self, Read};

/// Longest status, header or chunk-size line accepted.
const MAX_LINE: usize = 16 * 1024;
/// Most header (or trailer) fields accepted in one response.
const MAX_HEADERS: usize = 128;
/// Largest body accepted; the soak's largest is 1 MiB.
pub const MAX_BODY: u64 = 64 * 1024 * 1024;

/// A request with an optional body of the given content type. It has no
/// `Connection` header: an HTTP/1.1 connection stays open by default.
pub fn request(method: &str, path: &str, host: &str, body: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: soak-client\r\n");
    if let Some((content_type, data)) = body {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            data.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if let Some((_, data)) = body {
        bytes.extend_from_slice(data);
    }
    bytes
}

/// A complete response (interim 1xx responses are skipped).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Field names in lower case, values without surrounding blanks.
    #[cfg_attr(not(test), allow(dead_code))]
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The connection cannot carry another request: `Connection: close`, an
    /// HTTP/1.0 response without keep-alive, or a body ended by the close.
    pub close: bool,
}

impl Response {
    /// The first value of a header field.
    #[cfg(test)]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why no complete response could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The connection ended: `eof` for an orderly end of stream, otherwise
    /// an error such as a reset (`how` says which). `received` counts the
    /// bytes of this response that had arrived before.
    Closed {
        received: u64,
        eof: bool,
        how: String,
    },
    /// The read timeout (the request's deadline) passed.
    Timeout { received: u64 },
    /// Not an HTTP/1.x response, or not one this reader accepts.
    Protocol(String),
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A buffered reader that counts the bytes received for the response being
/// read, so that a close can be told apart: before any byte of the response,
/// or in the middle of it.
pub struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    received: u64,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            buf: vec![0; 64 * 1024],
            pos: 0,
            end: 0,
            received: 0,
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads more into the (empty) buffer.
    fn fill(&mut self) -> Result<(), ReadError> {
        debug_assert_eq!(self.pos, self.end);
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(0) => {
                    return Err(ReadError::Closed {
                        received: self.received,
                        eof: true,
                        how: "end of stream".to_string(),
                    })
                }
                Ok(n) => {
                    self.pos = 0;
                    self.end = n;
                    self.received += n as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => {
                    return Err(ReadError::Timeout {
                        received: self.received,
                    })
                }
                Err(e) => {
                    return Err(ReadError::Closed {
                        received: self.received,
                        eof: false,
                        how: e.to_string(),
                    })
                }
            }
        }
    }

    /// One line, without its LF or CRLF.
    fn line(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut line = Vec::new();
        loop {
            if self.pos == self.end {
                self.fill()?;
            }
            let avail = &self.buf[self.pos..self.end];
            let found = avail.iter().position(|&b| b == b'\n');
            let take = found.map_or(avail.len(), |i| i);
            line.extend_from_slice(&avail[..take]);
            self.pos += found.map_or(take, |i| i + 1);
            if line.len() > MAX_LINE {
                return Err(ReadError::Protocol(format!(
                    "a line longer than {MAX_LINE} bytes: {}",
                    snippet(&line)
                )));
            }
            if found.is_some() {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
        }
    }

    /// Exactly `n` bytes, appended to `out`.
    fn take(&mut self, mut n: u64, out: &mut Vec<u8>) -> Result<(), ReadError> {
        while n > 0 {
            if self.pos == self.end {
                self.fill()?;
            }
            let k = n.min((self.end - self.pos) as u64) as usize;
            out.extend_from_slice(&self.buf[self.pos..self.pos + k]);
            self.pos += k;
            n -= k as u64;
        }
        Ok(())
    }

    /// Everything up to the end of the stream, appended to `out`.
    fn rest(&mut self, out: &mut Vec<u8>) -> Result<(), ReadError> {
        loop {
            out.extend_from_slice(&self.buf[self.pos..self.end]);
            self.pos = self.end;
            if out.len() as u64 > MAX_BODY {
                return Err(ReadError::Protocol(format!(
                    "a body larger than {MAX_BODY} bytes"
                )));
            }
            match self.fill() {
                Ok(()) => {}
                Err(ReadError::Closed { eof: true, .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads one response. Bytes already buffered (sent by the server before it
/// was asked) count as received for it.
pub fn read_response<R: Read>(r: &mut Reader<R>) -> Result<Response, ReadError> {
    r.received = (r.end - r.pos) as u64;
    loop {
        let line = r.line()?;
        let (minor, status) = status_line(&line)?;
        let headers = fields(r)?;
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(ReadError::Protocol(
                    "101 Switching Protocols, but no upgrade was asked for".into(),
                ));
            }
            continue; // an interim response; the final one follows
        }
        let connection = tokens(&headers, "connection");
        let mut close = connection.iter().any(|t| t == "close")
            || (minor == 0 && !connection.iter().any(|t| t == "keep-alive"));
        let mut body = Vec::new();
        let coding = tokens(&headers, "transfer-encoding");
        if status == 204 || status == 304 {
            // No body, whatever the header fields say.
        } else if !coding.is_empty() {
            if coding.last().map(String::as_str) == Some("chunked") {
                chunked(r, &mut body)?;
            } else {
                r.rest(&mut body)?;
                close = true;
            }
        } else if let Some(length) = content_length(&headers)? {
            if length > MAX_BODY {
                return Err(ReadError::Protocol(format!(
                    "Content-Length {length} is larger than {MAX_BODY}"
                )));
            }
            body.reserve(length as usize);
            r.take(length, &mut body)?;
        } else {
            r.rest(&mut body)?;
            close = true;
        }
        return Ok(Response {
            status,
            headers,
            body,
            close,
        });
    }
}

/// `HTTP/1.x NNN reason` → (x, NNN).
fn status_line(line: &[u8]) -> Result<(u8, u16), ReadError> {
    let bad = || ReadError::Protocol(format!("not an HTTP/1.x status line: {}", snippet(line)));
    if line.len() < 12 || !line.starts_with(b"HTTP/1.") || line[8] != b' ' {
        return Err(bad());
    }
    let minor = match line[7] {
        b'0' => 0,
        b'1' => 1,
        _ => return Err(bad()),
    };
    let code = &line[9..12];
    if !code.iter().all(u8::is_ascii_digit) || (line.len() > 12 && line[12] != b' ') {
        return Err(bad());
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&status) {
        return Err(bad());
    }
    Ok((minor, status))
}

/// Header (or trailer) fields up to the empty line.
fn fields<R: Read>(r: &mut Reader<R>) -> Result<Vec<(String, String)>, ReadError> {
    let mut out = Vec::new();
    loop {
        let line = r.line()?;
        if line.is_empty() {
            return Ok(out);
        }
        if out.len() >= MAX_HEADERS {
            return Err(ReadError::Protocol(format!(
                "more than {MAX_HEADERS} header fields"
            )));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(ReadError::Protocol(format!(
                "a folded header line: {}",
                snippet(&line)
            )));
        }
        let colon = line.iter().position(|&b| b == b':');
        let name = colon.map(|i| &line[..i]).unwrap_or(&[]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ReadError::Protocol(format!(
                "not a header field: {}",
                snippet(&line)
            )));
        }
        let value = trim(&line[name.len() + 1..]);
        out.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
}

/// The comma-separated elements of every value of a field, in lower case.
fn tokens(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The Content-Length, if any; differing or malformed values are an error.
fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, ReadError> {
    let mut length = None;
    for (name, value) in headers.iter().filter(|(n, _)| n == "content-length") {
        for part in value.split(',') {
            let part = part.trim();
            let n =
                if !part.is_empty() && part.len() <= 18 && part.bytes().all(|b| b.is_ascii_digit())
                {
                    part.parse::<u64>().ok()
                } else {
                    None
                };
            match (n, length) {
                (None, _) => return Err(ReadError::Protocol(format!("bad {name}: {value:?}"))),
                (Some(n), Some(m)) if n != m => {
                    return Err(ReadError::Protocol(format!(
                        "conflicting Content-Length values {m} and {n}"
                    )))
                }
                (Some(n), _) => length = Some(n),
            }
        }
    }
    Ok(length)
}

/// A chunked body (RFC 9112 §7.1), trailers read and dropped.
fn chunked<R: Read>(r: &mut Reader<R>, body: &mut Vec<u8>) -> Result<(), ReadError> {
    loop {
        let line = r.line()?;
        let size = trim(line.split(|&b| b == b';').next().unwrap_or(&[]));
        if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(ReadError::Protocol(format!(
                "not a chunk-size line: {}",
                snippet(&line)
            )));
        }
        let size = u64::from_str_radix(std::str::from_utf8(size).unwrap_or("0"), 16).unwrap_or(0);
        if size == 0 {
            fields(r)?;
            return Ok(());
        }
        if body.len() as u64 + size > MAX_BODY {
            return Err(ReadError::Protocol(format!(
                "a body larger than {MAX_BODY} bytes"
            )));
        }
        r.take(size, body)?;
        let end = r.line()?;
        if !end.is_empty() {
            return Err(ReadError::Protocol(format!(
                "chunk data not followed by CRLF: {}",
                snippet(&end)
            )));
        }
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The first bytes of `data`, printable, quoted, for failure texts.
pub fn snippet(data: &[u8]) -> String {
    const MAX: usize = 60;
    let mut out = String::from("\"");
    for &b in data.iter().take(MAX) {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    if data.len() > MAX {
        out.push_str(&format!("... ({} bytes)", data.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream that hands out at most `step` bytes per read, then `end`.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
        end: Option<io::ErrorKind>,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                return match self.end {
                    Some(kind) => Err(io::Error::new(kind, "trickle")),
                    None => Ok(0),
                };
            }
            let n = self.step.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn reader(data: &[u8]) -> Reader<Cursor<Vec<u8>>> {
        Reader::new(Cursor::new(data.to_vec()))
    }

    fn trickle(data: &[u8], step: usize, end: Option<io::ErrorKind>) -> Reader<Trickle> {
        Reader::new(Trickle {
            data: data.to_vec(),
            at: 0,
            step,
            end,
        })
    }

    fn protocol<R: Read>(r: &mut Reader<R>) -> String {
        match read_response(r) {
            Err(ReadError::Protocol(text)) => text,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn request_bytes() {
        let get = request("GET", "/", "127.0.0.1:8080", None);
        assert_eq!(
            get,
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: soak-client\r\n\r\n"
        );
        let post = request("POST", "/echo", "h", Some(("text/plain", b"abc")));
        assert!(post.ends_with(b"Content-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc"));
    }

    #[test]
    fn content_length_bodies_back_to_back() {
        let mut r = reader(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello\
              HTTP/1.1 404 Not Found\r\ncontent-length:  3 \r\n\r\nnop",
        );
        let a = read_response(&mut r).unwrap();
        assert_eq!(
            (a.status, a.body.as_slice(), a.close),
            (200, &b"hello"[..], false)
        );
        assert_eq!(a.header("content-type"), Some("text/plain"));
        let b = read_response(&mut r).unwrap();
        assert_eq!(
            (b.status, b.body.as_slice(), b.close),
            (404, &b"nop"[..], false)
        );
        // Nothing more: an orderly end before any byte of a third response.
        assert_eq!(
            read_response(&mut r).unwrap_err(),
            ReadError::Closed {
                received: 0,
                eof: true,
                how: "end of stream".into()
            }
        );
    }

    #[test]
    fn one_byte_at_a_time() {
        let big = vec![b'x'; 100_000];
        let mut data =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
        data.extend_from_slice(&big);
        data.extend_from_slice(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"); // bare LFs
        let mut r = trickle(&data, 1, None);
        assert_eq!(read_response(&mut r).unwrap().body, big);
        assert_eq!(read_response(&mut r).unwrap().body, b"ok");
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                     5;name=value\r\nhello\r\n1 \r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: yes\r\n\r\n\
                     HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n";
        for step in [1, 7, 1 << 16] {
            let mut r = trickle(data, step, None);
            let a = read_response(&mut r).unwrap();
            assert_eq!((a.body.as_slice(), a.close), (&b"hello world!"[..], false));
            assert_eq!(read_response(&mut r).unwrap().body, b"0123456789");
        }
    }

    #[test]
    fn chunked_wins_over_content_length() {
        let mut r = reader(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n");
        assert_eq!(read_response(&mut r).unwrap().body, b"ab");
    }

    #[test]
    fn connection_close_and_http_1_0() {
        let mut r = reader(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok",
        );
        assert!(read_response(&mut r).unwrap().close);
        let mut r = reader(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert!(read_response(&mut r).unwrap().close);
        let mut r =
            reader(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok");
        assert!(!read_response(&mut r).unwrap().close);
    }

    #[test]
    fn body_delimited_by_the_close() {
        let mut r = reader(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end");
        let a = read_response(&mut r).unwrap();
        assert_eq!((a.body.as_slice(), a.close), (&b"until the end"[..], true));
        // A reset instead of an orderly end is not a complete body.
        let mut r = trickle(
            b"HTTP/1.1 200 OK\r\n\r\npartial",
            100,
            Some(io::ErrorKind::ConnectionReset),
        );
        assert!(matches!(
            read_response(&mut r),
            Err(ReadError::Closed {
                received: 26,
                eof: false,
                ..
            })
        ));
    }

    #[test]
    fn no_body_for_204_and_304() {
        let mut r = reader(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\n");
        assert_eq!(read_response(&mut r).unwrap().body, b"");
        assert_eq!(read_response(&mut r).unwrap().status, 304);
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut r = reader(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(read_response(&mut r).unwrap().status, 201);
    }

    #[test]
    fn closed_before_and_in_the_middle() {
        let mut r = trickle(b"", 1, Some(io::ErrorKind::ConnectionReset));
        assert!(matches!(
            read_response(&mut r),
            Err(ReadError::Closed {
                received: 0,
                eof: false,
                ..
            })
        ));
        let mut r = reader(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello");
        assert!(matches!(
            read_response(&mut r),
            Err(ReadError::Closed {
                received: 44,
                eof: true,
                ..
            })
        ));
        let mut r = reader(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
        assert!(matches!(
            read_response(&mut r),
            Err(ReadError::Closed { eof: true, .. })
        ));
        let mut r = reader(b"HTTP/1.1 200");
        assert!(matches!(
            read_response(&mut r),
            Err(ReadError::Closed { received: 12, .. })
        ));
    }

    #[test]
    fn timeouts_count_what_arrived() {
        let mut r = trickle(b"HTTP/1.1 200 OK\r\n", 4, Some(io::ErrorKind::WouldBlock));
        assert_eq!(
            read_response(&mut r).unwrap_err(),
            ReadError::Timeout { received: 17 }
        );
        let mut r = trickle(b"", 4, Some(io::ErrorKind::TimedOut));
        assert_eq!(
            read_response(&mut r).unwrap_err(),
            ReadError::Timeout { received: 0 }
        );
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for bad in [
            &b"<html>hello</html>\r\n\r\n"[..],
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 700 Odd\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            let text = protocol(&mut reader(bad));
            assert!(!text.is_empty(), "{bad:?}");
        }
        let text = protocol(&mut reader(b"\x00\xffjunk\"\r\n"));
        assert_eq!(text, r#"not an HTTP/1.x status line: "\x00\xffjunk\"""#);
        let long = vec![b'a'; MAX_LINE + 10];
        assert!(protocol(&mut reader(&long)).starts_with("a line longer than"));
        // Equal repeated Content-Length values are accepted.
        let mut r =
            reader(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(read_response(&mut r).unwrap().body, b"ok");
    }
}
