//! Starting application processes.
//!
//! A spawn is a short journey of recorded steps:
//!
//! ```text
//! prepare   resolve the user and group, the interpreter and the loader;
//!           create the app's listening socket (the agent owns its path)
//! exec      fork and exec the loader as the app's user (see `exec`)
//! ready     wait, up to PassengerStartTimeout, for the loader's READY
//!           frame on the readiness pipe (fd 4)
//! ```
//!
//! A failure is data ([`Error`]): the step, what went wrong, the app's own
//! report (a traceback), its output, and the user and group it ran as, so
//! the log and the error page can say where and why it failed.
//!
//! The process is watched by a thread that relays its output to the log
//! and reaps it ([`ProcessHandle`]); the pool hears of its exit through
//! [`ProcessHandle::on_exit`].

#[cfg(test)]
pub mod dummy;
mod exec;
pub mod identity;
pub mod pidfd;
pub mod process;

use std::collections::VecDeque;
use std::fmt;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use parking_lot::Mutex;

use crate::config::{AppOptions, AppType, SpawnMethod};
use crate::protocol::{Connection, Message, parse_frame};
pub use identity::{Identity, resolve_identity};
pub use process::ProcessHandle;

/// The steps of a spawn, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Resolving users, files and the socket.
    Prepare,
    /// Starting the loader.
    Exec,
    /// Waiting for the app to load and report readiness.
    Ready,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Prepare => "preparing the spawn",
            Step::Exec => "starting the loader",
            Step::Ready => "loading the application",
        })
    }
}

/// A failed spawn, with everything needed to explain it.
#[derive(Debug, Clone)]
pub struct Error {
    /// The step that failed.
    pub step: Step,
    /// One line: what went wrong.
    pub summary: String,
    /// More detail, such as the app's traceback.
    pub details: String,
    /// The last lines the process printed.
    pub output: String,
    /// The user the app was (to be) started as.
    pub user: String,
    /// The group the app was (to be) started as.
    pub group: String,
    /// The application root.
    pub app_root: String,
    /// How long the spawn ran before it failed.
    pub elapsed: Duration,
    /// The id under which the failure was logged (shown on plain error pages).
    pub id: String,
}

/// A short random id that ties an error page to its log lines.
pub fn new_error_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the application in {} could not be started while {} (as user {}, group {}): {}",
            self.app_root, self.step, self.user, self.group, self.summary
        )
    }
}

impl std::error::Error for Error {}

/// A process that reported readiness.
#[derive(Debug)]
pub struct Spawned {
    /// Its handle (pid, signals, exit notification).
    pub handle: Arc<ProcessHandle>,
    /// The path the agent connects to.
    pub socket: PathBuf,
    /// How many requests it takes at once (0 = unlimited).
    pub concurrency: u32,
}

/// Something that starts application processes. The pool holds one; tests
/// give it a stand-in.
pub trait Spawner: Send + Sync {
    /// Starts one process of the app described by `options`.
    fn spawn(&self, options: &AppOptions) -> Result<Spawned, Box<Error>>;

    /// The app `group` restarts: drop what was kept for it (a preloader).
    fn forget(&self, _group: &str) {}

    /// Stops what has been idle too long (preloaders).
    fn collect_idle(&self) {}

    /// Stops everything kept (at agent shutdown).
    fn shutdown(&self) {}
}

/// Identity rules that come from the server configuration.
#[derive(Debug, Clone)]
pub struct UserPolicy {
    /// PassengerUserSwitching.
    pub user_switching: bool,
    /// PassengerDefaultUser.
    pub default_user: String,
    /// PassengerDefaultGroup (None: the default user's primary group).
    pub default_group: Option<String>,
}

/// The real spawner: runs the loaders shipped in the instance directory.
pub struct LoaderSpawner {
    apps_dir: PathBuf,
    loaders_dir: PathBuf,
    policy: Mutex<UserPolicy>,
    next_id: AtomicU64,
    /// Apps whose fall-back to the default user was logged already.
    fallbacks_logged: Mutex<std::collections::HashSet<String>>,
    /// Preloaders by app group (smart spawning).
    preloaders: Mutex<std::collections::HashMap<String, Arc<Preloader>>>,
}

/// How many lines of a process's output are kept for error reports.
const KEPT_OUTPUT_LINES: usize = 40;

