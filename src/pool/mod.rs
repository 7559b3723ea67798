//! The application pool: groups of app processes, their limits and queues.
//!
//! A *group* is one application (app root + environment, named like
//! `/srv/app (production)`). Each has processes, a queue of requests that
//! wait for one, and at most one spawn in progress at a time.
//!
//! ```text
//! checkout(options) ─┬─ a process with a free slot?  → Lease (session += 1)
//!                    ├─ queue full?                  → QueueFull (503)
//!                    └─ wait in the group's queue; spawn if the limits allow
//! Lease dropped      → checkin: session −= 1, connection kept for reuse,
//!                      the next waiter (of any group) is served
//! Release            → session −= 1, stream += 1: the process takes other
//!                      requests; the stream keeps it alive until the
//!                      lease is dropped (a hijacked request the app left
//!                      to its own threads)
//! ```
//!
//! Locking: one `parking_lot::Mutex` over all groups. Every critical
//! section is short bookkeeping: no I/O, no spawning and no channel send
//! happens while it is held (work found under the lock is carried out after
//! it is released). One lock is right here because the decisions that
//! matter (the pool-wide process limit, taking an idle process from one
//! group for another) span groups. Waiters get their lease through a
//! one-shot [`handoff`] that parks them at once and needs no pool lock to
//! wake them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::AppOptions;
use crate::protocol::Connection;
use crate::spawn::{self, ProcessHandle, Spawner};

mod handoff;

/// A connection from the agent to an app process.
pub type AppConnection = Connection<UnixStream>;

/// How long a process told to stop may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long a process whose request overran gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Pool-wide limits (from the server configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// PassengerMaxPoolSize: processes across all apps.
    pub max_pool_size: usize,
    /// PassengerMaxInstancesPerApp: processes per app (0 = no limit).
    pub max_instances_per_app: usize,
    /// PassengerPoolIdleTime (zero = never shut idle processes down).
    pub pool_idle_time: Duration,
    /// PassengerStatThrottleRate: how often restart files are checked.
    pub stat_throttle: Duration,
}

/// Why a checkout failed.
#[derive(Debug, Clone)]
pub enum CheckoutError {
    /// The group's queue is full (PassengerMaxRequestQueueSize).
    QueueFull,
    /// The request waited longer than PassengerMaxRequestQueueTime.
    QueueTimeout,
    /// The app could not be started.
    SpawnFailed(Arc<spawn::Error>),
    /// The agent is shutting down.
    ShuttingDown,
}

impl fmt::Display for CheckoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckoutError::QueueFull => f.write_str("the request queue is full"),
            CheckoutError::QueueTimeout => f.write_str("the request waited too long in the queue"),
            CheckoutError::SpawnFailed(e) => write!(f, "{e}"),
            CheckoutError::ShuttingDown => f.write_str("the agent is shutting down"),
        }
    }
}

/// One app process as the pool sees it.
struct Process {
    id: u64,
    handle: Arc<ProcessHandle>,
    socket: PathBuf,
    /// Requests it takes at once; 0 = unlimited.
    concurrency: u32,
    /// Requests it is serving now.
    sessions: u32,
    /// Requests the app released (see [`Release`]) that still stream:
    /// they keep the process alive, not busy.
    streams: u32,
    /// Connections ready for the next request.
    idle: Vec<AppConnection>,
    /// Requests served so far.
    processed: u64,
    last_used: Instant,
    /// When it joined the pool.
    spawned_at: Instant,
    /// Taken out of rotation: it stops once its sessions and streams end.
    detached: bool,
    /// The app asked for out-of-band work after its last request.
    oob_pending: bool,
    /// Doing out-of-band work now: out of rotation until it is done.
    in_oob: bool,
}

impl Process {
    /// Serving a request, or streaming one it released.
    fn busy(&self) -> bool {
        self.sessions > 0 || self.streams > 0
    }

    fn has_free_slot(&self) -> bool {
        !self.detached
            && !self.in_oob
            && (self.concurrency == 0 || self.sessions < self.concurrency)
    }
}

/// How long a process may take for its out-of-band work.
const OOB_TIMEOUT: Duration = Duration::from_secs(60);

type Waiter = handoff::Filler<Result<Lease, CheckoutError>>;

/// The restart files as last seen (reference §4.8, done better: any
/// change of restart.txt's mtime counts, to the nanosecond, and
/// always_restart.txt restarts on every request, not once per window).
#[derive(Debug, Clone, Default)]
struct RestartWatch {
    /// The first check only records what is there.
    initialized: bool,
    /// restart.txt's modification time; `None` when absent.
    restart_mtime: Option<std::time::SystemTime>,
    /// always_restart.txt existed at the last check.
    always: bool,
    /// When the next check is due.
    next_check: Option<Instant>,
}

/// One application.
struct Group {
    options: Arc<AppOptions>,
    /// What the restart files looked like at the last check.
    restart: RestartWatch,
    /// Bumped on restart, so a spawn started for old options is discarded.
    generation: u64,
    processes: Vec<Process>,
    spawning: bool,
    /// The last spawn attempt failed.
    last_spawn_failed: bool,
    waiters: VecDeque<Waiter>,
}

impl Group {
    fn live(&self) -> usize {
        self.processes.iter().filter(|p| !p.detached).count()
    }
}

struct State {
    limits: Limits,
    groups: HashMap<String, Group>,
    next_process_id: u64,
    shutting_down: bool,
}

impl State {
    /// Processes that count against PassengerMaxPoolSize.
    fn capacity_used(&self) -> usize {
        self.groups
            .values()
            .map(|g| g.live() + usize::from(g.spawning))
            .sum()
    }
}

