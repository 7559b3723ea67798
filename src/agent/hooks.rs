//! Hook scripts: `PassengerCtl hook_<name> <command>` (reference §6).
//!
//! As in the original, a hook's value may hold several commands separated
//! by `;`; each is run with no shell and no arguments (the command is the
//! path of an executable), one after the other, stopping at the first that
//! fails; "Running <name> hook script: <command>" is logged, and a non-zero
//! exit too. A script gets the agent's environment plus the configuration
//! flattened to `PASSENGER_<KEY>` (the directive's config key in upper
//! case), `PASSENGER_HOOK_NAME`, `PASSENGER_VERSION`,
//! `PASSENGER_INSTANCE_DIR`, `PASSENGER_INSTANCE_REGISTRY_DIR`, and the
//! variables of its event. Its output goes to the agent's stderr, which is
//! Apache's error log.
//!
//! Done better than the original: the pool's events (`attached_process`,
//! `detached_process`, `spawn_failed`, `queue_full_error`) run on one
//! background thread, in order, so a slow script never holds up a request
//! or a spawn. `max_request_time_reached` runs before the process is
//! killed, in the request's thread, as it must (a script may want to look
//! at the process); the `*_watchdog_*` hooks run around the agent's start
//! and stop.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use crossbeam::channel::{self, Sender};
use parking_lot::RwLock;
use serde_json::Value as Json;

use crate::config::ServerConfig;

/// The hooks of one configuration generation.
#[derive(Default)]
pub struct HookSet {
    /// Hook name (without `hook_`) → its commands.
    commands: HashMap<String, Vec<String>>,
    /// What every script gets in its environment.
    env: Vec<(String, String)>,
}

impl HookSet {
    /// The hooks and the environment of `config`, for the agent serving
    /// from `instance_dir` under `registry_dir`.
    pub fn new(config: &ServerConfig, instance_dir: &Path, registry_dir: &Path) -> HookSet {
        let mut commands = HashMap::new();
        for (key, value) in &config.ctl {
            let (Some(name), Json::String(text)) = (key.strip_prefix("hook_"), value) else {
                continue;
            };
            let list: Vec<String> = text
                .split(';')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            commands.insert(name.to_owned(), list);
        }
        let mut env = Vec::new();
        if let Json::Object(fields) = config.to_json() {
            for (key, value) in fields {
                let text = match value {
                    Json::Null => continue,
                    Json::String(s) => s,
                    other => other.to_string(),
                };
                env.push((format!("PASSENGER_{}", key.to_ascii_uppercase()), text));
            }
        }
        env.push(("PASSENGER_VERSION".into(), env!("CARGO_PKG_VERSION").into()));
        env.push((
            "PASSENGER_INSTANCE_DIR".into(),
            instance_dir.display().to_string(),
        ));
        env.push((
            "PASSENGER_INSTANCE_REGISTRY_DIR".into(),
            registry_dir.display().to_string(),
        ));
        HookSet { commands, env }
    }

    /// Whether a hook of that name is set.
    pub fn has(&self, name: &str) -> bool {
        self.commands.contains_key(name)
    }