/// The PATH apps get, and where interpreters are looked up.
const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl LoaderSpawner {
    /// A spawner that creates sockets in `apps_dir` and runs loaders from `loaders_dir`.
    pub fn new(apps_dir: PathBuf, loaders_dir: PathBuf, policy: UserPolicy) -> LoaderSpawner {
        LoaderSpawner {
            apps_dir,
            loaders_dir,
            policy: Mutex::new(policy),
            next_id: AtomicU64::new(1),
            fallbacks_logged: Mutex::new(std::collections::HashSet::new()),
            preloaders: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Applies a new configuration generation's user rules.
    pub fn set_policy(&self, policy: UserPolicy) {
        *self.policy.lock() = policy;
    }
}

/// One spawn in progress: what failures are reported with.
struct Attempt<'a> {
    options: &'a AppOptions,
    ident: Option<Identity>,
    started: Instant,
}

impl Attempt<'_> {
    fn error(&self, step: Step, summary: String) -> Box<Error> {
        Box::new(Error {
            step,
            summary,
            details: String::new(),
            output: String::new(),
            user: self
                .ident
                .as_ref()
                .map_or_else(|| "?".into(), |i| i.user.name.clone()),
            group: self
                .ident
                .as_ref()
                .map_or_else(|| "?".into(), |i| i.group.name.clone()),
            app_root: self.options.app_root.clone(),
            elapsed: self.started.elapsed(),
            id: String::new(),
        })
    }

    fn ident(&self) -> &Identity {
        self.ident.as_ref().expect("resolved before use")
    }
}

/// A preloader: the app loaded once, forking workers on request.
struct Preloader {
    handle: Arc<ProcessHandle>,
    /// The control channel (FORK → FORKED); one spawn at a time.
    control: Mutex<Connection<UnixStream>>,
    last_used: Mutex<Instant>,
    idle_limit: Duration,
}

impl Preloader {
    fn stop(&self) {
        self.handle.terminate(Duration::from_secs(10));
    }
}

impl Spawner for LoaderSpawner {
    fn spawn(&self, options: &AppOptions) -> Result<Spawned, Box<Error>> {
        let mut attempt = Attempt {
            options,
            ident: None,
            started: Instant::now(),
        };
        let policy = self.policy.lock().clone();
        let ident =
            resolve_identity(options, &policy).map_err(|e| attempt.error(Step::Prepare, e))?;
        if let Some(reason) = &ident.fallback
            && self
                .fallbacks_logged
                .lock()
                .insert(options.app_group_name.clone())
        {
            log::info!(
                target: "MP0302",
                "{} runs as {}:{} (PassengerDefaultUser/PassengerDefaultGroup) because {reason}",
                options.app_group_name,
                ident.user.name,
                ident.group.name
            );
        }
        attempt.ident = Some(ident);
        identity::check_access(options, attempt.ident())
            .map_err(|e| attempt.error(Step::Prepare, e))?;
        let (program, args) = self
            .command_line(options)
            .map_err(|e| attempt.error(Step::Prepare, e))?;
        let smart = options.spawn_method == SpawnMethod::Smart
            && matches!(options.app_type, AppType::Rack | AppType::Wsgi);
        if !smart {
            return self.spawn_direct(&attempt, program, args);
        }
        // A preloader that died since its last fork is replaced once.
        for _ in 0..2 {
            let preloader = self.preloader(&attempt, &program, &args)?;
            match self.fork_from(&attempt, &preloader) {
                Ok(spawned) => return Ok(spawned),
                Err(e) if preloader.handle.has_exited() => {
                    log::warn!(target: "MP0306", "the preloader of {} is gone ({}); starting a new one", options.app_group_name, e.summary);
                    self.preloaders.lock().remove(&options.app_group_name);
                }
                Err(e) => return Err(e),
            }
        }
        Err(attempt.error(Step::Exec, "the preloader keeps failing".into()))
    }

    fn forget(&self, group: &str) {
        if let Some(preloader) = self.preloaders.lock().remove(group) {
            preloader.stop();
        }
    }

    fn collect_idle(&self) {
        let mut preloaders = self.preloaders.lock();
        preloaders.retain(|group, p| {
            let idle = p.last_used.lock().elapsed();
            let keep = !p.handle.has_exited() && (p.idle_limit.is_zero() || idle < p.idle_limit);
            if !keep {
                log::info!(target: "MP0307", "stopping the idle preloader of {group} (PassengerMaxPreloaderIdleTime)");
                p.stop();
            }
            keep
        });
    }