/// Work decided under the lock and carried out after it is released.
#[derive(Default)]
struct Deferred {
    deliveries: Vec<(Waiter, Result<Lease, CheckoutError>)>,
    spawns: Vec<(String, Arc<AppOptions>, u64)>,
    stops: Vec<(Arc<ProcessHandle>, PathBuf)>,
    /// Groups that restarted: the spawner drops their preloaders.
    forgets: Vec<String>,
    /// Out-of-band work to start: group, process id, socket, idle connection.
    oobs: Vec<(String, u64, PathBuf, Option<AppConnection>)>,
    /// Events for the observer (the agent's hook scripts).
    events: Vec<PoolEvent>,
}

/// What happened to the pool's processes, for [`Pool::set_observer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEvent {
    /// A process was spawned and joined the pool.
    Attached {
        /// Its pid.
        pid: i32,
        /// Its app's root.
        app_root: String,
    },
    /// A process left the pool (exited, idle, restarted, over a limit).
    Detached {
        /// Its pid.
        pid: i32,
        /// Its app's root.
        app_root: String,
    },
    /// A process could not be spawned.
    SpawnFailed {
        /// The app's root.
        app_root: String,
        /// The app group's name.
        group: String,
        /// What went wrong.
        message: String,
        /// The error id of the log and the error page.
        error_id: String,
    },
}

/// Receives the pool's events, outside its lock.
pub type Observer = Box<dyn Fn(PoolEvent) + Send + Sync>;

/// The pool.
pub struct Pool {
    state: Mutex<State>,
    spawner: Arc<dyn Spawner>,
    me: Weak<Pool>,
    observer: std::sync::OnceLock<Observer>,
}

/// A checked-out slot on a process; dropping it checks the slot back in.
pub struct Lease {
    pool: Arc<Pool>,
    group: String,
    process_id: u64,
    pid: i32,
    socket: PathBuf,
    conn: Option<AppConnection>,
    reusable: bool,
    /// The response asked for out-of-band work (`!~Request-OOB-Work`).
    oob: bool,
    /// How long the request waited in the queue for this slot.
    queued_for: Duration,
    /// The slot went back to the pool before the request ended (see
    /// [`Release`]).
    released: bool,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lease({} pid {})", self.group, self.pid)
    }
}

impl Lease {
    /// The process's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The connection to the process, connecting if there is no idle one,
    /// with the means to release the slot while the connection is in use.
    pub fn connection(&mut self) -> io::Result<(&mut AppConnection, Release<'_>)> {
        if self.conn.is_none() {
            self.conn = Some(Connection::new(UnixStream::connect(&self.socket)?));
        }
        let release = Release {
            pool: &self.pool,
            group: &self.group,
            process_id: self.process_id,
            released: &mut self.released,
        };
        Ok((self.conn.as_mut().expect("set above"), release))
    }

    /// Whether the connection came from the idle list (it may be stale).
    pub fn has_connection(&self) -> bool {
        self.conn.is_some()
    }

    /// Drops the current connection (after an error on it).
    pub fn discard_connection(&mut self) {
        self.conn = None;
    }

    /// Marks the request as cleanly finished: the connection is kept.
    pub fn finish(mut self) {
        self.reusable = true;
    }

    /// How long the request waited in the queue for this slot (zero: a
    /// free slot was there).
    pub fn queued_for(&self) -> Duration {
        self.queued_for
    }

    /// The app asked for out-of-band work once this request is done.
    pub fn request_oob(&mut self) {
        self.oob = true;
    }

    /// Stops this lease's process at once (SIGTERM, SIGKILL after a short
    /// grace): its request overran PassengerMaxRequestTime.
    pub fn kill_process(&self) {
        self.pool.kill(&self.group, self.process_id);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let end = if self.released {
            // The app closes a released request's connection: never reused.
            SlotEnd::StreamOver
        } else {
            SlotEnd::Finished {
                conn: if self.reusable {
                    self.conn.take()
                } else {
                    None
                },
                oob: self.oob,
            }
        };
        self.pool.checkin(&self.group, self.process_id, end);
    }
}

/// Gives a lease's slot back while its request goes on: the app hijacked
/// the request's connection and returned (`RELEASE`), and streams the
/// rest from threads of its own. The process may take another request at
/// once; the request, now a stream of the process, keeps it alive (no idle
/// shutdown, no stop on restart) until the lease is dropped.
pub struct Release<'a> {
    pool: &'a Pool,
    group: &'a str,
    process_id: u64,
    released: &'a mut bool,
}

impl Release<'_> {
    /// Releases the slot; a second call does nothing.
    pub fn release(&mut self) {
        if !*self.released {
            *self.released = true;
            self.pool
                .checkin(self.group, self.process_id, SlotEnd::Released);
        }
    }
}

/// How a slot comes back to the pool.
enum SlotEnd {
    /// The request is over; its connection, if clean, goes to the idle
    /// list; out-of-band work was asked for, or not.
    Finished {
        conn: Option<AppConnection>,
        oob: bool,
    },
    /// The request goes on as a stream (see [`Release`]).
    Released,
    /// A released request is over.
    StreamOver,
}

impl Pool {
    /// A pool that starts processes with `spawner`.
    pub fn new(spawner: Arc<dyn Spawner>, limits: Limits) -> Arc<Pool> {
        Arc::new_cyclic(|me| Pool {
            state: Mutex::new(State {
                limits,
                groups: HashMap::new(),
                next_process_id: 1,
                shutting_down: false,
            }),
            spawner,
            me: me.clone(),
            observer: std::sync::OnceLock::new(),
        })
    }