    /// Runs hook `name`'s commands now, in order; false when one failed
    /// (the rest are then not run). No hook set is a success.
    pub fn run(&self, name: &str, extra: &[(&str, String)]) -> bool {
        let Some(commands) = self.commands.get(name) else {
            return true;
        };
        let _trace = crate::trace_point!("run_hook_scripts", name);
        for command in commands {
            let _trace = crate::trace_point!("run_single_hook_script", command);
            log::info!(target: "MP1101", "Running {name} hook script: {command}");
            let mut child = Command::new(command);
            child
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .env("PASSENGER_HOOK_NAME", name)
                .envs(extra.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::inherit())
                .stderr(std::process::Stdio::inherit());
            let ok = match child.spawn().and_then(|mut c| Ok((c.id(), c.wait()?))) {
                Ok((_, status)) if status.success() => true,
                Ok((pid, status)) => {
                    log::warn!(target: "MP1102", "Hook script {command} (PID {pid}) exited with {status}");
                    false
                }
                Err(e) => {
                    log::warn!(target: "MP1102", "Hook script {command} could not be run: {e}");
                    false
                }
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// Work for the background thread.
enum Job {
    /// Run a hook: the set it belongs to, its name and its event's variables.
    Run(Arc<HookSet>, &'static str, Vec<(&'static str, String)>),
    /// Answer once every hook queued before has run.
    Flush(Sender<()>),
}

/// The current hooks, and the thread that runs the pool's events.
pub struct Hooks {
    current: RwLock<Arc<HookSet>>,
    background: Sender<Job>,
}

impl Hooks {
    /// No hooks yet (they come with the configuration); starts the
    /// background thread.
    pub fn start() -> Result<Hooks, String> {
        let (background, jobs) = channel::unbounded::<Job>();
        std::thread::Builder::new()
            .name("hooks".into())
            .spawn(move || {
                let _thread = crate::trace::register_thread("hooks");
                for job in jobs {
                    match job {
                        Job::Run(set, name, extra) => {
                            set.run(name, &extra);
                        }
                        Job::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the hook thread: {e}"))?;
        Ok(Hooks {
            current: RwLock::new(Arc::new(HookSet::default())),
            background,
        })
    }

    /// Installs the hooks of a new configuration generation.
    pub fn set(&self, set: HookSet) {
        *self.current.write() = Arc::new(set);
    }

    /// The hooks now in force.
    pub fn current(&self) -> Arc<HookSet> {
        Arc::clone(&self.current.read())
    }

    /// Queues hook `name` for the background thread (nothing when unset).
    pub fn notify(&self, name: &'static str, extra: Vec<(&'static str, String)>) {
        let set = self.current();
        if set.has(name) {
            let _ = self.background.send(Job::Run(set, name, extra));
        }
    }

    /// Waits until the hooks queued so far have run (before the agent
    /// exits), for at most `limit`: a script that hangs does not keep the
    /// agent alive.
    pub fn flush(&self, limit: std::time::Duration) {
        let (done, wait) = channel::bounded(1);
        if self.background.send(Job::Flush(done)).is_ok() && wait.recv_timeout(limit).is_err() {
            log::warn!(target: "MP1102", "hook scripts still running after {} s; not waiting for them", limit.as_secs());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ServerConfig, value::ctl_value};

    fn config_with(ctl: &[(&str, &str)]) -> ServerConfig {
        let mut config = ServerConfig::default();
        for (key, value) in ctl {
            config
                .ctl
                .push(((*key).to_owned(), ctl_value(value).unwrap()));
        }
        config
    }

    #[test]
    fn commands_run_in_order_with_the_environment_and_stop_at_a_failure() {
        let dir = std::env::temp_dir().join(format!("mp-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let script = |name: &str, body: &str| {
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(
                &path,
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
            )
            .unwrap();
            path.display().to_string()
        };
        let first = script(
            "first.sh",
            &format!(
                "echo \"$PASSENGER_HOOK_NAME $PASSENGER_PROCESS_PID $PASSENGER_MAX_POOL_SIZE $PASSENGER_INSTANCE_DIR\" >> {}",
                out.display()
            ),
        );
        let failing = script("fail.sh", "exit 3");
        let never = script("never.sh", &format!("echo never >> {}", out.display()));
        let value = format!("{first} ; {failing};{never}");
        let set = HookSet::new(
            &config_with(&[("hook_attached_process", &value)]),
            Path::new("/run/x/mod_passenger.1"),
            Path::new("/run/x"),
        );
        assert!(set.has("attached_process"));
        assert!(!set.run(
            "attached_process",
            &[("PASSENGER_PROCESS_PID", "42".into())]
        ));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "attached_process 42 6 /run/x/mod_passenger.1\n"
        );
        assert!(set.run("detached_process", &[]), "an unset hook succeeds");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
