//! `flying-passenger`: the agent started by hand, outliving Apache
//! (Flying Passenger, reference §7).
//!
//! ```text
//! flying-passenger --socket-file=PATH [--apache-user=NAME]
//!     [--instance-registry-dir=DIR] [--log-file=PATH] [--pid-file=PATH]
//!     [--daemonize] [--log-level=N] [--max-pool-size=N] [--pool-idle-time=N]
//!     [--max-instances-per-app=N] [--stat-throttle-rate=N]
//!     [--user-switching=on|off] [--default-user=NAME] [--default-group=NAME]
//!     [--default-ruby=PATH]
//! ```
//!
//! Apache finds it through `PassengerFlyWith PATH` and sends its requests
//! there; restarting or stopping Apache leaves the daemon and its apps
//! running. As in the original, the daemon's global settings are its
//! command-line options (the Apache configuration's global `Passenger*`
//! directives have no effect on it); the per-app directives still come
//! with each request. It also serves the usual instance directory, so
//! `passenger-status` finds it.
//!
//! Done better than the original: the socket is not open to everyone. It
//! belongs to root and the Apache user's group, mode 0660, and the daemon
//! accepts connections only from root and `--apache-user` (default
//! `www-data`, Debian's Apache user).

use std::path::PathBuf;

use serde_json::{Map, Value as Json};

use super::Args;
use crate::config::ServerConfig;
use crate::instance;

const USAGE: &str = "usage: flying-passenger --socket-file=PATH [--apache-user=NAME] \
[--instance-registry-dir=DIR] [--log-file=PATH] [--pid-file=PATH] [--daemonize] \
[--log-level=N] [--max-pool-size=N] [--pool-idle-time=N] [--max-instances-per-app=N] \
[--stat-throttle-rate=N] [--user-switching=on|off] [--default-user=NAME] \
[--default-group=NAME] [--default-ruby=PATH]";

/// The daemon's options.
#[derive(Debug, Default)]
struct Options {
    socket_file: Option<PathBuf>,
    apache_user: Option<String>,
    registry: Option<PathBuf>,
    log_file: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    daemonize: bool,
    /// Global settings, by the config keys of `docs/directives.md`.
    settings: Map<String, Json>,
}

/// The options that set a global setting: option name, config key, and
/// whether the value is a number (else an on/off flag or text).
const SETTINGS: [(&str, &str, Kind); 9] = [
    ("log-level", "log_level", Kind::Number),
    ("max-pool-size", "max_pool_size", Kind::Number),
    ("pool-idle-time", "pool_idle_time", Kind::Number),
    (
        "max-instances-per-app",
        "max_instances_per_app",
        Kind::Number,
    ),
    ("stat-throttle-rate", "stat_throttle_rate", Kind::Number),
    ("user-switching", "user_switching", Kind::Flag),
    ("default-user", "default_user", Kind::Text),
    ("default-group", "default_group", Kind::Text),
    ("default-ruby", "default_ruby", Kind::Text),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Number,
    Flag,
    Text,
}

fn parse(argv: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    for arg in argv {
        let Some(body) = arg.strip_prefix("--") else {
            return Err(format!("unexpected argument {arg:?}\n{USAGE}"));
        };
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let need = || value.ok_or_else(|| format!("--{name} needs a value (--{name}=...)"));
        match name {
            "socket-file" => options.socket_file = Some(PathBuf::from(need()?)),
            "apache-user" => options.apache_user = Some(need()?.to_owned()),
            "instance-registry-dir" => options.registry = Some(PathBuf::from(need()?)),
            "log-file" => options.log_file = Some(PathBuf::from(need()?)),
            "pid-file" => options.pid_file = Some(PathBuf::from(need()?)),
            "daemonize" if value.is_none() => options.daemonize = true,
            _ => {
                let Some((_, key, kind)) = SETTINGS.iter().find(|(option, _, _)| *option == name)
                else {
                    return Err(format!("unknown option --{name}\n{USAGE}"));
                };
                let text = need()?;
                let json = match kind {
                    Kind::Number => Json::from(
                        text.parse::<u64>()
                            .map_err(|_| format!("--{name}: not a number: {text}"))?,
                    ),
                    Kind::Flag => match text {
                        "on" | "true" | "yes" => Json::Bool(true),
                        "off" | "false" | "no" => Json::Bool(false),
                        _ => return Err(format!("--{name}: expected on or off, not {text}")),
                    },
                    Kind::Text => Json::String(text.to_owned()),
                };
                options.settings.insert((*key).to_owned(), json);
            }
        }
    }
    if options.socket_file.is_none() {
        return Err(format!("--socket-file is required\n{USAGE}"));
    }
    Ok(options)
}

