//! `passenger-status`: what the agent of an Apache instance is running.
//!
//! ```text
//! passenger-status [--show=pool|xml|json|requests|backtraces] [--instance-registry-dir DIR] [INSTANCE]
//! ```
//!
//! Finds the instance directories under the registry directory (the
//! option, else `PASSENGER_INSTANCE_REGISTRY_DIR`, else the default of
//! [`crate::instance::default_registry_dir`]), connects to the status
//! socket of the one agent there (or the one named, when several Apaches
//! run), asks for its status over the frame protocol (`HELLO` as a status
//! tool, then `STATUS`) and
//! prints it: `--show=pool` (the default) in the layout of the original's
//! `passenger-status`, `--show=xml` as the original's `pool.xml` (the
//! elements monitoring tools read; reference §8.5), `--show=json` as the
//! agent's document, `--show=requests` (or `--show=server`, as the
//! original names it) the requests in flight as JSON, in the shape of the
//! original's `server.json` (reference §8.6), `--show=backtraces` what
//! each of the agent's threads is doing (see [`crate::trace`]; a hook
//! script that hangs shows as the `run_single_hook_script` it waits in).
//! Anyone may ask: root sees every app, other users the apps (and
//! requests) that run as themselves; the threads are for root and the
//! agent's user only.

use std::fmt::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::instance;
use crate::protocol::{Connection, Message, Role};

/// What to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Show {
    /// The human-readable pool overview.
    Pool,
    /// The original's `pool.xml`.
    Xml,
    /// The agent's status document.
    Json,
    /// The requests in flight.
    Requests,
    /// What the agent's threads are doing.
    Backtraces,
}

/// The parsed command line.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    show: Show,
    registry: Option<PathBuf>,
    instance: Option<String>,
}

const USAGE: &str = "usage: passenger-status [--show=pool|xml|json|requests|backtraces] [--instance-registry-dir DIR] [INSTANCE]";

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args {
        show: Show::Pool,
        registry: None,
        instance: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if let Some(what) = arg.strip_prefix("--show=") {
            parsed.show = match what {
                "pool" => Show::Pool,
                "xml" => Show::Xml,
                "json" => Show::Json,
                "requests" | "server" => Show::Requests,
                "backtraces" => Show::Backtraces,
                other => {
                    return Err(format!(
                        "--show={other} is not supported: use --show=pool, --show=xml, --show=json, --show=requests or --show=backtraces"
                    ));
                }
            };
        } else if arg == "--instance-registry-dir" {
            let dir = args
                .next()
                .ok_or("--instance-registry-dir needs a directory")?;
            parsed.registry = Some(PathBuf::from(dir));
        } else if let Some(dir) = arg.strip_prefix("--instance-registry-dir=") {
            parsed.registry = Some(PathBuf::from(dir));
        } else if arg.starts_with('-') || parsed.instance.is_some() {
            return Err(format!("unexpected argument {arg:?}\n{USAGE}"));
        } else {
            parsed.instance = Some(arg.clone());
        }
    }
    Ok(parsed)
}

/// Runs the tool; returns the exit status (0, 1 on an error, 2 on a usage error).
pub fn main(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return 0;
    }
    let args = match parse_args(args) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return 2;
        }
    };
    let registry = args.registry.clone().unwrap_or_else(|| {
        std::env::var_os("PASSENGER_INSTANCE_REGISTRY_DIR")
            .filter(|dir| !dir.is_empty())
            .map_or_else(
                || instance::default_registry_dir(nix::unistd::geteuid().as_raw()),
                PathBuf::from,
            )
    });
    let result = pick_instance(&registry, args.instance.as_deref())
        .and_then(|dir| query(&dir, args.show).map(|doc| (dir, doc)));
    match result {
        Ok((_, doc)) => {
            match args.show {
                Show::Pool => print!("{}", format_pool(&doc, &now_text())),
                Show::Xml => print!("{}", format_xml(&doc, unix_micros())),
                Show::Json | Show::Requests => println!("{doc:#}"),
                Show::Backtraces => match doc["error"].as_str() {
                    Some(refused) => {
                        eprintln!("passenger-status: {refused}");
                        return 1;
                    }
                    None => print!("{}", format_backtraces(&doc)),
                },
            }
            0
        }
        Err(message) => {
            eprintln!("passenger-status: {message}");
            1
        }
    }
}