    fn shutdown(&self) {
        for (_, preloader) in self.preloaders.lock().drain() {
            preloader.stop();
        }
    }
}

impl LoaderSpawner {
    /// A fresh listening socket for one app process, in the agent's own directory.
    fn new_socket(&self, attempt: &Attempt) -> Result<(PathBuf, UnixListener), Box<Error>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let socket = self
            .apps_dir
            .join(format!("{}.{id}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(|e| {
            attempt.error(
                Step::Prepare,
                format!("cannot create the socket {}: {e}", socket.display()),
            )
        })?;
        Ok((socket, listener))
    }

    /// Starts the loader with `fd3` as its fd 3 and waits for READY.
    fn launch(
        &self,
        attempt: &Attempt,
        program: PathBuf,
        args: Vec<String>,
        fd3: std::os::fd::BorrowedFd,
        extra_env: &[(&str, &str)],
    ) -> Result<(Arc<ProcessHandle>, u32), Box<Error>> {
        let options = attempt.options;
        let mut env = app_environment(options, attempt.ident());
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let plan = exec::Plan {
            program,
            args,
            env,
            cwd: PathBuf::from(&options.app_root),
            identity: attempt.ident().clone(),
        };
        let launched = exec::launch(&plan, fd3).map_err(|e| attempt.error(Step::Exec, e))?;
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let handle = ProcessHandle::watch(launched.pid, launched.output, Arc::clone(&output));
        self.await_ready(attempt, handle, launched.ready, &output)
    }

    /// Waits for READY on `ready`; on failure kills the process and returns
    /// the error with its output.
    fn await_ready(
        &self,
        attempt: &Attempt,
        handle: Arc<ProcessHandle>,
        ready: OwnedFd,
        output: &Mutex<VecDeque<String>>,
    ) -> Result<(Arc<ProcessHandle>, u32), Box<Error>> {
        match wait_ready(ready, attempt.options.start_timeout) {
            Ok(concurrency) => Ok((handle, concurrency)),
            Err((summary, details)) => {
                handle.kill();
                handle.wait_exit(Duration::from_secs(2));
                let mut e = attempt.error(Step::Ready, summary);
                e.details = details;
                e.output = output.lock().iter().cloned().collect::<Vec<_>>().join("\n");
                Err(e)
            }
        }
    }

    fn log_started(attempt: &Attempt, what: &str, pid: i32) {
        let ident = attempt.ident();
        log::info!(
            target: "MP0301",
            "started {what} {} (pid {pid}) as {}:{} in {} ms",
            attempt.options.app_group_name,
            ident.user.name,
            ident.group.name,
            attempt.started.elapsed().as_millis()
        );
    }

    /// Direct spawning: one loader process per app process.
    fn spawn_direct(
        &self,
        attempt: &Attempt,
        program: PathBuf,
        args: Vec<String>,
    ) -> Result<Spawned, Box<Error>> {
        let (socket, listener) = self.new_socket(attempt)?;
        let launched = self.launch(attempt, program, args, listener.as_fd(), &[]);
        drop(listener);
        match launched {
            Ok((handle, concurrency)) => {
                Self::log_started(attempt, "a process of", handle.pid());
                Ok(Spawned {
                    handle,
                    socket,
                    concurrency,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                Err(e)
            }
        }
    }

    /// The running preloader of this app, started if needed.
    fn preloader(
        &self,
        attempt: &Attempt,
        program: &Path,
        args: &[String],
    ) -> Result<Arc<Preloader>, Box<Error>> {
        let group = &attempt.options.app_group_name;
        if let Some(p) = self
            .preloaders
            .lock()
            .get(group)
            .filter(|p| !p.handle.has_exited())
        {
            return Ok(Arc::clone(p));
        }
        let (ours, theirs) = UnixStream::pair().map_err(|e| {
            attempt.error(
                Step::Prepare,
                format!("cannot create the preloader's channel: {e}"),
            )
        })?;
        let (handle, _) = self.launch(
            attempt,
            program.to_path_buf(),
            args.to_vec(),
            theirs.as_fd(),
            &[("PASSENGER_SPAWN_METHOD", "smart")],
        )?;
        drop(theirs);
        Self::log_started(attempt, "the preloader of", handle.pid());
        let preloader = Arc::new(Preloader {
            handle,
            control: Mutex::new(Connection::new(ours)),
            last_used: Mutex::new(Instant::now()),
            idle_limit: attempt.options.max_preloader_idle_time,
        });
        if let Some(old) = self
            .preloaders
            .lock()
            .insert(group.clone(), Arc::clone(&preloader))
        {
            old.stop();
        }
        Ok(preloader)
    }

    /// Asks the preloader to fork a worker, checks the pid it reports, and
    /// waits for the worker's READY.
    fn fork_from(&self, attempt: &Attempt, preloader: &Preloader) -> Result<Spawned, Box<Error>> {
        let (socket, listener) = self.new_socket(attempt)?;
        let fail = |e: Box<Error>| {
            let _ = std::fs::remove_file(&socket);
            e
        };
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
        let ((ready_r, ready_w), (out_r, out_w)) = pipe()
            .and_then(|a| pipe().map(|b| (a, b)))
            .map_err(|e| fail(attempt.error(Step::Prepare, format!("cannot create pipes: {e}"))))?;
        let pid = {
            let mut control = preloader.control.lock();
            *preloader.last_used.lock() = Instant::now();
            let mut frame = Vec::new();
            Message::Fork.encode(0, &mut frame);
            let fds = [listener.as_raw_fd(), ready_w.as_raw_fd(), out_w.as_raw_fd()];
            let sent = nix::sys::socket::sendmsg::<nix::sys::socket::UnixAddr>(
                control.get_ref().as_raw_fd(),
                &[std::io::IoSlice::new(&frame)],
                &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
                nix::sys::socket::MsgFlags::empty(),
                None,
            );
            drop((listener, ready_w, out_w));
            sent.map_err(|e| {
                fail(attempt.error(Step::Exec, format!("cannot reach the preloader: {e}")))
            })?;
            let _ = control
                .get_ref()
                .set_read_timeout(Some(attempt.options.start_timeout));
            match control.read_frame() {
                Ok(Some((_, Message::Forked { pid }))) => pid as i32,
                Ok(Some((_, Message::Error { message, .. }))) => {
                    return Err(fail(attempt.error(
                        Step::Exec,
                        format!("the preloader could not fork: {message}"),
                    )));
                }
                other => {
                    return Err(fail(attempt.error(
                        Step::Exec,
                        format!("the preloader did not answer FORK: {other:?}"),
                    )));
                }
            }
        };
        let pidfd = verify_worker(
            pid,
            preloader.handle.pid(),
            attempt.ident().user.uid.as_raw(),
        )
        .map_err(|e| fail(attempt.error(Step::Exec, e)))?;
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let handle = ProcessHandle::watch_foreign(pid, pidfd, out_r, Arc::clone(&output));
        let (handle, concurrency) = self
            .await_ready(attempt, handle, ready_r, &output)
            .map_err(fail)?;
        Self::log_started(attempt, "a forked process of", pid);
        Ok(Spawned {
            handle,
            socket,
            concurrency,
        })
    }
}

/// Opens a pidfd for a worker a preloader says it forked, and checks that
/// the process really is the preloader's child running as the app's user.
/// The pid is never used otherwise.
fn verify_worker(pid: i32, preloader: i32, uid: u32) -> Result<OwnedFd, String> {
    let pidfd = pidfd::open(pid)
        .map_err(|e| format!("the preloader reported pid {pid}, which cannot be opened: {e}"))?;
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .map(str::to_owned)
    };
    let ppid = field("PPid:").and_then(|v| v.parse::<i32>().ok());
    let real_uid = field("Uid:").and_then(|v| v.parse::<u32>().ok());
    if ppid != Some(preloader) || real_uid != Some(uid) {
        return Err(format!(
            "the preloader reported pid {pid}, which is not its child running as uid {uid} (parent {ppid:?}, uid {real_uid:?})"
        ));
    }
    Ok(pidfd)
}

