//! Logging for both processes.
//!
//! Library code only uses the `log` macros. Inside Apache, [`ApacheLogger`]
//! forwards each record to the shim's callback, which writes it with
//! `ap_log_error`. The agent's stderr is Apache's error log, so
//! [`init_agent`] formats records the way Apache does, which keeps the
//! log readable and lets the tests tell our lines apart.
//!
//! Every record's target is a stable code (`MP0101`) or a module path; the
//! code is printed first so a line can be recognised whatever its text.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};
use parking_lot::RwLock;

/// Where Apache-side records go: level (APLOG_*) and text. The FFI layer
/// wraps the shim's C callback in one.
pub type Sink = Box<dyn Fn(i32, &str) + Send + Sync>;

/// The current sink. A static is right here: the logger is process-wide by
/// the `log` crate's design, and the shim re-installs the sink after every
/// configuration load (the module may have been reloaded at a new address).
static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// A `log::Log` that forwards records to Apache's error log.
pub struct ApacheLogger;

static APACHE_LOGGER: ApacheLogger = ApacheLogger;

/// Installs (or re-points) the Apache logger.
pub fn init_apache(sink: Sink, max: LevelFilter) {
    *SINK.write() = Some(sink);
    // Fails only when already installed in this process, which is fine.
    let _ = log::set_logger(&APACHE_LOGGER);
    log::set_max_level(max);
}

/// The APLOG_* level for a `log` level.
fn apache_level(level: Level) -> i32 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 5,
        Level::Debug => 6,
        Level::Trace => 7,
    }
}

/// The text of a record: its stable code (when the target is one) first.
fn render(record: &Record) -> String {
    let target = record.target();
    if is_code(target) {
        format!("{target}: {}", record.args())
    } else {
        format!("{}", record.args())
    }
}

/// True for targets like `MP0101`.
fn is_code(target: &str) -> bool {
    target.len() == 6 && target.starts_with("MP") && target[2..].bytes().all(|b| b.is_ascii_digit())
}

impl Log for ApacheLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if let Some(sink) = SINK.read().as_ref() {
            sink(apache_level(record.level()), &render(record));
        }
    }

    fn flush(&self) {}
}

/// Sets up the agent's logging: Apache's error-log format on stderr.
pub fn init_agent(level: LevelFilter) {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level)
        .format(|out, record| {
            let level = match record.level() {
                Level::Error => "error",
                Level::Warn => "warn",
                Level::Info => "notice",
                Level::Debug => "info",
                Level::Trace => "debug",
            };
            writeln!(
                out,
                "[{}] [passenger:{level}] [pid {}] {}",
                apache_timestamp(),
                std::process::id(),
                render(record)
            )
        })
        .target(env_logger::Target::Stderr);
    let _ = builder.try_init();
}

/// Converts PassengerLogLevel (0 crit … 7 debug3) to a `log` filter.
pub fn level_filter(passenger_level: u32) -> LevelFilter {
    match passenger_level {
        0 | 1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 | 5 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// The current time as Apache prints it: `Sat Nov 28 06:40:00.123456 2026` (UTC).
fn apache_timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:02} {:02}:{:02}:{:02}.{:06} {}",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_micros(),
        year
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_420), (2025, 11, 28));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn codes_are_recognised() {
        assert!(is_code("MP0101"));
        assert!(!is_code("mod_passenger::pool"));
        assert!(!is_code("MP01"));
    }
}