/// The instance directories (those with an agent socket) under `registry`.
fn instances(registry: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(registry).map_err(|e| {
        format!(
            "cannot read the instance registry {}: {e}",
            registry.display()
        )
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mod_passenger."))
                && instance::status_socket(path).exists()
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The one instance to ask: the named one, or the only one.
fn pick_instance(registry: &Path, name: Option<&str>) -> Result<PathBuf, String> {
    let dirs = instances(registry)?;
    let names = || {
        dirs.iter()
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
    };
    match name {
        Some(name) => dirs
            .iter()
            .find(|d| d.file_name().is_some_and(|n| n == name))
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no instance named {name} in {}; running: {}",
                    registry.display(),
                    names().join(", ")
                )
            }),
        None => match dirs.len() {
            0 => Err(format!(
                "mod_passenger does not seem to be running: no instance in {} \
                 (another PassengerInstanceRegistryDir? give it with --instance-registry-dir)",
                registry.display()
            )),
            1 => Ok(dirs[0].clone()),
            _ => Err(format!(
                "several instances run in {}; name one:\n  {}",
                registry.display(),
                names().join("\n  ")
            )),
        },
    }
}

/// Asks the agent of `instance_dir` for its status document, the requests
/// in flight or its threads.
fn query(instance_dir: &Path, show: Show) -> Result<Value, String> {
    let socket = instance::status_socket(instance_dir);
    let failed = |e: &dyn std::fmt::Display| format!("the agent at {}: {e}", socket.display());
    let stream = UnixStream::connect(&socket).map_err(|e| failed(&e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| failed(&e))?;
    let mut conn = Connection::new(stream);
    let hello = Message::Hello {
        role: Role::Status,
        pid: std::process::id(),
        generation: 0,
    };
    conn.send(0, &hello).map_err(|e| failed(&e))?;
    match conn.read_frame().map_err(|e| failed(&e))? {
        Some((_, Message::HelloOk { .. })) => {}
        Some((_, Message::Error { message, .. })) => return Err(failed(&message)),
        _ => return Err(failed(&"it did not answer HELLO")),
    }
    let query = match show {
        Show::Requests => serde_json::json!({ "show": "requests" }),
        Show::Backtraces => serde_json::json!({ "show": "backtraces" }),
        Show::Pool | Show::Xml | Show::Json => serde_json::json!({}),
    };
    let status = Message::Status {
        query: query.to_string().into_bytes(),
    };
    conn.send(1, &status).map_err(|e| failed(&e))?;
    match conn.read_frame().map_err(|e| failed(&e))? {
        Some((_, Message::StatusReply { document })) => {
            serde_json::from_slice(&document).map_err(|e| failed(&e))
        }
        _ => Err(failed(&"it did not answer STATUS")),
    }
}

/// The agent's threads, in the layout of the original's backtraces: a
/// block per thread, its frames innermost first, a frame's detail after
/// ` -- `.
fn format_backtraces(doc: &Value) -> String {
    let mut out = String::new();
    for thread in doc["threads"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "Thread '{}' (tid {}):",
            thread["name"].as_str().unwrap_or("?"),
            thread["tid"]
        );
        let frames = thread["frames"].as_array().map_or(&[][..], Vec::as_slice);
        if frames.is_empty() {
            out.push_str("     (waiting for work)\n");
        }
        for frame in frames {
            let _ = write!(
                out,
                "     in '{}' ({}:{})",
                frame["function"].as_str().unwrap_or("?"),
                frame["file"].as_str().unwrap_or("?"),
                frame["line"]
            );
            if let Some(detail) = frame["detail"].as_str() {
                let _ = write!(out, " -- {detail}");
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// The time now, in UTC, as `YYYY-MM-DD HH:MM:SS UTC`.
fn now_text() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_text(secs)
}

/// `secs` since the Unix epoch as a UTC date and time (the proleptic
/// Gregorian calendar, days counted from 0000-03-01 so leap days fall last).
fn utc_text(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// A duration as the original shows it: `2s`, `3m 4s`, `1h 2m 3s`, `2d 1h 0m 3s`.
fn duration_text(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m {s}s")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// A process's CPU time over its age, in percent, when both are known.
fn cpu_percent(process: &Value) -> Option<u64> {
    let uptime_ms = process["uptime_ms"].as_u64().filter(|&up| up > 0)?;
    Some(process["cpu_ms"].as_u64()? * 100 / uptime_ms)
}

/// The pool overview, in the layout of the original's `passenger-status`.
fn format_pool(doc: &Value, date: &str) -> String {
    let groups = doc["groups"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let processes: usize = groups
        .iter()
        .map(|g| g["processes"].as_array().map_or(0, Vec::len))
        .sum();
    let mut out = String::new();
    let _ = writeln!(out, "Version : {}", doc["version"].as_str().unwrap_or("?"));
    let _ = writeln!(out, "Date    : {date}");
    let instance = doc["instance"].as_str().unwrap_or("?");
    match doc["server_software"].as_str().filter(|s| !s.is_empty()) {
        Some(software) => {
            let _ = writeln!(out, "Instance: {instance} ({software})");
        }
        None => {
            let _ = writeln!(out, "Instance: {instance} (agent pid {})", doc["pid"]);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "----------- General information -----------");
    let _ = writeln!(out, "Max pool size : {}", doc["max_pool_size"]);
    let _ = writeln!(out, "App groups    : {}", groups.len());
    let _ = writeln!(out, "Processes     : {processes}");
    // Requests wait in their app's queue: there is no top-level queue.
    let _ = writeln!(out, "Requests in top-level queue : 0");
    let _ = writeln!(out);
    let _ = writeln!(out, "----------- Application groups -----------");
    for group in groups {
        let _ = writeln!(out, "{}:", group["name"].as_str().unwrap_or("?"));
        let _ = writeln!(
            out,
            "  App root: {}",
            group["app_root"].as_str().unwrap_or("?")
        );
        let _ = writeln!(out, "  Requests in queue: {}", group["waiting"]);
        if group["spawning"].as_bool() == Some(true) {
            let _ = writeln!(out, "  (spawning a new process...)");
        }
        for p in group["processes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let uptime_ms = p["uptime_ms"].as_u64().unwrap_or(0);
            let cpu = cpu_percent(p).map_or_else(|| "?".to_owned(), |cpu| format!("{cpu}%"));
            let memory = p["rss_kib"]
                .as_u64()
                .map_or_else(|| "?".to_owned(), |kib| format!("{}M", kib / 1024));
            let shutting_down = if p["detached"].as_bool() == Some(true) {
                "  (shutting down)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  * PID: {:<7} Sessions: {:<7} Processed: {:<7} Uptime: {}{shutting_down}",
                p["pid"].to_string(),
                p["sessions"].to_string(),
                p["processed"].to_string(),
                duration_text(uptime_ms)
            );
            let _ = writeln!(
                out,
                "    CPU: {cpu:<7} Memory  : {memory:<7} Last used: {} ago",
                duration_text(p["idle_ms"].as_u64().unwrap_or(0))
            );
            if let Some(streams) = p["streams"].as_u64().filter(|&n| n > 0) {
                let _ = writeln!(
                    out,
                    "    Streams: {streams} (hijacked requests the app released; they keep it alive)"
                );
            }
        }
        let _ = writeln!(out);
    }
    out
}

/// Microseconds since the Unix epoch, now.
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `text` with XML's special characters escaped.
fn xml_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Appends `<name>value</name>`.
fn element(out: &mut String, name: &str, value: &Value) {
    let text = match value {
        Value::String(s) => xml_text(s),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let _ = write!(out, "<{name}>{text}</{name}>");
}

/// The pool in the layout of the original's `pool.xml` (reference §8.5):
/// one supergroup per app group, its group, and its processes, with the
/// elements monitoring tools read (counts, capacity, queue, and per
/// process pid, sessions, processed, uptime, last use, CPU and memory).
/// `now_us` is the time now, in microseconds since the epoch.
fn format_xml(doc: &Value, now_us: u64) -> String {
    let groups = doc["groups"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let processes_of = |g: &Value| g["processes"].as_array().cloned().unwrap_or_default();
    let process_count: usize = groups.iter().map(|g| processes_of(g).len()).sum();
    let mut out =
        String::from("<?xml version=\"1.0\" encoding=\"iso-8859-1\" ?>\n<info version=\"3\">");
    element(&mut out, "passenger_version", &doc["version"]);
    element(&mut out, "group_count", &Value::from(groups.len()));
    element(&mut out, "process_count", &Value::from(process_count));
    element(&mut out, "max", &doc["max_pool_size"]);
    element(&mut out, "capacity_used", &Value::from(process_count));
    element(&mut out, "get_wait_list_size", &Value::from(0));
    out.push_str("<supergroups>");
    for g in groups {
        let processes = processes_of(g);
        let spawning = g["spawning"].as_bool() == Some(true);
        let enabled = processes
            .iter()
            .filter(|p| p["detached"].as_bool() != Some(true))
            .count();
        out.push_str("<supergroup>");
        element(&mut out, "name", &g["name"]);
        element(&mut out, "state", &Value::from("READY"));
        element(&mut out, "get_wait_list_size", &Value::from(0));
        element(&mut out, "capacity_used", &Value::from(processes.len()));
        out.push_str("<group default=\"true\">");
        element(&mut out, "name", &g["name"]);
        element(&mut out, "component_name", &g["name"]);
        element(&mut out, "app_root", &g["app_root"]);
        element(&mut out, "app_type", &g["app_type"]);
        element(&mut out, "environment", &g["environment"]);
        element(&mut out, "enabled_process_count", &Value::from(enabled));
        element(&mut out, "disabling_process_count", &Value::from(0));
        element(&mut out, "disabled_process_count", &Value::from(0));
        element(&mut out, "capacity_used", &Value::from(processes.len()));
        element(&mut out, "get_wait_list_size", &g["waiting"]);
        element(&mut out, "disable_wait_list_size", &Value::from(0));
        element(
            &mut out,
            "processes_being_spawned",
            &Value::from(u8::from(spawning)),
        );
        if spawning {
            out.push_str("<spawning/>");
        }
        element(&mut out, "life_status", &Value::from("ALIVE"));
        if let Some(owner) = processes
            .iter()
            .map(|p| &p["owner"])
            .find(|o| o.is_object())
        {
            element(&mut out, "user", &owner["user"]);
            element(&mut out, "uid", &owner["uid"]);
            element(&mut out, "group", &owner["group"]);
            element(&mut out, "gid", &owner["gid"]);
        }
        out.push_str("<processes>");
        for p in &processes {
            let detached = p["detached"].as_bool() == Some(true);
            let idle_us = p["idle_ms"].as_u64().unwrap_or(0) * 1000;
            let uptime_ms = p["uptime_ms"].as_u64().unwrap_or(0);
            out.push_str("<process>");
            element(&mut out, "pid", &p["pid"]);
            element(&mut out, "concurrency", &p["concurrency"]);
            element(&mut out, "sessions", &p["sessions"]);
            element(&mut out, "busyness", &p["sessions"]);
            element(&mut out, "processed", &p["processed"]);
            element(
                &mut out,
                "last_used",
                &Value::from(now_us.saturating_sub(idle_us)),
            );
            element(
                &mut out,
                "last_used_desc",
                &Value::from(format!("{} ago", duration_text(idle_us / 1000))),
            );
            element(&mut out, "uptime", &Value::from(duration_text(uptime_ms)));
            element(
                &mut out,
                "life_status",
                &Value::from(if detached {
                    "SHUTDOWN_TRIGGERED"
                } else {
                    "ALIVE"
                }),
            );
            element(
                &mut out,
                "enabled",
                &Value::from(if detached { "DETACHED" } else { "ENABLED" }),
            );
            let rss = p["rss_kib"].as_u64();
            element(&mut out, "has_metrics", &Value::from(rss.is_some()));
            if let Some(rss) = rss {
                element(&mut out, "cpu", &Value::from(cpu_percent(p).unwrap_or(0)));
                element(&mut out, "rss", &Value::from(rss));
                element(&mut out, "real_memory", &Value::from(rss));
            }
            out.push_str("</process>");
        }
        out.push_str("</processes></group></supergroup>");
    }
    out.push_str("</supergroups></info>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn arguments() {
        assert_eq!(
            args(&[]).unwrap(),
            Args {
                show: Show::Pool,
                registry: None,
                instance: None
            }
        );
        let a = args(&[
            "--show=json",
            "--instance-registry-dir",
            "/r",
            "mod_passenger.1",
        ])
        .unwrap();
        assert_eq!(a.show, Show::Json);
        assert_eq!(a.registry, Some(PathBuf::from("/r")));
        assert_eq!(a.instance.as_deref(), Some("mod_passenger.1"));
        assert_eq!(args(&["--show=xml"]).unwrap().show, Show::Xml);
        assert_eq!(args(&["--show=requests"]).unwrap().show, Show::Requests);
        assert_eq!(args(&["--show=server"]).unwrap().show, Show::Requests);
        assert_eq!(args(&["--show=backtraces"]).unwrap().show, Show::Backtraces);
        assert!(
            args(&["--show=threads"])
                .unwrap_err()
                .contains("--show=backtraces")
        );
        assert!(args(&["a", "b"]).is_err());
        assert!(args(&["--instance-registry-dir"]).is_err());
    }

    #[test]
    fn backtraces_read_innermost_frame_first_with_details() {
        let doc = serde_json::json!({ "threads": [
            { "name": "hooks", "tid": 12, "frames": [
                { "function": "run_single_hook_script", "file": "src/agent/hooks.rs", "line": 97,
                  "detail": "/home/phusion/badscript.sh" },
                { "function": "run_hook_scripts", "file": "src/agent/hooks.rs", "line": 95,
                  "detail": null },
            ] },
            { "name": "accept", "tid": 13, "frames": [] },
        ] });
        assert_eq!(
            format_backtraces(&doc),
            "Thread 'hooks' (tid 12):\n\
             \x20    in 'run_single_hook_script' (src/agent/hooks.rs:97) -- /home/phusion/badscript.sh\n\
             \x20    in 'run_hook_scripts' (src/agent/hooks.rs:95)\n\
             \n\
             Thread 'accept' (tid 13):\n\
             \x20    (waiting for work)\n\
             \n"
        );
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_text(1_795_860_245), "2026-11-28 10:04:05 UTC");
    }

    #[test]
    fn durations_read_like_the_original() {
        assert_eq!(duration_text(2_400), "2s");
        assert_eq!(duration_text(184_000), "3m 4s");
        assert_eq!(duration_text(3_723_000), "1h 2m 3s");
        assert_eq!(duration_text(176_403_000), "2d 1h 0m 3s");
    }

    #[test]
    fn the_pool_view_lists_groups_and_processes() {
        let doc = serde_json::json!({
            "version": "0.1.0", "instance": "mod_passenger.00ff", "pid": 42,
            "max_pool_size": 6,
            "groups": [{
                "name": "/srv/app (production)", "app_root": "/srv/app",
                "waiting": 2, "spawning": false,
                "processes": [{
                    "pid": 16915, "sessions": 1, "processed": 12, "detached": false,
                    "idle_ms": 2000, "uptime_ms": 62_000, "cpu_ms": 620, "rss_kib": 9 * 1024,
                }, {
                    "pid": 16916, "sessions": 0, "streams": 2, "processed": 3, "detached": false,
                    "idle_ms": 1000, "uptime_ms": 62_000, "cpu_ms": 62, "rss_kib": 9 * 1024,
                }],
            }],
        });
        let text = format_pool(&doc, "2026-11-28 10:00:00 +0000");
        for line in [
            "Max pool size : 6",
            "App groups    : 1",
            "Processes     : 2",
            "/srv/app (production):",
            "  App root: /srv/app",
            "  Requests in queue: 2",
            "  * PID: 16915   Sessions: 1       Processed: 12      Uptime: 1m 2s",
            "    CPU: 1%      Memory  : 9M      Last used: 2s ago",
            "  * PID: 16916   Sessions: 0       Processed: 3       Uptime: 1m 2s",
            "    Streams: 2 (hijacked requests the app released; they keep it alive)",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn the_xml_view_has_what_monitoring_tools_read() {
        let doc = serde_json::json!({
            "version": "0.1.0", "max_pool_size": 6,
            "groups": [{
                "name": "/srv/a&b (production)", "app_root": "/srv/a&b", "app_type": "rack",
                "environment": "production", "waiting": 3, "spawning": true,
                "processes": [{
                    "pid": 7, "concurrency": 1, "sessions": 1, "processed": 9, "detached": false,
                    "idle_ms": 2000, "uptime_ms": 10_000, "cpu_ms": 1000, "rss_kib": 2048,
                    "owner": {"uid": 65534, "gid": 65534, "user": "nobody", "group": "nogroup"},
                }],
            }],
        });
        let xml = format_xml(&doc, 5_000_000);
        assert!(
            xml.starts_with(
                "<?xml version=\"1.0\" encoding=\"iso-8859-1\" ?>\n<info version=\"3\">"
            )
        );
        for needle in [
            "<passenger_version>0.1.0</passenger_version>",
            "<process_count>1</process_count>",
            "<max>6</max>",
            "<name>/srv/a&amp;b (production)</name>",
            "<app_type>rack</app_type>",
            "<get_wait_list_size>3</get_wait_list_size>",
            "<spawning/>",
            "<user>nobody</user><uid>65534</uid>",
            "<pid>7</pid>",
            "<processed>9</processed>",
            "<last_used>3000000</last_used>",
            "<last_used_desc>2s ago</last_used_desc>",
            "<uptime>10s</uptime>",
            "<enabled>ENABLED</enabled>",
            "<cpu>10</cpu><rss>2048</rss>",
        ] {
            assert!(xml.contains(needle), "{needle} missing from {xml}");
        }
        assert!(xml.ends_with("</supergroups></info>\n"));
    }

    #[test]
    fn an_empty_registry_says_so_and_several_instances_must_be_named() {
        let registry = std::env::temp_dir().join(format!("mp-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&registry);
        std::fs::create_dir_all(&registry).unwrap();
        assert!(
            pick_instance(&registry, None)
                .unwrap_err()
                .contains("does not seem to be running")
        );
        for name in ["mod_passenger.01", "mod_passenger.02"] {
            std::fs::create_dir_all(registry.join(name)).unwrap();
            std::fs::write(instance::status_socket(&registry.join(name)), "").unwrap();
        }
        assert!(
            pick_instance(&registry, None)
                .unwrap_err()
                .contains("mod_passenger.02")
        );
        assert_eq!(
            pick_instance(&registry, Some("mod_passenger.01")).unwrap(),
            registry.join("mod_passenger.01")
        );
        assert!(pick_instance(&registry, Some("mod_passenger.03")).is_err());
        std::fs::remove_dir_all(&registry).unwrap();
    }
}
