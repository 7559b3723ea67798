//! PassengerPreStart: after a configuration arrives, each listed URL gets
//! one request through Apache, as the original does, so the app spawns with
//! all of Apache's configuration for it. The request goes to 127.0.0.1 on
//! the URL's port (never to another host), with the URL's host name in
//! `Host`; it is retried for a while because Apache may not accept
//! connections yet when the agent is configured.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long a pre-start request keeps trying.
const PATIENCE: Duration = Duration::from_secs(30);

/// Sends the pre-start requests in the background.
pub fn start(urls: &[String]) {
    for url in urls {
        let Some((host, port, path)) = parse(url) else {
            log::warn!(target: "MP0901", "PassengerPreStart {url}: not an http:// URL with a host");
            continue;
        };
        let url = url.clone();
        let spawned = std::thread::Builder::new()
            .name("prestart".into())
            .spawn(move || {
                let _thread = crate::trace::register_thread(format!("pre-start {url}"));
                match request(&host, port, &path) {
                    Ok(status) => log::info!(target: "MP0902", "pre-started {url}: HTTP {status}"),
                    Err(e) => log::warn!(target: "MP0901", "PassengerPreStart {url}: {e}"),
                }
            });
        if let Err(e) = spawned {
            log::warn!(target: "MP0901", "cannot start a pre-start thread: {e}");
        }
    }
}

/// Splits `http://host[:port]/path` (https → port 443 by default).
fn parse(url: &str) -> Option<(String, u16, String)> {
    let (default_port, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (80, rest)
    } else {
        (443, url.strip_prefix("https://")?)
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None => (authority, default_port),
    };
    (!host.is_empty()).then(|| (host.to_owned(), port, path))
}

/// One HEAD request to 127.0.0.1:`port`, retried until Apache answers.
fn request(host: &str, port: u16, path: &str) -> Result<u16, String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match try_request(host, port, path) {
            Ok(status) => return Ok(status),
            Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn try_request(host: &str, port: u16, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "HEAD {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mod_passenger pre-start\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    std::str::from_utf8(&head[..n])
        .ok()
        .and_then(|text| text.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status in the answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split() {
        assert_eq!(
            parse("http://example.com/"),
            Some(("example.com".into(), 80, "/".into()))
        );
        assert_eq!(
            parse("http://a.b:8080/x/y"),
            Some(("a.b".into(), 8080, "/x/y".into()))
        );
        assert_eq!(
            parse("https://u:p@a.b"),
            Some(("a.b".into(), 443, "/".into()))
        );
        assert_eq!(parse("ftp://a.b/"), None);
        assert_eq!(parse("http://:80/"), None);
    }
}
