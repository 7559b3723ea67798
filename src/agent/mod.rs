//! The agent: one daemon per Apache instance.
//!
//! ```text
//! main thread      waits for the shutdown signal, then stops the pool and
//!                  removes the instance directory
//! "accept"         accepts connections on agent.sock; checks the peer's uid
//! "accept-status"  the same on the status socket
//! "conn"           one thread per connection (session.rs), up to MAX_CONNECTIONS
//! "signals"        SIGTERM / SIGINT -> shutdown
//! "apache-watch"   the Apache parent exited (pidfd) -> shutdown
//! "idle-gc"        PassengerPoolIdleTime, once a second
//! "hooks"          runs the pool's hook scripts, in order (hooks.rs)
//! "spawner"        one per spawn in progress (pool)
//! "oob"            one per out-of-band work in progress (pool)
//! "app-<pid>"      one per app process: its output, its exit (spawn::process)
//! "stop-<pid>"     one per process told to stop: SIGKILL after its grace
//! "prestart"       one per PassengerPreStart URL, until it answered
//! ```
//!
//! Each registers with [`crate::trace`] under a name that says what it is
//! for, so `passenger-status --show=backtraces` can show what it is doing.
//!
//! The agent outlives Apache's graceful restarts: each new configuration
//! generation connects and sends CONFIGURE; app processes keep running.

pub mod error_page;
pub mod flying;
pub mod hooks;
pub mod instance;
pub mod prestart;
pub mod requests;
pub mod server;
pub mod session;
pub mod tunnel;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::ServerConfig;
use crate::pool::{Limits, Pool, PoolEvent};
use crate::spawn::{LoaderSpawner, UserPolicy};
use instance::InstanceDir;

/// The command line of `passenger-agent`.
#[derive(Debug, Clone)]
pub struct Args {
    /// The instance directory to create and serve from.
    pub instance_dir: PathBuf,
    /// The Apache parent to follow (exit when it exits).
    pub apache_pid: Option<i32>,
    /// Apache's user: allowed to connect.
    pub apache_uid: Option<u32>,
    /// Apache's group: owns the request socket.
    pub apache_gid: Option<u32>,
    /// A second request socket at a path of the administrator's choosing
    /// (Flying Passenger's `--socket-file`).
    pub socket_file: Option<PathBuf>,
    /// The agent's own global settings (Flying Passenger): Apache's
    /// CONFIGURE is then acknowledged but changes nothing.
    pub own_config: Option<ServerConfig>,
}

impl Args {
    /// Parses `--name value` arguments.
    pub fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut args = Args {
            instance_dir: PathBuf::new(),
            apache_pid: None,
            apache_uid: None,
            apache_gid: None,
            socket_file: None,
            own_config: None,
        };
        while let Some(flag) = argv.next() {
            let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
            let number = |v: String| {
                v.parse::<u32>()
                    .map_err(|_| format!("{flag}: not a number: {v}"))
            };
            match flag.as_str() {
                "--instance-dir" => args.instance_dir = PathBuf::from(value()?),
                "--registry-dir" => {
                    value()?;
                }
                "--apache-pid" => args.apache_pid = Some(number(value()?)? as i32),
                "--apache-uid" => args.apache_uid = Some(number(value()?)?),
                "--apache-gid" => args.apache_gid = Some(number(value()?)?),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if args.instance_dir.as_os_str().is_empty() {
            return Err("--instance-dir is required".into());
        }
        Ok(args)
    }
}

/// The agent's shared state.
pub struct Agent {
    /// The pool.
    pub pool: Arc<Pool>,
    /// The Apache parent this agent serves, if it follows one.
    pub apache_pid: Option<i32>,
    spawner: Arc<LoaderSpawner>,
    instance: InstanceDir,
    config: Mutex<(u64, ServerConfig)>,
    /// The hook scripts of the current configuration.
    pub hooks: hooks::Hooks,
    /// Asks the main thread to shut the agent down.
    stop: crossbeam::channel::Sender<&'static str>,
    /// The first configuration has come (the initialization hooks ran).
    initialized: std::sync::atomic::AtomicBool,
    /// The agent runs with its own settings (Flying Passenger).
    own_config: bool,
    /// Apache's description of itself, from the last CONFIGURE.
    server_software: Mutex<String>,
    /// The requests in flight, for `passenger-status --show=requests`.
    pub requests: Arc<requests::Requests>,
}

impl Agent {
    /// The instance directory's name, sent in HELLO_OK.
    pub fn instance_name(&self) -> Vec<u8> {
        self.instance
            .dir
            .file_name()
            .map(|n| n.as_encoded_bytes().to_vec())
            .unwrap_or_default()
    }

