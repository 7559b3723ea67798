//! `soak-client`: the load generator of the soak run (`make bench SOAK=1`,
//! `bench/bench.py soak`).
//!
//! It keeps N HTTP/1.1 keep-alive connections busy against a server on the
//! loopback interface for a fixed time, each connection on its own thread,
//! sending a fixed mix of requests and checking every response's status and
//! body. Unlike wrk, it behaves like a real HTTP client when the server
//! closes an idle keep-alive connection just as the next request is sent on
//! it, which Apache's event MPM does to every idle keep-alive connection of
//! a child that a graceful restart retires.
//!
//! # The retry rule
//!
//! A request sent on a *reused* connection (one that has already carried at
//! least one complete response) that is closed or reset before any byte of
//! the response arrives (end of stream, ECONNRESET, or EPIPE while writing)
//! was never answered, and cannot have been read by a server that had
//! closed the connection. RFC 9112 §9.3.1 ("Retrying Requests") lets a
//! client send it again on a new connection, and curl, browsers and Go's
//! net/http do so. This client does the same, once: the request counts as
//! `retried`, and its outcome is that of the second attempt; if that one
//! fails too, the request fails. Nothing else is retried: a close on a new
//! connection, a close in the middle of a response, a timeout, a non-2xx
//! status or a wrong body is a failed request.
//!
//! # Output
//!
//! Progress every 10 s on stderr, then exactly one line `SOAK {json}` on
//! stdout: requests, ok, failed, failed_by_kind (connect, status, body,
//! timeout, closed_mid_response, closed_before_response, protocol), retried
//! (and retried_by_cause), by_route, rps, p50_ms / p99_ms / max_ms (from the
//! first byte written to the last byte read, a retry included, over the
//! requests that got a complete response), retries and failures per second
//! since the start, and the first failure of each kind as text. `ok +
//! failed = requests`; retried requests are counted in `ok` or `failed` by
//! their second attempt. The exit status is 0 when no request failed, 1
//! otherwise, 2 for bad arguments.
//!
//! # Mixes
//!
//! `--mix app` (bench/apps/soak-*), per 10 requests: 7 `GET /` → `hello`,
//! 1 `GET /big` → 1 MiB of `x`, 1 `GET /slow` → `slow` (after 200 ms),
//! 1 `POST /echo` with a 100 KiB body → `echo 102400`. `--mix static`
//! (Apache alone serving bench/apps/static and a generated `big.bin`):
//! 9 `GET /hello.txt` → `hello\n`, 1 `GET /big.bin` → 1 MiB of `x`.
//! Connection i starts at position i of the rotation, so the connections
//! do not all send the same request at the same time.

#![forbid(unsafe_code)]

mod client;
mod http;
mod report;

use client::{Kind, Mix};
use report::Stats;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: soak-client --url http://127.0.0.1:PORT [--connections N] [--duration SECONDS]
                   [--timeout SECONDS] [--mix app|static]
  --url          the server, on a loopback address only (127.0.0.0/8, [::1], localhost)
  --connections  keep-alive connections, one thread each (default 64)
  --duration     seconds to send requests for (default 60)
  --timeout      seconds per request, a retry included (default 10)
  --mix          app: the soak apps' routes; static: Apache's static files (default app)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MixName {
    App,
    Static,
}

#[derive(Debug)]
struct Options {
    addr: SocketAddr,
    /// The Host header: the URL's authority as given.
    host: String,
    connections: usize,
    duration: Duration,
    timeout: Duration,
    mix: MixName,
}

/// `http://HOST:PORT[/]` with a loopback HOST → (address, Host header).
fn parse_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !(path.is_empty() || path == "/") {
        return Err(format!("{url}: no path, please: the mix chooses the paths"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url}: unclosed ["))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| format!("{url}: the host must be a loopback address, not {host:?}"))?
    };
    if !ip.is_loopback() {
        return Err(format!("{url}: refusing {ip}: only loopback addresses"));
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{url}: bad port {p:?}"))?,
    };
    Ok((SocketAddr::new(ip, port), authority.to_string()))
}

fn seconds(name: &str, value: &str) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{name}: not a number of seconds between 0 and 86400: {value:?}"
        )),
    }
}

/// The options, or None for --help.
fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut url = None;
    let mut connections = 64;
    let mut duration = Duration::from_secs(60);
    let mut timeout = Duration::from_secs(10);
    let mut mix = MixName::App;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        if !["--url", "--connections", "--duration", "--timeout", "--mix"].contains(&name) {
            return Err(format!("unknown argument {arg:?}"));
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))?,
        };
        match name {
            "--url" => url = Some(parse_url(&value)?),
            "--connections" => {
                connections = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=4096).contains(n))
                    .ok_or_else(|| {
                        format!("--connections: not a number from 1 to 4096: {value:?}")
                    })?
            }
            "--duration" => duration = seconds(name, &value)?,
            "--timeout" => timeout = seconds(name, &value)?,
            _ => {
                mix = match value.as_str() {
                    "app" => MixName::App,
                    "static" => MixName::Static,
                    _ => return Err(format!("--mix: app or static, not {value:?}")),
                }
            }
        }
    }
    let (addr, host) = url.ok_or("--url is required")?;
    Ok(Some(Options {
        addr,
        host,
        connections,
        duration,
        timeout,
        mix,
    }))
}

