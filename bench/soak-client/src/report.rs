//! Counting outcomes (per connection thread, then merged) and the one-line
//! JSON summary.

use crate::client::{Cause, Kind, Mix, Outcome};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Per route: requests sent, answered correctly, retried, failed.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct RouteCounts {
    pub requests: u64,
    pub ok: u64,
    pub retried: u64,
    pub failed: u64,
}

#[derive(Debug)]
pub struct Stats {
    pub requests: u64,
    pub ok: u64,
    pub failed_by_kind: [u64; Kind::ALL.len()],
    pub retried: u64,
    pub retried_by_cause: [u64; Cause::ALL.len()],
    pub by_route: Vec<RouteCounts>,
    /// Microseconds, of every request that got a complete response.
    pub latencies_us: Vec<u64>,
    /// The first failure of each kind: when (since the start) and what.
    pub first_failures: [Option<(Duration, String)>; Kind::ALL.len()],
    /// Retries and failures per second since the start.
    pub retried_at: BTreeMap<u64, u64>,
    pub failed_at: BTreeMap<u64, u64>,
}

impl Stats {
    pub fn new(routes: usize) -> Stats {
        Stats {
            requests: 0,
            ok: 0,
            failed_by_kind: [0; Kind::ALL.len()],
            retried: 0,
            retried_by_cause: [0; Cause::ALL.len()],
            by_route: vec![RouteCounts::default(); routes],
            latencies_us: Vec::new(),
            first_failures: Default::default(),
            retried_at: BTreeMap::new(),
            failed_at: BTreeMap::new(),
        }
    }

    pub fn failed(&self) -> u64 {
        self.failed_by_kind.iter().sum()
    }

    /// Counts one request of route `route`, which ended `at` after the start.
    pub fn record(&mut self, route: usize, outcome: &Outcome, at: Duration) {
        self.requests += 1;
        let counts = &mut self.by_route[route];
        counts.requests += 1;
        if let Some(cause) = outcome.retried {
            self.retried += 1;
            self.retried_by_cause[cause.index()] += 1;
            counts.retried += 1;
            *self.retried_at.entry(at.as_secs()).or_default() += 1;
        }
        match &outcome.failure {
            None => {
                self.ok += 1;
                counts.ok += 1;
            }
            Some(f) => {
                counts.failed += 1;
                self.failed_by_kind[f.kind.index()] += 1;
                *self.failed_at.entry(at.as_secs()).or_default() += 1;
                let first = &mut self.first_failures[f.kind.index()];
                if first.is_none() {
                    *first = Some((at, f.text.clone()));
                }
            }
        }
        if let Some(latency) = outcome.latency {
            self.latencies_us.push(latency.as_micros() as u64);
        }
    }

    pub fn merge(&mut self, other: Stats) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.retried += other.retried;
        for (a, b) in self.failed_by_kind.iter_mut().zip(other.failed_by_kind) {
            *a += b;
        }
        for (a, b) in self.retried_by_cause.iter_mut().zip(other.retried_by_cause) {
            *a += b;
        }
        for (a, b) in self.by_route.iter_mut().zip(other.by_route) {
            a.requests += b.requests;
            a.ok += b.ok;
            a.retried += b.retried;
            a.failed += b.failed;
        }
        self.latencies_us.extend(other.latencies_us);
        for (a, b) in self.first_failures.iter_mut().zip(other.first_failures) {
            if let Some((at, text)) = b {
                if a.as_ref().is_none_or(|(mine, _)| at < *mine) {
                    *a = Some((at, text));
                }
            }
        }
        for (s, n) in other.retried_at {
            *self.retried_at.entry(s).or_default() += n;
        }
        for (s, n) in other.failed_at {
            *self.failed_at.entry(s).or_default() += n;
        }
    }
}

/// The nearest-rank percentile `p` (0..=100) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A JSON string literal.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn ms(us: Option<u64>) -> String {
    us.map_or("null".to_string(), |us| {
        format!("{:.3}", us as f64 / 1000.0)
    })
}

fn object<I: IntoIterator<Item = (String, String)>>(fields: I) -> String {
    let body: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{}: {v}", string(&k)))
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// What the run was, for the summary.
pub struct Run<'a> {
    pub mix: &'a str,
    pub connections: usize,
    pub duration_s: f64,
    pub elapsed: Duration,
}