    /// Applies a configuration generation. The first one also runs the
    /// `before_watchdog_initialization` and `after_watchdog_initialization`
    /// hooks: if one fails, the configuration is refused (Apache does not
    /// start) and the agent exits.
    pub fn configure(&self, generation: u64, config: ServerConfig) -> Result<(), String> {
        let first = !self
            .initialized
            .swap(true, std::sync::atomic::Ordering::SeqCst);
        if self.own_config && !first {
            log::debug!(target: "MP0801", "configuration generation {generation} from Apache: keeping the daemon's own settings");
            return Ok(());
        }
        let registry = self.instance.dir.parent().unwrap_or(&self.instance.dir);
        self.hooks
            .set(hooks::HookSet::new(&config, &self.instance.dir, registry));
        if first {
            self.run_startup_hook("before_watchdog_initialization")?;
        }
        self.apply(generation, config);
        if first {
            self.run_startup_hook("after_watchdog_initialization")?;
        }
        Ok(())
    }

    /// Runs a hook whose failure stops the agent.
    fn run_startup_hook(&self, name: &'static str) -> Result<(), String> {
        if self.hooks.current().run(name, &[]) {
            return Ok(());
        }
        let _ = self.stop.send("a watchdog initialization hook failed");
        Err(format!("the {name} hook script failed"))
    }

    fn apply(&self, generation: u64, config: ServerConfig) {
        log::set_max_level(crate::log::level_filter(config.log_level));
        self.spawner.set_policy(user_policy(&config));
        self.pool.set_limits(limits(&config));
        log::debug!(target: "MP0801", "configuration generation {generation} applied");
        prestart::start(&config.prestart_urls);
        *self.config.lock() = (generation, config);
    }

    /// Hands a pool event to its hook script.
    fn pool_event(&self, event: PoolEvent) {
        match event {
            PoolEvent::Attached { pid, app_root } => self.hooks.notify(
                "attached_process",
                vec![
                    ("PASSENGER_PROCESS_PID", pid.to_string()),
                    ("PASSENGER_APP_ROOT", app_root),
                ],
            ),
            PoolEvent::Detached { pid, app_root } => self.hooks.notify(
                "detached_process",
                vec![
                    ("PASSENGER_PROCESS_PID", pid.to_string()),
                    ("PASSENGER_APP_ROOT", app_root),
                ],
            ),
            PoolEvent::SpawnFailed {
                app_root,
                group,
                message,
                error_id,
            } => self.hooks.notify(
                "spawn_failed",
                vec![
                    ("PASSENGER_APP_ROOT", app_root),
                    ("PASSENGER_APP_GROUP_NAME", group),
                    ("PASSENGER_ERROR_MESSAGE", message),
                    ("PASSENGER_ERROR_ID", error_id),
                ],
            ),
        }
    }

    /// Records Apache's description of itself (for `passenger-status`).
    pub fn set_server_software(&self, software: &str) {
        *self.server_software.lock() = software.to_owned();
    }

    /// PassengerDefaultRuby of the current configuration.
    pub fn default_ruby(&self) -> String {
        self.config.lock().1.default_ruby.clone()
    }

    /// The status document `passenger-status` shows (`docs/operations.md`).
    /// With `viewer`, only the app groups whose processes run as that uid.
    pub fn status(&self, viewer: Option<u32>) -> serde_json::Value {
        let (generation, max_pool_size) = {
            let config = self.config.lock();
            (config.0, config.1.max_pool_size)
        };
        let groups: Vec<serde_json::Value> = self
            .pool
            .snapshot()
            .into_iter()
            .map(|g| {
                serde_json::json!({
                    "name": g.name,
                    "app_root": g.app_root,
                    "app_type": g.app_type,
                    "environment": g.environment,
                    "waiting": g.waiting,
                    "spawning": g.spawning,
                    "processes": g.processes.iter().map(|p| serde_json::json!({
                        "pid": p.pid,
                        "owner": crate::procfs::owner(p.pid).map(|(uid, gid)| serde_json::json!({
                            "uid": uid,
                            "gid": gid,
                            "user": nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name),
                            "group": nix::unistd::Group::from_gid(gid.into()).ok().flatten().map(|g| g.name),
                        })),
                        "concurrency": p.concurrency,
                        "sessions": p.sessions,
                        "streams": p.streams,
                        "processed": p.processed,
                        "detached": p.detached,
                        "idle_ms": p.idle_for.as_millis() as u64,
                        "uptime_ms": crate::procfs::age(p.pid).unwrap_or(p.uptime).as_millis() as u64,
                        "cpu_ms": crate::procfs::cpu_time(p.pid).map(|t| t.as_millis() as u64),
                        "rss_kib": crate::procfs::resident_kib(p.pid),
                    })).collect::<Vec<_>>(),
                })
            })
            // A viewer sees the groups with a process of its own uid.
            .filter(|g: &serde_json::Value| {
                viewer.is_none_or(|uid| {
                    g["processes"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["owner"]["uid"] == uid))
                })
            })
            .collect();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "instance": String::from_utf8_lossy(&self.instance_name()),
            "server_software": *self.server_software.lock(),
            "pid": std::process::id(),
            "generation": generation,
            "max_pool_size": max_pool_size,
            "groups": groups,
        })
    }
}