impl LoaderSpawner {
    /// The interpreter and arguments that run the app's loader.
    fn command_line(&self, options: &AppOptions) -> Result<(PathBuf, Vec<String>), String> {
        match options.app_type {
            AppType::Wsgi => {
                let python = match &options.python {
                    Some(python) => find_program(python)
                        .ok_or_else(|| format!("PassengerPython {python} was not found"))?,
                    None => find_program("python3")
                        .or_else(|| find_program("python"))
                        .ok_or_else(|| {
                            "neither python3 nor python was found in PATH; set PassengerPython"
                                .to_owned()
                        })?,
                };
                let loader = self.loaders_dir.join("wsgi-loader.py");
                Ok((python, vec![loader.to_string_lossy().into_owned()]))
            }
            AppType::Rack => {
                let ruby = find_program(&options.ruby)
                    .ok_or_else(|| format!("PassengerRuby {} was not found", options.ruby))?;
                let loader = self.loaders_dir.join("rack-loader.rb");
                Ok((ruby, vec![loader.to_string_lossy().into_owned()]))
            }
            AppType::Node => {
                let node = find_program(&options.nodejs)
                    .ok_or_else(|| format!("PassengerNodejs {} was not found", options.nodejs))?;
                let loader = self.loaders_dir.join("node-loader.js");
                Ok((node, vec![loader.to_string_lossy().into_owned()]))
            }
            other => Err(format!(
                "{} applications are not supported yet",
                other.name()
            )),
        }
    }
}