/// Runs the daemon; returns the exit status.
pub fn main(argv: &[String]) -> i32 {
    if argv.iter().any(|a| a == "--help") {
        println!("{USAGE}");
        return 0;
    }
    let options = match parse(argv) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return 2;
        }
    };
    match run(options, argv) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("flying-passenger: {message}");
            1
        }
    }
}

fn run(options: Options, argv: &[String]) -> Result<(), String> {
    let config = ServerConfig::from_json(&Json::Object(options.settings.clone()))
        .map_err(|e| e.to_string())?;
    if let Some(log_file) = &options.log_file {
        redirect_stderr(log_file)?;
    }
    if options.daemonize {
        return daemonize(argv);
    }
    crate::log::init_agent(crate::log::level_filter(config.log_level));
    let user_name = options.apache_user.as_deref().unwrap_or("www-data");
    let apache = nix::unistd::User::from_name(user_name)
        .map_err(|e| format!("cannot look up --apache-user {user_name}: {e}"))?
        .ok_or_else(|| format!("--apache-user {user_name}: no such user"))?;
    let socket = options.socket_file.clone().expect("checked by parse");
    let registry = options
        .registry
        .clone()
        .unwrap_or_else(|| instance::default_registry_dir(nix::unistd::geteuid().as_raw()));
    let instance_dir = instance::instance_dir(
        &registry,
        b"flying-passenger",
        socket.as_os_str().as_encoded_bytes(),
    );
    if let Some(pid_file) = &options.pid_file {
        std::fs::write(pid_file, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write {}: {e}", pid_file.display()))?;
    }
    log::info!(
        target: "MP0810",
        "Flying Passenger {} listening on {} for root and {user_name}",
        env!("CARGO_PKG_VERSION"),
        socket.display()
    );
    let result = super::run(Args {
        instance_dir,
        apache_pid: None,
        apache_uid: Some(apache.uid.as_raw()),
        apache_gid: Some(apache.gid.as_raw()),
        socket_file: Some(socket),
        own_config: Some(config),
    });
    if let Some(pid_file) = &options.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    result
}

/// Sends this process's stderr (the log) to `path`, appending.
fn redirect_stderr(path: &std::path::Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
    nix::unistd::dup2(file.as_raw_fd(), 2)
        .map_err(|e| format!("cannot log to {}: {e}", path.display()))?;
    Ok(())
}

/// Starts the daemon again without `--daemonize`, detached from the
/// terminal (the agent makes itself a session leader), and returns.
fn daemonize(argv: &[String]) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let child = std::process::Command::new(me)
        .args(argv.iter().filter(|a| *a != "--daemonize"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    println!("flying-passenger started (pid {})", child.id());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_list(list: &[&str]) -> Result<Options, String> {
        parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_become_settings() {
        let o = parse_list(&[
            "--socket-file=/run/fly.sock",
            "--max-pool-size=3",
            "--user-switching=off",
            "--default-user=nobody",
            "--daemonize",
        ])
        .unwrap();
        assert_eq!(o.socket_file, Some(PathBuf::from("/run/fly.sock")));
        assert!(o.daemonize);
        let config = ServerConfig::from_json(&Json::Object(o.settings)).unwrap();
        assert_eq!(config.max_pool_size, 3);
        assert!(!config.user_switching);
        assert_eq!(config.default_user, "nobody");
    }

    #[test]
    fn bad_options_are_named() {
        assert!(
            parse_list(&[])
                .unwrap_err()
                .contains("--socket-file is required")
        );
        assert!(
            parse_list(&["--socket-file=/s", "--max-pool-size=many"])
                .unwrap_err()
                .contains("--max-pool-size: not a number")
        );
        assert!(
            parse_list(&["--socket-file=/s", "--frobnicate=1"])
                .unwrap_err()
                .contains("unknown option --frobnicate")
        );
        assert!(
            parse_list(&["--socket-file"])
                .unwrap_err()
                .contains("needs a value")
        );
    }
}