fn limits(config: &ServerConfig) -> Limits {
    Limits {
        max_pool_size: config.max_pool_size.max(1) as usize,
        max_instances_per_app: config.max_instances_per_app as usize,
        pool_idle_time: Duration::from_secs(config.pool_idle_time),
        stat_throttle: Duration::from_secs(config.stat_throttle_rate),
    }
}

fn user_policy(config: &ServerConfig) -> UserPolicy {
    UserPolicy {
        user_switching: config.user_switching,
        default_user: config.default_user.clone(),
        default_group: config.default_group.clone(),
    }
}

/// Runs the agent until Apache goes away or it is told to stop.
pub fn run(args: Args) -> Result<(), String> {
    let _ = nix::unistd::setsid();
    let signals = server::block_shutdown_signals()?;
    let instance = InstanceDir::create(&args.instance_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.instance_dir.display()))?;
    let listener = server::bind(&instance.socket(), args.apache_gid)
        .map_err(|e| format!("cannot listen on {}: {e}", instance.socket().display()))?;

    let defaults = ServerConfig::from_json(&serde_json::json!({})).map_err(|e| e.to_string())?;
    let spawner = Arc::new(LoaderSpawner::new(
        instance.apps_dir(),
        instance.loaders_dir(),
        user_policy(&defaults),
    ));
    let pool = Pool::new(spawner.clone(), limits(&defaults));
    let (stop_tx, stop_rx) = crossbeam::channel::bounded::<&'static str>(4);
    let agent = Arc::new(Agent {
        pool,
        apache_pid: args.apache_pid,
        spawner,
        instance: instance.clone(),
        config: Mutex::new((0, defaults)),
        hooks: hooks::Hooks::start()?,
        stop: stop_tx.clone(),
        initialized: std::sync::atomic::AtomicBool::new(false),
        own_config: args.own_config.is_some(),
        server_software: Mutex::new(String::new()),
        requests: Arc::default(),
    });
    let observer = Arc::downgrade(&agent);
    agent.pool.set_observer(Box::new(move |event| {
        if let Some(agent) = observer.upgrade() {
            agent.pool_event(event);
        }
    }));

    server::spawn_signal_thread(signals, stop_tx.clone())?;
    if let Some(pid) = args.apache_pid {
        server::spawn_parent_watch(pid, stop_tx.clone())?;
    }
    server::spawn_idle_collector(Arc::downgrade(&agent.pool))?;
    let requests = server::Door::Requests {
        apache_uid: args.apache_uid,
    };
    server::spawn_acceptor(Arc::clone(&agent), listener, requests)?;
    if let Some(path) = &args.socket_file {
        let listener = server::bind(path, args.apache_gid)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        server::spawn_acceptor(Arc::clone(&agent), listener, requests)?;
    }
    let status_path = crate::instance::status_socket(&instance.dir);
    let status = server::bind_status(&status_path)
        .map_err(|e| format!("cannot listen on {}: {e}", status_path.display()))?;
    server::spawn_acceptor(Arc::clone(&agent), status, server::Door::Status)?;
    if let Some(config) = args.own_config.clone() {
        agent.configure(1, config)?;
    }
    log::info!(target: "MP0802", "passenger agent {} serving {}", std::process::id(), instance.dir.display());

    let _thread = crate::trace::register_thread("main");
    let reason = {
        let _trace = crate::trace_point!("run", "waiting for a stop signal");
        stop_rx.recv().unwrap_or("all stop senders are gone")
    };
    log::info!(target: "MP0803", "shutting down: {reason}");
    instance.unlink_socket();
    if let Some(path) = &args.socket_file {
        let _ = std::fs::remove_file(path);
    }
    agent.hooks.current().run("before_watchdog_shutdown", &[]);
    agent.pool.shutdown(Duration::from_secs(10));
    agent.hooks.flush(Duration::from_secs(30));
    agent.hooks.current().run("after_watchdog_shutdown", &[]);
    instance.remove();
    Ok(())
}