/// Finds a program by absolute path or in [`SAFE_PATH`].
fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    SAFE_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// The environment an app process starts with.
fn app_environment(options: &AppOptions, ident: &Identity) -> Vec<(String, String)> {
    let home = ident.user.dir.to_string_lossy().into_owned();
    let shell = ident.user.shell.to_string_lossy().into_owned();
    let mut env = vec![
        ("PATH".to_owned(), SAFE_PATH.to_owned()),
        ("HOME".to_owned(), home),
        ("USER".to_owned(), ident.user.name.clone()),
        ("LOGNAME".to_owned(), ident.user.name.clone()),
        ("SHELL".to_owned(), shell),
        (
            "LANG".to_owned(),
            std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".to_owned()),
        ),
        ("PYTHONUNBUFFERED".to_owned(), "1".to_owned()),
        ("PASSENGER_APP_ROOT".to_owned(), options.app_root.clone()),
        (
            "PASSENGER_STARTUP_FILE".to_owned(),
            options.startup_file.clone(),
        ),
        (
            "PASSENGER_APP_TYPE".to_owned(),
            options.app_type.name().to_owned(),
        ),
        (
            "PASSENGER_APP_GROUP_NAME".to_owned(),
            options.app_group_name.clone(),
        ),
    ];
    for var in [
        "PASSENGER_APP_ENV",
        "RAILS_ENV",
        "RACK_ENV",
        "WSGI_ENV",
        "NODE_ENV",
    ] {
        env.push((var.to_owned(), options.app_env.clone()));
    }
    if let Some(base) = &options.base_uri {
        for var in [
            "PASSENGER_BASE_URI",
            "RAILS_RELATIVE_URL_ROOT",
            "RACK_BASE_URI",
        ] {
            env.push((var.to_owned(), base.clone()));
        }
    }
    env
}

/// Waits for READY (returns its concurrency) or SPAWN_ERROR on the
/// readiness pipe, up to `timeout`.
fn wait_ready(pipe: OwnedFd, timeout: Duration) -> Result<u32, (String, String)> {
    let deadline = Instant::now() + timeout;
    let mut file = std::fs::File::from(pipe);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match parse_frame(&buf) {
            Ok(Some((_, Message::Ready { concurrency }, _))) => return Ok(concurrency),
            Ok(Some((_, Message::SpawnError { summary, details }, _))) => {
                return Err((
                    String::from_utf8_lossy(&summary).into_owned(),
                    String::from_utf8_lossy(&details).into_owned(),
                ));
            }
            Ok(Some((_, other, _))) => {
                return Err((
                    format!(
                        "the loader sent an unexpected frame (type {:#04x})",
                        other.kind()
                    ),
                    String::new(),
                ));
            }
            Ok(None) => {}
            Err(e) => {
                return Err((
                    format!("the loader's readiness report is invalid: {e}"),
                    String::new(),
                ));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err((
                format!(
                    "the application did not become ready within {} s (PassengerStartTimeout)",
                    timeout.as_secs()
                ),
                String::new(),
            ));
        }
        let millis = u16::try_from(left.as_millis().min(10_000)).unwrap_or(10_000);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err((
                    format!("cannot wait for the application: {e}"),
                    String::new(),
                ));
            }
        }
        match file.read(&mut chunk) {
            Ok(0) => {
                return Err((
                    "the application exited before it became ready".to_owned(),
                    String::new(),
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err((
                    format!("cannot read the readiness pipe: {e}"),
                    String::new(),
                ));
            }
        }
    }
}

/// Whether `pid` is a live (not zombie) process; for tests.
#[cfg(test)]
pub fn process_alive_for_tests(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}