/// The summary: one JSON object on one line.
pub fn json(run: &Run, mix: &Mix, stats: &mut Stats) -> String {
    stats.latencies_us.sort_unstable();
    let lat = &stats.latencies_us;
    let elapsed = run.elapsed.as_secs_f64();
    let rps = if elapsed > 0.0 {
        stats.requests as f64 / elapsed
    } else {
        0.0
    };
    let per_second =
        |m: &BTreeMap<u64, u64>| object(m.iter().map(|(s, n)| (s.to_string(), n.to_string())));
    let fields: Vec<(String, String)> = vec![
        ("mix".into(), string(run.mix)),
        ("connections".into(), run.connections.to_string()),
        ("duration_s".into(), format!("{}", run.duration_s)),
        ("elapsed_s".into(), format!("{elapsed:.3}")),
        ("requests".into(), stats.requests.to_string()),
        ("ok".into(), stats.ok.to_string()),
        ("failed".into(), stats.failed().to_string()),
        (
            "failed_by_kind".into(),
            object(Kind::ALL.iter().map(|k| {
                (
                    k.name().to_string(),
                    stats.failed_by_kind[k.index()].to_string(),
                )
            })),
        ),
        ("retried".into(), stats.retried.to_string()),
        (
            "retried_by_cause".into(),
            object(Cause::ALL.iter().map(|c| {
                (
                    c.name().to_string(),
                    stats.retried_by_cause[c.index()].to_string(),
                )
            })),
        ),
        (
            "by_route".into(),
            object(mix.routes.iter().zip(&stats.by_route).map(|(r, c)| {
                (
                    r.name.to_string(),
                    object([
                        ("requests".to_string(), c.requests.to_string()),
                        ("ok".to_string(), c.ok.to_string()),
                        ("retried".to_string(), c.retried.to_string()),
                        ("failed".to_string(), c.failed.to_string()),
                    ]),
                )
            })),
        ),
        ("rps".into(), format!("{rps:.1}")),
        ("p50_ms".into(), ms(percentile(lat, 50.0))),
        ("p99_ms".into(), ms(percentile(lat, 99.0))),
        ("max_ms".into(), ms(lat.last().copied())),
        ("retried_at_s".into(), per_second(&stats.retried_at)),
        ("failed_at_s".into(), per_second(&stats.failed_at)),
        (
            "first_failures".into(),
            object(Kind::ALL.iter().filter_map(|k| {
                stats.first_failures[k.index()].as_ref().map(|(at, text)| {
                    (
                        k.name().to_string(),
                        string(&format!("at {:.1} s: {text}", at.as_secs_f64())),
                    )
                })
            })),
        ),
    ];
    object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Failure;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(string("plain"), r#""plain""#);
        assert_eq!(
            string("a\"b\\c\nd\te\u{1}f\u{7f}"),
            r#""a\"b\\c\nd\te\u0001f\u007f""#
        );
        assert_eq!(string("héllo"), "\"héllo\"");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn counts_merge_and_render() {
        let mix = Mix::static_files("127.0.0.1:1");
        let ok = Outcome {
            failure: None,
            retried: None,
            latency: Some(Duration::from_millis(2)),
        };
        let retried = Outcome {
            failure: None,
            retried: Some(Cause::Reset),
            latency: Some(Duration::from_millis(4)),
        };
        let failed = |text: &str| Outcome {
            failure: Some(Failure {
                kind: Kind::Status,
                text: text.into(),
            }),
            retried: None,
            latency: Some(Duration::from_millis(1)),
        };
        let mut a = Stats::new(2);
        a.record(0, &ok, Duration::from_secs(1));
        a.record(1, &retried, Duration::from_millis(20_500));
        a.record(0, &failed("late"), Duration::from_secs(30));
        let mut b = Stats::new(2);
        b.record(0, &failed("early \"one\""), Duration::from_secs(3));
        a.merge(b);
        assert_eq!((a.requests, a.ok, a.failed(), a.retried), (4, 2, 2, 1));
        assert_eq!(
            a.by_route[0],
            RouteCounts {
                requests: 3,
                ok: 1,
                retried: 0,
                failed: 2
            }
        );
        let run = Run {
            mix: "static",
            connections: 2,
            duration_s: 1.0,
            elapsed: Duration::from_secs(2),
        };
        let line = json(&run, &mix, &mut a);
        assert!(line.starts_with(r#"{"mix": "static", "connections": 2, "duration_s": 1, "elapsed_s": 2.000, "requests": 4, "ok": 2, "failed": 2, "failed_by_kind": {"connect": 0, "status": 2,"#), "{line}");
        assert!(line.contains(r#""retried": 1, "retried_by_cause": {"end_of_stream": 0, "reset": 1, "write_failed": 0}"#));
        assert!(
            line.contains(r#""GET /big.bin": {"requests": 1, "ok": 1, "retried": 1, "failed": 0}"#)
        );
        assert!(
            line.contains(r#""rps": 2.0, "p50_ms": 1.000, "p99_ms": 4.000, "max_ms": 4.000"#),
            "{line}"
        );
        assert!(line.contains(r#""retried_at_s": {"20": 1}, "failed_at_s": {"3": 1, "30": 1}"#));
        assert!(
            line.ends_with(r#""first_failures": {"status": "at 3.0 s: early \"one\""}}"#),
            "{line}"
        );
    }
}
