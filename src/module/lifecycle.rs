//! The Apache parent's part: find this instance's agent or start one, and
//! hand it the configuration (post_config, and again when the agent died).
//!
//! Runs in the Apache parent with blocking I/O only: no thread is started
//! here, because the MPM forks the children from this process afterwards.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::ServerConfig;
use crate::instance;
use crate::module::client;
use crate::protocol::{Message, Role};

/// What the Apache parent knows about itself (from `mp_startup_info`).
#[derive(Debug, Clone)]
pub struct StartupInfo {
    /// ServerRoot.
    pub server_root: Vec<u8>,
    /// The main configuration file.
    pub config_file: Vec<u8>,
    /// The path of mod_passenger.so, from which the agent is found.
    pub module_path: PathBuf,
    /// Apache's server description, for SERVER_SOFTWARE.
    pub server_software: String,
    /// The Apache parent's pid.
    pub apache_pid: u32,
    /// The uid Apache's children run as.
    pub apache_uid: u32,
    /// The gid Apache's children run as.
    pub apache_gid: u32,
    /// The configuration generation.
    pub generation: u64,
}

/// How long a freshly started agent may take to accept connections.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds the agent of this instance or starts one, then sends it the
/// configuration. Returns the agent's pid.
pub fn ensure_agent(config: &ServerConfig, info: &StartupInfo) -> Result<u32, String> {
    let result = find_or_start(config, info);
    if result.is_err() {
        // Requests then fail at once instead of waiting for an agent that
        // will not come.
        client::clear_agent_socket();
    }
    result
}

fn find_or_start(config: &ServerConfig, info: &StartupInfo) -> Result<u32, String> {
    if let Some(fly_with) = &config.fly_with {
        // Flying mode: someone else runs the agent; we only connect.
        let socket = PathBuf::from(fly_with);
        client::set_agent_socket(socket.clone());
        configure(&socket, config, info).map_err(|e| e.to_string())?;
        return Ok(0);
    }
    let euid = nix::unistd::geteuid().as_raw();
    let registry = config
        .instance_registry_dir
        .as_ref()
        .map_or_else(|| instance::default_registry_dir(euid), PathBuf::from);
    let dir = instance::instance_dir(&registry, &info.server_root, &info.config_file);
    let socket = instance::agent_socket(&dir);
    client::set_agent_socket(socket.clone());

    if let Ok(pid) = configure(&socket, config, info) {
        log::debug!(target: "MP0010", "reusing the passenger agent (pid {pid}) at {}", dir.display());
        return Ok(pid);
    }
    let agent = find_agent(config, &info.module_path)?;
    start_agent(&agent, &registry, &dir, info)?;
    let deadline = Instant::now() + AGENT_START_TIMEOUT;
    loop {
        match configure(&socket, config, info) {
            Ok(pid) => {
                log::info!(target: "MP0011", "started the passenger agent (pid {pid}) at {}", dir.display());
                return Ok(pid);
            }
            Err(Refusal::Refused(message)) => {
                return Err(format!(
                    "the agent {} refused the configuration: {message}",
                    agent.display()
                ));
            }
            Err(Refusal::Unreachable(e)) if Instant::now() >= deadline => {
                return Err(format!(
                    "the agent {} did not become ready: {e}",
                    agent.display()
                ));
            }
            Err(Refusal::Unreachable(_)) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Why CONFIGURE did not succeed.
#[derive(Debug)]
enum Refusal {
    /// No agent answered (yet): worth waiting for one that is starting.
    Unreachable(String),
    /// The agent answered with an error: waiting changes nothing.
    Refused(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unreachable(e) | Refusal::Refused(e) => f.write_str(e),
        }
    }
}

/// Connects as the control role and sends CONFIGURE; returns the agent's pid.
fn configure(socket: &Path, config: &ServerConfig, info: &StartupInfo) -> Result<u32, Refusal> {
    let unreachable = |e: &dyn std::fmt::Display| Refusal::Unreachable(e.to_string());
    let stream = UnixStream::connect(socket).map_err(|e| unreachable(&e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| unreachable(&e))?;
    let mut conn = crate::protocol::Connection::new(stream);
    conn.send(
        0,
        &Message::Hello {
            role: Role::Control,
            pid: info.apache_pid,
            generation: info.generation,
        },
    )
    .map_err(|e| unreachable(&e))?;
    let agent_pid = match conn.read_frame() {
        Ok(Some((_, Message::HelloOk { agent_pid, .. }))) => agent_pid,
        Ok(Some((_, Message::Error { message, .. }))) => return Err(Refusal::Refused(message)),
        other => {
            return Err(unreachable(&format!(
                "unexpected answer to HELLO: {other:?}"
            )));
        }
    };
    let mut document = config.to_json();
    document["server_software"] = serde_json::Value::from(info.server_software.clone());
    let body = serde_json::to_vec(&document).map_err(|e| Refusal::Refused(e.to_string()))?;
    conn.send(
        0,
        &Message::Configure {
            generation: info.generation,
            config: body,
        },
    )
    .map_err(|e| unreachable(&e))?;
    match conn.read_frame() {
        Ok(Some((_, Message::ConfigureOk))) => Ok(agent_pid),
        Ok(Some((_, Message::Error { message, .. }))) => Err(Refusal::Refused(message)),
        other => Err(unreachable(&format!(
            "unexpected answer to CONFIGURE: {other:?}"
        ))),
    }
}

/// Finds the passenger-agent binary: under PassengerRoot when set, beside
/// mod_passenger.so (the build tree), then in the installed location.
fn find_agent(config: &ServerConfig, module_path: &Path) -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(root) = &config.root {
        candidates.push(Path::new(root).join("passenger-agent"));
        candidates.push(Path::new(root).join("bin/passenger-agent"));
    }
    if let Some(dir) = module_path.parent() {
        candidates.push(dir.join("passenger-agent"));
    }
    candidates.push(PathBuf::from(env!("MP_LIBEXEC_DIR")).join("passenger-agent"));
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!(
                "cannot find passenger-agent (tried {}); set PassengerRoot",
                tried.join(", ")
            )
        })
}

/// Starts the agent as a child of the Apache parent. The Apache parent
/// supervises it (the shim registers it as an "other child").
fn start_agent(
    agent: &Path,
    registry: &Path,
    dir: &Path,
    info: &StartupInfo,
) -> Result<(), String> {
    let stderr = io::stderr().lock();
    let stdout = Stdio::from(
        std::os::fd::AsFd::as_fd(&stderr)
            .try_clone_to_owned()
            .map_err(|e| e.to_string())?,
    );
    drop(stderr);
    Command::new(agent)
        .arg("--registry-dir")
        .arg(registry)
        .arg("--instance-dir")
        .arg(dir)
        .arg("--apache-pid")
        .arg(info.apache_pid.to_string())
        .arg("--apache-uid")
        .arg(info.apache_uid.to_string())
        .arg("--apache-gid")
        .arg(info.apache_gid.to_string())
        .stdin(Stdio::null())
        .stdout(stdout)
        .env_remove("LISTEN_FDS")
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot start {}: {e}", agent.display()))
}