    /// Sets who hears of processes attached, detached and failing to
    /// spawn (once; later calls are ignored).
    pub fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    fn arc(&self) -> Arc<Pool> {
        self.me
            .upgrade()
            .expect("the pool is alive while its methods run")
    }

    /// Applies new limits (a new configuration generation).
    pub fn set_limits(&self, limits: Limits) {
        let mut deferred = Deferred::default();
        {
            let mut state = self.state.lock();
            state.limits = limits;
            let names: Vec<String> = state.groups.keys().cloned().collect();
            for name in names {
                self.plan_spawn(&mut state, &name, &mut deferred);
            }
        }
        self.run(deferred);
    }

    /// Gets a slot on a process of the app described by `options`, waiting
    /// in the app's queue (and spawning) as needed.
    pub fn checkout(&self, options: &AppOptions) -> Result<Lease, CheckoutError> {
        let name = options.app_group_name.clone();
        let max_wait = match options.max_request_queue_time {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        let (restart, first_seen) = self.check_restart_files(&name, options);
        let mut deferred = Deferred::default();
        let slot = {
            let mut state = self.state.lock();
            if state.shutting_down {
                return Err(CheckoutError::ShuttingDown);
            }
            let group = state.groups.entry(name.clone()).or_insert_with(|| Group {
                options: Arc::new(options.clone()),
                restart: first_seen.unwrap_or_default(),
                generation: 0,
                processes: Vec::new(),
                spawning: false,
                last_spawn_failed: false,
                waiters: VecDeque::new(),
            });
            let reason = if needs_restart(&group.options, options) {
                Some("its options changed")
            } else {
                restart
            };
            if let Some(reason) = reason {
                log::info!(target: "MP0401", "restarting {name}: {reason}");
                group.options = Arc::new(options.clone());
                group.generation += 1;
                detach_all(group, &mut deferred);
                deferred.forgets.push(name.clone());
            }
            if let Some(lease) = self.assign(group, &name) {
                return Ok(lease);
            }
            let max_queue = group.options.max_request_queue_size as usize;
            if max_queue > 0 && group.waiters.len() >= max_queue {
                return Err(CheckoutError::QueueFull);
            }
            let (filler, slot) = handoff::handoff();
            group.waiters.push_back(filler);
            self.plan_spawn(&mut state, &name, &mut deferred);
            slot
        };
        self.run(deferred);
        let _trace = crate::trace_point!(
            "Pool::checkout",
            format_args!("waiting in the queue of {name}")
        );
        let queued_at = Instant::now();
        let result = match slot.wait(max_wait) {
            Ok(result) => result,
            Err(handoff::WaitError::TimedOut) => Err(CheckoutError::QueueTimeout),
            Err(handoff::WaitError::Closed) => Err(CheckoutError::ShuttingDown),
        };
        result.map(|mut lease| {
            lease.queued_for = queued_at.elapsed();
            lease
        })
    }

    /// Checks the app's restart files when PassengerStatThrottleRate allows
    /// (always while `always_restart.txt` exists). The file system is read
    /// outside the pool lock; the lock only reserves the check. For an app
    /// that has no group yet, what the files look like is returned, to be
    /// recorded when its group is created: a restart.txt touched after the
    /// app's first request then counts.
    fn check_restart_files(
        &self,
        name: &str,
        options: &AppOptions,
    ) -> (Option<&'static str>, Option<RestartWatch>) {
        let previous = {
            let mut state = self.state.lock();
            let throttle = state.limits.stat_throttle;
            let now = Instant::now();
            match state.groups.get_mut(name) {
                Some(group) => {
                    let watch = &mut group.restart;
                    if !watch.always && watch.next_check.is_some_and(|next| now < next) {
                        return (None, None);
                    }
                    watch.next_check = Some(now + throttle);
                    Some(watch.clone())
                }
                None => None,
            }
        };
        let dir = options.restart_dir_path();
        let mtime = std::fs::metadata(dir.join("restart.txt"))
            .and_then(|m| m.modified())
            .ok();
        let always = dir.join("always_restart.txt").exists();
        let Some(previous) = previous else {
            let seen = RestartWatch {
                initialized: true,
                restart_mtime: mtime,
                always,
                next_check: None,
            };
            return (None, Some(seen));
        };
        let reason = if !previous.initialized {
            None
        } else if always {
            Some("always_restart.txt exists")
        } else if mtime.is_some() && mtime != previous.restart_mtime {
            Some("restart.txt was touched")
        } else {
            None
        };
        let mut state = self.state.lock();
        if let Some(group) = state.groups.get_mut(name) {
            group.restart.initialized = true;
            group.restart.restart_mtime = mtime;
            group.restart.always = always;
        }
        (reason, None)
    }

    /// Takes a free slot in `group`, if there is one.
    fn assign(&self, group: &mut Group, name: &str) -> Option<Lease> {
        let process = group
            .processes
            .iter_mut()
            .filter(|p| p.has_free_slot())
            .min_by_key(|p| p.sessions)?;
        process.sessions += 1;
        Some(Lease {
            pool: self.arc(),
            group: name.to_owned(),
            process_id: process.id,
            pid: process.handle.pid(),
            socket: process.socket.clone(),
            conn: process.idle.pop(),
            reusable: false,
            oob: false,
            queued_for: Duration::ZERO,
            released: false,
        })
    }

    /// Hands free slots of `name` to its waiters (deliveries are deferred).
    fn serve_waiters(&self, state: &mut State, name: &str, deferred: &mut Deferred) {
        let Some(group) = state.groups.get_mut(name) else {
            return;
        };
        while !group.waiters.is_empty() {
            let Some(lease) = self.assign(group, name) else {
                break;
            };
            let waiter = group.waiters.pop_front().expect("not empty");
            deferred.deliveries.push((waiter, Ok(lease)));
        }
    }

    /// Decides whether `name` should spawn a process now, making room in
    /// the pool by stopping an idle process of another app if needed.
    fn plan_spawn(&self, state: &mut State, name: &str, deferred: &mut Deferred) {
        let limits = state.limits;
        let used = state.capacity_used();
        let Some(group) = state.groups.get(name) else {
            return;
        };
        if group.spawning || state.shutting_down {
            return;
        }
        let live = group.live();
        let min = group.options.min_instances as usize;
        let busy = group.processes.iter().all(|p| !p.has_free_slot());
        // A sole process that wants out-of-band work gets a stand-in first,
        // so requests are never all blocked.
        let oob_needs_company = live == 1 && group.processes.iter().any(|p| p.oob_pending);
        // Keeping PassengerMinInstances up never retries a failing app by
        // itself: only a request does.
        let below_min = live < min && !group.last_spawn_failed;
        let wanted = (!group.waiters.is_empty() && busy) || below_min || oob_needs_company;
        if !wanted {
            return;
        }
        let per_app = [
            limits.max_instances_per_app,
            group.options.max_instances as usize,
        ]
        .into_iter()
        .filter(|&n| n > 0)
        .min();
        if per_app.is_some_and(|max| live >= max) {
            return;
        }
        if used >= limits.max_pool_size && !self.evict_idle_elsewhere(state, name, deferred) {
            return;
        }
        let group = state.groups.get_mut(name).expect("checked above");
        group.spawning = true;
        deferred.spawns.push((
            name.to_owned(),
            Arc::clone(&group.options),
            group.generation,
        ));
    }

    /// Stops the longest-idle process of another group to make room.
    fn evict_idle_elsewhere(&self, state: &mut State, name: &str, deferred: &mut Deferred) -> bool {
        let victim = state
            .groups
            .iter()
            .filter(|(other, _)| other.as_str() != name)
            .flat_map(|(other, g)| {
                g.processes
                    .iter()
                    .filter(|p| !p.detached && !p.busy())
                    .map(move |p| (other.clone(), p.id, p.last_used))
            })
            .min_by_key(|(_, _, last_used)| *last_used);
        let Some((other, id, _)) = victim else {
            return false;
        };
        let group = state.groups.get_mut(&other).expect("found above");
        log::info!(target: "MP0402", "stopping an idle process of {other} to make room for {name}");
        detach(group, id, deferred);
        true
    }

    /// Carries out work decided under the lock.
    fn run(&self, deferred: Deferred) {
        if let Some(observer) = self.observer.get() {
            for event in deferred.events {
                observer(event);
            }
        }
        for (waiter, result) in deferred.deliveries {
            // A waiter that gave up gives the result back; a lease in it
            // is dropped here, which checks it back in.
            let _ = waiter.fill(result);
        }
        for group in deferred.forgets {
            self.spawner.forget(&group);
        }
        for (name, id, socket, conn) in deferred.oobs {
            let pool = self.arc();
            let spawned = std::thread::Builder::new()
                .name("oob".into())
                .spawn(move || {
                    let _thread =
                        crate::trace::register_thread(format!("out-of-band work: {name}"));
                    pool.run_oob(&name, id, &socket, conn);
                });
            if let Err(e) = spawned {
                log::error!(target: "MP0403", "cannot start an out-of-band work thread: {e}");
            }
        }
        for (handle, socket) in deferred.stops {
            handle.terminate(STOP_GRACE);
            let _ = std::fs::remove_file(socket);
        }
        for (name, options, generation) in deferred.spawns {
            let pool = self.arc();
            let spawned = std::thread::Builder::new()
                .name("spawner".into())
                .spawn(move || {
                    let _thread =
                        crate::trace::register_thread(format!("Group process spawner: {name}"));
                    pool.spawn_one(&name, &options, generation);
                });
            if let Err(e) = spawned {
                log::error!(target: "MP0403", "cannot start a spawner thread: {e}");
            }
        }
    }

    /// Spawns one process for `name` (on a spawner thread).
    fn spawn_one(&self, name: &str, options: &Arc<AppOptions>, generation: u64) {
        let result = {
            let _trace = crate::trace_point!("Pool::spawn_one", options.app_root);
            self.spawner.spawn(options)
        };
        let mut deferred = Deferred::default();
        {
            let mut state = self.state.lock();
            let process_id = state.next_process_id;
            state.next_process_id += 1;
            let shutting_down = state.shutting_down;
            let Some(group) = state.groups.get_mut(name) else {
                if let Ok(spawned) = result {
                    deferred.stops.push((spawned.handle, spawned.socket));
                }
                drop(state);
                self.run(deferred);
                return;
            };
            group.spawning = false;
            group.last_spawn_failed = result.is_err();
            match result {
                Ok(spawned) if group.generation == generation && !shutting_down => {
                    let pool = self.me.clone();
                    let group_name = name.to_owned();
                    spawned.handle.on_exit(Box::new(move || {
                        if let Some(pool) = pool.upgrade() {
                            pool.process_exited(&group_name, process_id);
                        }
                    }));
                    deferred.events.push(PoolEvent::Attached {
                        pid: spawned.handle.pid(),
                        app_root: group.options.app_root.clone(),
                    });
                    group.processes.push(Process {
                        id: process_id,
                        handle: spawned.handle,
                        socket: spawned.socket,
                        concurrency: spawned.concurrency,
                        sessions: 0,
                        streams: 0,
                        idle: Vec::new(),
                        processed: 0,
                        last_used: Instant::now(),
                        spawned_at: Instant::now(),
                        detached: false,
                        oob_pending: false,
                        in_oob: false,
                    });
                    self.plan_oob(&mut state, name, &mut deferred);
                    self.serve_waiters(&mut state, name, &mut deferred);
                }
                Ok(spawned) => deferred.stops.push((spawned.handle, spawned.socket)),
                Err(mut e) => {
                    e.id = spawn::new_error_id();
                    log::error!(target: "MP0404", "error id {}: {e}", e.id);
                    if !e.details.is_empty() {
                        log::error!(target: "MP0404", "error id {}: details: {}", e.id, e.details);
                    }
                    deferred.events.push(PoolEvent::SpawnFailed {
                        app_root: group.options.app_root.clone(),
                        group: name.to_owned(),
                        message: e.to_string(),
                        error_id: e.id.clone(),
                    });
                    let e: Arc<spawn::Error> = Arc::from(e);
                    for waiter in group.waiters.drain(..) {
                        deferred
                            .deliveries
                            .push((waiter, Err(CheckoutError::SpawnFailed(Arc::clone(&e)))));
                    }
                }
            }
            self.plan_spawn(&mut state, name, &mut deferred);
        }
        self.run(deferred);
    }

    /// Returns a slot (from a dropped [`Lease`] or a [`Release`]).
    fn checkin(&self, name: &str, process_id: u64, end: SlotEnd) {
        let mut deferred = Deferred::default();
        {
            let mut state = self.state.lock();
            let Some(group) = state.groups.get_mut(name) else {
                return;
            };
            let max_requests = group.options.max_requests;
            let Some(process) = group.processes.iter_mut().find(|p| p.id == process_id) else {
                return;
            };
            process.last_used = Instant::now();
            match end {
                SlotEnd::Finished { conn, oob } => {
                    process.sessions -= 1;
                    process.processed += 1;
                    if let Some(conn) = conn
                        && !process.detached
                    {
                        process.idle.push(conn);
                    }
                    if oob && !process.detached {
                        process.oob_pending = true;
                    }
                }
                SlotEnd::Released => {
                    process.sessions -= 1;
                    process.streams += 1;
                    process.processed += 1;
                }
                SlotEnd::StreamOver => process.streams -= 1,
            }
            if max_requests > 0 && process.processed >= max_requests && !process.detached {
                log::info!(
                    target: "MP0405",
                    "process {} of {name} served {max_requests} requests (PassengerMaxRequests): replacing it",
                    process.handle.pid()
                );
                detach(group, process_id, &mut deferred);
            } else if process.detached && !process.busy() {
                remove_and_stop(group, process_id, &mut deferred);
            }
            self.plan_oob(&mut state, name, &mut deferred);
            self.serve_waiters(&mut state, name, &mut deferred);
            self.plan_spawn(&mut state, name, &mut deferred);
            // A freed process may be what another app is waiting for.
            let waiting: Vec<String> = state
                .groups
                .iter()
                .filter(|(other, g)| other.as_str() != name && !g.waiters.is_empty() && !g.spawning)
                .map(|(other, _)| other.clone())
                .collect();
            for other in waiting {
                self.plan_spawn(&mut state, &other, &mut deferred);
            }
        }
        self.run(deferred);
    }

    /// Starts out-of-band work on one process of `name` that asked for it,
    /// when it is idle, no other process of the app is doing such work, and
    /// another process can take requests meanwhile (reference §5.5).
    fn plan_oob(&self, state: &mut State, name: &str, deferred: &mut Deferred) {
        let Some(group) = state.groups.get_mut(name) else {
            return;
        };
        if group.processes.iter().any(|p| p.in_oob) {
            return;
        }
        let others_available = |id: u64| {
            group
                .processes
                .iter()
                .any(|p| p.id != id && p.has_free_slot())
        };
        let Some(id) = group
            .processes
            .iter()
            .find(|p| p.oob_pending && !p.busy() && !p.detached)
            .map(|p| p.id)
            .filter(|&id| others_available(id))
        else {
            return;
        };
        let process = group
            .processes
            .iter_mut()
            .find(|p| p.id == id)
            .expect("found above");
        process.oob_pending = false;
        process.in_oob = true;
        deferred.oobs.push((
            name.to_owned(),
            id,
            process.socket.clone(),
            process.idle.pop(),
        ));
    }

    /// Runs one process's out-of-band work (on its own thread).
    fn run_oob(&self, name: &str, id: u64, socket: &std::path::Path, conn: Option<AppConnection>) {
        let _trace = crate::trace_point!("Pool::run_oob", socket.display());
        let result = (|| -> Result<AppConnection, String> {
            let mut conn = match conn {
                Some(conn) => conn,
                None => Connection::new(UnixStream::connect(socket).map_err(|e| e.to_string())?),
            };
            conn.get_ref()
                .set_read_timeout(Some(OOB_TIMEOUT))
                .map_err(|e| e.to_string())?;
            conn.send(0, &crate::protocol::Message::OobWork)
                .map_err(|e| e.to_string())?;
            match conn.read_frame() {
                Ok(Some((_, crate::protocol::Message::OobDone))) => {
                    conn.get_ref()
                        .set_read_timeout(None)
                        .map_err(|e| e.to_string())?;
                    Ok(conn)
                }
                other => Err(format!("expected OOB_DONE, got {other:?}")),
            }
        })();
        let mut deferred = Deferred::default();
        {
            let mut state = self.state.lock();
            let Some(group) = state.groups.get_mut(name) else {
                return;
            };
            if let Some(process) = group.processes.iter_mut().find(|p| p.id == id) {
                process.in_oob = false;
                match result {
                    Ok(conn) => process.idle.push(conn),
                    Err(e) => {
                        log::warn!(target: "MP0408", "out-of-band work of process {} of {name} failed: {e}", process.handle.pid())
                    }
                }
            }
            self.plan_oob(&mut state, name, &mut deferred);
            self.serve_waiters(&mut state, name, &mut deferred);
            self.plan_spawn(&mut state, name, &mut deferred);
        }
        self.run(deferred);
    }

    /// Takes a process out of rotation and stops it without waiting for
    /// its requests.
    fn kill(&self, name: &str, process_id: u64) {
        let handle = {
            let mut state = self.state.lock();
            let Some(group) = state.groups.get_mut(name) else {
                return;
            };
            let Some(process) = group.processes.iter_mut().find(|p| p.id == process_id) else {
                return;
            };
            process.detached = true;
            process.idle.clear();
            Arc::clone(&process.handle)
        };
        handle.terminate(KILL_GRACE);
    }

    /// Called when a process exited, expectedly or not.
    fn process_exited(&self, name: &str, process_id: u64) {
        let mut deferred = Deferred::default();
        {
            let mut state = self.state.lock();
            let Some(group) = state.groups.get_mut(name) else {
                return;
            };
            let Some(index) = group.processes.iter().position(|p| p.id == process_id) else {
                return;
            };
            let process = group.processes.remove(index);
            let _ = std::fs::remove_file(&process.socket);
            deferred.events.push(PoolEvent::Detached {
                pid: process.handle.pid(),
                app_root: group.options.app_root.clone(),
            });
            if !process.detached {
                log::warn!(
                    target: "MP0406",
                    "process {} of {name} exited unexpectedly{}",
                    process.handle.pid(),
                    if process.sessions > 0 { " while serving a request" } else { "" }
                );
            }
            self.serve_waiters(&mut state, name, &mut deferred);
            self.plan_spawn(&mut state, name, &mut deferred);
        }
        self.run(deferred);
    }

    /// Stops processes idle longer than PassengerPoolIdleTime, keeping
    /// PassengerMinInstances per app; forgets groups with nothing left.
    pub fn collect_idle(&self) {
        let mut deferred = Deferred::default();
        {
            let mut state = self.state.lock();
            let idle_time = state.limits.pool_idle_time;
            for (name, group) in state.groups.iter_mut() {
                if idle_time.is_zero() {
                    break;
                }
                let min = group.options.min_instances as usize;
                let mut idle: Vec<(u64, Instant)> = group
                    .processes
                    .iter()
                    .filter(|p| !p.detached && !p.busy() && p.last_used.elapsed() >= idle_time)
                    .map(|p| (p.id, p.last_used))
                    .collect();
                idle.sort_by_key(|&(_, last_used)| last_used);
                let mut live = group.live();
                for (id, _) in idle {
                    if live <= min {
                        break;
                    }
                    log::info!(target: "MP0407", "stopping an idle process of {name} (PassengerPoolIdleTime)");
                    detach(group, id, &mut deferred);
                    live -= 1;
                }
            }
            state
                .groups
                .retain(|_, g| !g.processes.is_empty() || g.spawning || !g.waiters.is_empty());
        }
        self.run(deferred);
        self.spawner.collect_idle();
        self.enforce_memory_limits();
    }

    /// Replaces processes whose resident memory exceeds PassengerMemoryLimit:
    /// they leave the rotation and stop after their current request. Memory
    /// is read outside the lock.
    fn enforce_memory_limits(&self) {
        let watched: Vec<(String, u64, i32, u64)> = {
            let state = self.state.lock();
            state
                .groups
                .iter()
                .filter(|(_, g)| g.options.memory_limit > 0)
                .flat_map(|(name, g)| {
                    g.processes
                        .iter()
                        .filter(|p| !p.detached)
                        .map(move |p| (name.clone(), p.id, p.handle.pid(), g.options.memory_limit))
                })
                .collect()
        };
        let over: Vec<(String, u64, i32, u64, u64)> = watched
            .into_iter()
            .filter_map(|(name, id, pid, limit_mb)| {
                let rss_mb = crate::procfs::resident_kib(pid)? / 1024;
                (rss_mb > limit_mb).then_some((name, id, pid, rss_mb, limit_mb))
            })
            .collect();
        if over.is_empty() {
            return;
        }
        let mut deferred = Deferred::default();
        {
            let mut state = self.state.lock();
            for (name, id, pid, rss_mb, limit_mb) in over {
                let Some(group) = state.groups.get_mut(&name) else {
                    continue;
                };
                log::info!(
                    target: "MP0409",
                    "process {pid} of {name} uses {rss_mb} MB, over PassengerMemoryLimit {limit_mb} MB: replacing it after its current request"
                );
                detach(group, id, &mut deferred);
                self.plan_spawn(&mut state, &name, &mut deferred);
            }
        }
        self.run(deferred);
    }

    /// Stops every process and refuses further checkouts. Returns when all
    /// have exited or `timeout` has passed (stragglers are killed).
    pub fn shutdown(&self, timeout: Duration) {
        let mut events = Vec::new();
        let handles: Vec<(Arc<ProcessHandle>, PathBuf)> = {
            let mut state = self.state.lock();
            state.shutting_down = true;
            state
                .groups
                .values_mut()
                .flat_map(|g| {
                    g.waiters.clear();
                    for p in &g.processes {
                        events.push(PoolEvent::Detached {
                            pid: p.handle.pid(),
                            app_root: g.options.app_root.clone(),
                        });
                    }
                    g.processes.drain(..).map(|p| (p.handle, p.socket))
                })
                .collect()
        };
        self.spawner.shutdown();
        for (handle, _) in &handles {
            handle.signal(nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        for (handle, socket) in &handles {
            if !handle.wait_exit(deadline.saturating_duration_since(Instant::now())) {
                handle.kill();
                handle.wait_exit(Duration::from_secs(2));
            }
            let _ = std::fs::remove_file(socket);
        }
        self.run(Deferred {
            events,
            ..Deferred::default()
        });
    }

    /// A snapshot for status reports and tests.
    pub fn snapshot(&self) -> Vec<GroupSnapshot> {
        let state = self.state.lock();
        let mut groups: Vec<GroupSnapshot> = state
            .groups
            .iter()
            .map(|(name, g)| GroupSnapshot {
                name: name.clone(),
                app_root: g.options.app_root.clone(),
                app_type: g.options.app_type.name(),
                environment: g.options.app_env.clone(),
                waiting: g.waiters.len(),
                spawning: g.spawning,
                processes: g
                    .processes
                    .iter()
                    .map(|p| ProcessSnapshot {
                        pid: p.handle.pid(),
                        concurrency: p.concurrency,
                        sessions: p.sessions,
                        streams: p.streams,
                        processed: p.processed,
                        detached: p.detached,
                        idle_for: p.last_used.elapsed(),
                        uptime: p.spawned_at.elapsed(),
                    })
                    .collect(),
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        groups
    }
}

/// A group, as reported by [`Pool::snapshot`].
#[derive(Debug, Clone)]
pub struct GroupSnapshot {
    /// The group name.
    pub name: String,
    /// The app root.
    pub app_root: String,
    /// The app's type (`wsgi`, `rack`, `node`, ...).
    pub app_type: &'static str,
    /// Its environment (PassengerAppEnv).
    pub environment: String,
    /// Requests in the queue.
    pub waiting: usize,
    /// A spawn is in progress.
    pub spawning: bool,
    /// Its processes.
    pub processes: Vec<ProcessSnapshot>,
}

/// A process, as reported by [`Pool::snapshot`].
#[derive(Debug, Clone)]
pub struct ProcessSnapshot {
    /// Its pid.
    pub pid: i32,
    /// Requests it takes at once; 0 = unlimited.
    pub concurrency: u32,
    /// Requests in progress.
    pub sessions: u32,
    /// Requests the app released that still stream (see [`Release`]).
    pub streams: u32,
    /// Requests served.
    pub processed: u64,
    /// Leaving the pool.
    pub detached: bool,
    /// Time since it last finished a request.
    pub idle_for: Duration,
    /// Time since it joined the pool.
    pub uptime: Duration,
}

/// Whether new options change how the app's processes are started.
fn needs_restart(old: &AppOptions, new: &AppOptions) -> bool {
    old.app_root != new.app_root
        || old.app_type != new.app_type
        || old.startup_file != new.startup_file
        || old.app_env != new.app_env
        || old.python != new.python
        || old.ruby != new.ruby
        || old.nodejs != new.nodejs
        || old.user != new.user
        || old.group != new.group
        || old.spawn_method != new.spawn_method
}

/// Takes a process out of rotation; it stops when its last request ends.
fn detach(group: &mut Group, process_id: u64, deferred: &mut Deferred) {
    let Some(process) = group.processes.iter_mut().find(|p| p.id == process_id) else {
        return;
    };
    process.detached = true;
    process.idle.clear();
    if !process.busy() {
        remove_and_stop(group, process_id, deferred);
    }
}

fn detach_all(group: &mut Group, deferred: &mut Deferred) {
    let ids: Vec<u64> = group.processes.iter().map(|p| p.id).collect();
    for id in ids {
        detach(group, id, deferred);
    }
}

fn remove_and_stop(group: &mut Group, process_id: u64, deferred: &mut Deferred) {
    if let Some(index) = group.processes.iter().position(|p| p.id == process_id) {
        let process = group.processes.remove(index);
        deferred.events.push(PoolEvent::Detached {
            pid: process.handle.pid(),
            app_root: group.options.app_root.clone(),
        });
        deferred.stops.push((process.handle, process.socket));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::spawn::dummy::DummySpawner;

    fn options(root: &str, extra: &[(&str, &str)]) -> AppOptions {
        let mut pairs = vec![
            (b"PassengerAppRoot".to_vec(), root.as_bytes().to_vec()),
            (b"PassengerAppType".to_vec(), b"wsgi".to_vec()),
        ];
        pairs.extend(
            extra
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
        AppOptions::from_pairs(&pairs).expect("valid options")
    }

    fn pool(max_pool_size: usize) -> (Arc<Pool>, Arc<DummySpawner>) {
        pool_idle_after(max_pool_size, Duration::from_secs(300))
    }

    /// A pool whose processes are idle after `pool_idle_time`.
    fn pool_idle_after(
        max_pool_size: usize,
        pool_idle_time: Duration,
    ) -> (Arc<Pool>, Arc<DummySpawner>) {
        let spawner = Arc::new(DummySpawner::default());
        let limits = Limits {
            max_pool_size,
            max_instances_per_app: 0,
            pool_idle_time,
            stat_throttle: Duration::ZERO,
        };
        (Pool::new(spawner.clone(), limits), spawner)
    }

    fn live(pool: &Pool) -> usize {
        pool.snapshot()
            .iter()
            .map(|g| g.processes.iter().filter(|p| !p.detached).count())
            .sum()
    }

    fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_process_per_concurrent_request_up_to_the_pool_size() {
        let (pool, spawner) = pool(2);
        let a = pool.checkout(&options("/app", &[])).unwrap();
        let b = pool.checkout(&options("/app", &[])).unwrap();
        assert_ne!(a.pid(), b.pid());
        assert_eq!(spawner.spawned.load(Ordering::SeqCst), 2);
        // The pool is full: the third request waits for a free process.
        let waiter = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || pool.checkout(&options("/app", &[])).map(|l| l.pid()))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(spawner.spawned.load(Ordering::SeqCst), 2);
        let freed = a.pid();
        drop(a);
        assert_eq!(waiter.join().unwrap().unwrap(), freed);
        drop(b);
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn a_full_queue_is_refused() {
        let (pool, _) = pool(1);
        let held = pool
            .checkout(&options("/app", &[("PassengerMaxRequestQueueSize", "1")]))
            .unwrap();
        let queued = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                pool.checkout(&options("/app", &[("PassengerMaxRequestQueueSize", "1")]))
                    .is_ok()
            })
        };
        eventually("one request queued", || pool.snapshot()[0].waiting == 1);
        let refused = pool.checkout(&options("/app", &[("PassengerMaxRequestQueueSize", "1")]));
        assert!(matches!(refused, Err(CheckoutError::QueueFull)));
        drop(held);
        assert!(queued.join().unwrap());
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn a_spawn_failure_reaches_every_waiter() {
        let (pool, spawner) = pool(4);
        spawner.fail.store(true, Ordering::SeqCst);
        *spawner.delay.lock() = Duration::from_millis(200);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || pool.checkout(&options("/broken", &[])))
            })
            .collect();
        for w in waiters {
            assert!(matches!(
                w.join().unwrap(),
                Err(CheckoutError::SpawnFailed(_))
            ));
        }
        assert_eq!(
            spawner.spawned.load(Ordering::SeqCst),
            1,
            "one spawn serves all waiters"
        );
    }

    #[test]
    fn an_idle_process_of_another_app_makes_room() {
        let (pool, _) = pool(1);
        let a = pool.checkout(&options("/a", &[])).unwrap();
        let a_pid = a.pid();
        drop(a);
        let b = pool.checkout(&options("/b", &[])).unwrap();
        assert_ne!(b.pid(), a_pid);
        eventually("the idle process of /a to stop", || {
            !crate::spawn::process_alive_for_tests(a_pid)
        });
        drop(b);
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn max_requests_recycles_a_process() {
        let (pool, spawner) = pool(2);
        let opts = || options("/app", &[("PassengerMaxRequests", "2")]);
        let first = pool.checkout(&opts()).unwrap().pid();
        let second = pool.checkout(&opts()).unwrap().pid();
        assert_eq!(first, second);
        let third = pool.checkout(&opts()).unwrap().pid();
        assert_ne!(third, first);
        assert_eq!(spawner.spawned.load(Ordering::SeqCst), 2);
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn idle_processes_are_stopped_down_to_min_instances() {
        let (pool, _) = pool_idle_after(4, Duration::from_millis(50));
        let opts = || options("/app", &[("PassengerMinInstances", "0")]);
        let a = pool.checkout(&opts()).unwrap();
        let b = pool.checkout(&opts()).unwrap();
        drop((a, b));
        std::thread::sleep(Duration::from_millis(100));
        pool.collect_idle();
        assert_eq!(live(&pool), 0);
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn a_released_slot_takes_another_request_and_the_stream_keeps_the_process() {
        let (pool, spawner) = pool_idle_after(1, Duration::from_millis(50));
        let opts = || options("/app", &[("PassengerMinInstances", "0")]);
        let mut streaming = pool.checkout(&opts()).unwrap();
        let pid = streaming.pid();
        {
            let (_conn, mut release) = streaming.connection().unwrap();
            release.release();
            release.release();
        }
        // The pool's only process takes the next request at once, twice:
        // the second release did not free a second slot.
        let next = pool.checkout(&opts()).unwrap();
        assert_eq!(next.pid(), pid);
        let queued = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || pool.checkout(&opts()).map(|l| l.pid()))
        };
        eventually("a request queued", || pool.snapshot()[0].waiting == 1);
        drop(next);
        assert_eq!(queued.join().unwrap().unwrap(), pid);
        // Idle by its sessions, but still streaming: not stopped.
        std::thread::sleep(Duration::from_millis(100));
        pool.collect_idle();
        assert_eq!(live(&pool), 1);
        // Once the stream is over the process is idle like any other.
        drop(streaming);
        std::thread::sleep(Duration::from_millis(100));
        pool.collect_idle();
        assert_eq!(live(&pool), 0);
        assert_eq!(spawner.spawned.load(Ordering::SeqCst), 1);
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn a_dead_process_is_forgotten_and_replaced() {
        let (pool, spawner) = pool(2);
        let pid = pool.checkout(&options("/app", &[])).unwrap().pid();
        spawner.handles.lock()[0].kill();
        // PassengerMinInstances (1) brings a replacement up without a request.
        eventually("a replacement for the dead process", || {
            let pids: Vec<i32> = pool
                .snapshot()
                .iter()
                .flat_map(|g| g.processes.iter().map(|p| p.pid))
                .collect();
            pids.len() == 1 && pids[0] != pid
        });
        let again = pool.checkout(&options("/app", &[])).unwrap();
        assert_ne!(again.pid(), pid);
        drop(again);
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn changed_options_restart_the_group() {
        let (pool, _) = pool(2);
        let old = pool.checkout(&options("/app", &[])).unwrap().pid();
        let new = pool
            .checkout(&options("/app", &[("PassengerStartupFile", "other.py")]))
            .unwrap()
            .pid();
        assert_ne!(old, new);
        pool.shutdown(Duration::from_secs(5));
    }
}