/// Totals so far, for the progress lines.
#[derive(Default)]
struct Progress {
    requests: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
}

/// One connection's loop: requests until `stop`, starting at position `id`
/// of the rotation.
fn connection(
    id: usize,
    opts: &Options,
    mix: &Mix,
    start: Instant,
    stop: Instant,
    progress: &Progress,
) -> Stats {
    let mut stats = Stats::new(mix.routes.len());
    let mut conn = None;
    let mut next = id % mix.rotation.len();
    while Instant::now() < stop {
        let route = mix.rotation[next];
        next = (next + 1) % mix.rotation.len();
        let outcome = client::run_request(&mut conn, opts.addr, &mix.routes[route], opts.timeout);
        stats.record(route, &outcome, start.elapsed());
        progress.requests.fetch_add(1, Ordering::Relaxed);
        if outcome.retried.is_some() {
            progress.retried.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(f) = &outcome.failure {
            progress.failed.fetch_add(1, Ordering::Relaxed);
            if f.kind == Kind::Connect {
                // Not a tight loop against a server that is not there.
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
    stats
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(Some(opts)) => Arc::new(opts),
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("soak-client: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (mix_name, mix) = match opts.mix {
        MixName::App => ("app", Mix::app(&opts.host)),
        MixName::Static => ("static", Mix::static_files(&opts.host)),
    };
    let mix = Arc::new(mix);
    let progress = Arc::new(Progress::default());
    let start = Instant::now();
    let stop = start + opts.duration;
    let mut threads = Vec::with_capacity(opts.connections);
    for id in 0..opts.connections {
        let (opts, mix, progress) = (Arc::clone(&opts), Arc::clone(&mix), Arc::clone(&progress));
        let spawned = thread::Builder::new()
            .name(format!("conn-{id}"))
            .spawn(move || connection(id, &opts, &mix, start, stop, &progress));
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                eprintln!("soak-client: cannot start connection thread {id}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let mut next_report = start + Duration::from_secs(10);
    while Instant::now() < stop {
        thread::sleep(Duration::from_millis(200));
        if Instant::now() >= next_report {
            eprintln!(
                "soak-client: {:.0} s: {} requests, {} retried after a keep-alive close, {} failed",
                start.elapsed().as_secs_f64(),
                progress.requests.load(Ordering::Relaxed),
                progress.retried.load(Ordering::Relaxed),
                progress.failed.load(Ordering::Relaxed)
            );
            next_report += Duration::from_secs(10);
        }
    }
    let mut stats = Stats::new(mix.routes.len());
    for handle in threads {
        match handle.join() {
            Ok(s) => stats.merge(s),
            Err(_) => {
                eprintln!("soak-client: a connection thread panicked");
                return ExitCode::from(3);
            }
        }
    }
    let run = report::Run {
        mix: mix_name,
        connections: opts.connections,
        duration_s: opts.duration.as_secs_f64(),
        elapsed: start.elapsed(),
    };
    println!("SOAK {}", report::json(&run, &mix, &mut stats));
    if stats.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn loopback_urls_only() {
        let (addr, host) = parse_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (addr.to_string(), host.as_str()),
            ("127.0.0.1:8080".into(), "127.0.0.1:8080")
        );
        assert_eq!(
            parse_url("http://127.1.2.3:80/").unwrap().0.to_string(),
            "127.1.2.3:80"
        );
        assert_eq!(
            parse_url("http://[::1]:81").unwrap().0.to_string(),
            "[::1]:81"
        );
        assert_eq!(
            parse_url("http://localhost").unwrap().0.to_string(),
            "127.0.0.1:80"
        );
        for bad in [
            "http://10.0.0.1:80",
            "http://192.168.1.1",
            "http://example.com:80",
            "http://[2001:db8::1]:80",
            "http://0.0.0.0:80",
            "https://127.0.0.1:443",
            "127.0.0.1:80",
            "http://127.0.0.1:80/path",
            "http://user@127.0.0.1:80",
            "http://127.0.0.1:0",
            "http://127.0.0.1:http",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arguments() {
        let o = parse_args(&args(&[
            "--url",
            "http://127.0.0.1:9",
            "--connections=3",
            "--duration",
            "1.5",
            "--mix",
            "static",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (o.connections, o.duration, o.timeout, o.mix),
            (
                3,
                Duration::from_millis(1500),
                Duration::from_secs(10),
                MixName::Static
            )
        );
        assert!(parse_args(&args(&["--help"])).unwrap().is_none());
        assert!(parse_args(&args(&[])).is_err());
        assert!(parse_args(&args(&[
            "--url",
            "http://127.0.0.1:9",
            "--connections",
            "0"
        ]))
        .is_err());
        assert!(parse_args(&args(&["--url", "http://127.0.0.1:9", "--timeout", "-1"])).is_err());
        assert!(parse_args(&args(&["--url", "http://127.0.0.1:9", "--mix", "other"])).is_err());
        assert!(parse_args(&args(&["--url", "http://127.0.0.1:9", "--verbose"])).is_err());
        assert!(parse_args(&args(&["--url"])).is_err());
    }
}
