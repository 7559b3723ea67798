//! One connection to the agent, served on its own thread.
//!
//! The first frame says who is calling ([`Role`]): an Apache worker
//! (requests), the Apache parent (configuration) or a status tool. Errors
//! end only this connection: a malformed frame gets an `ERROR` frame where
//! possible, is logged once, and the connection is closed.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::Agent;
use crate::agent::error_page::{self, Page, RequestKind};
use crate::agent::requests::ClientSlot;
use crate::agent::tunnel::{self, Ended};
use crate::config::{AppOptions, ServerConfig};
use crate::pool::{AppConnection, CheckoutError, Lease, Release};
use crate::protocol::{self, Connection, Message, PairList, RequestHead, Role};

/// A connection from the module.
type ModuleConnection = Connection<UnixStream>;

/// Who may do what on a connection.
#[derive(Debug, Clone, Copy)]
pub enum Caller {
    /// On the request socket: any role, the whole status.
    Trusted,
    /// On the status socket: status requests only, showing only the apps
    /// of this uid (`None`: root or the agent's user, who see all).
    StatusOnly(Option<u32>),
}

/// Serves a connection until the peer closes it or breaks the protocol.
pub fn serve(agent: &Arc<Agent>, stream: UnixStream, caller: Caller) {
    let mut conn = Connection::new(stream);
    if let Err(e) = serve_connection(agent, &mut conn, caller) {
        if peer_went_away(&e) {
            // The module drops its connection when its client leaves in
            // the middle of a request (an abandoned upload, which the
            // module logs) or of a response (a closed tab, an SSE client
            // gone): nothing to report here.
            log::debug!(target: "MP0701", "closing a connection: {e}");
            return;
        }
        log::warn!(target: "MP0701", "closing a connection: {e}");
        if !matches!(e, protocol::Error::Io(_)) {
            let _ = conn.send(
                0,
                &Message::Error {
                    code: 400,
                    message: e.to_string(),
                },
            );
        }
    }
}

/// Whether `e` is the peer closing its end (not a fault of either side).
fn peer_went_away(e: &protocol::Error) -> bool {
    match e {
        protocol::Error::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        protocol::Error::UnexpectedEof => true,
        _ => false,
    }
}

fn serve_connection(
    agent: &Arc<Agent>,
    conn: &mut ModuleConnection,
    caller: Caller,
) -> Result<(), protocol::Error> {
    let role = match conn.read_frame()? {
        Some((
            _,
            Message::Hello {
                role: Role::Control,
                pid,
                ..
            },
        )) if agent.apache_pid.is_some_and(|apache| apache != pid as i32) => {
            // Another Apache (this agent's is gone or going): it must start its own.
            let message = format!(
                "this agent serves Apache pid {}",
                agent.apache_pid.unwrap_or(0)
            );
            return conn.send(0, &Message::Error { code: 409, message });
        }
        Some((_, Message::Hello { role, .. })) => role,
        Some(_) => return Err(protocol::Error::Malformed("the first frame must be HELLO")),
        None => return Ok(()),
    };
    let viewer = match caller {
        Caller::Trusted => None,
        Caller::StatusOnly(_) if role != Role::Status => {
            let message = "this socket only answers status requests".to_owned();
            return conn.send(0, &Message::Error { code: 403, message });
        }
        Caller::StatusOnly(viewer) => viewer,
    };
    conn.send(
        0,
        &Message::HelloOk {
            agent_pid: std::process::id(),
            instance: agent.instance_name(),
        },
    )?;
    match role {
        Role::Worker => serve_worker(agent, conn),
        Role::Control => serve_control(agent, conn),
        Role::Status => serve_status(agent, conn, viewer),
    }
}

/// The Apache parent: configuration generations.
fn serve_control(agent: &Arc<Agent>, conn: &mut ModuleConnection) -> Result<(), protocol::Error> {
    while let Some((id, msg)) = conn.read_frame()? {
        match msg {
            Message::Configure { generation, config } => {
                let parsed = serde_json::from_slice::<serde_json::Value>(&config)
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        if let Some(software) = v["server_software"].as_str() {
                            agent.set_server_software(software);
                        }
                        ServerConfig::from_json(&v).map_err(|e| e.to_string())
                    });
                match parsed {
                    Ok(config) => match agent.configure(generation, config) {
                        Ok(()) => conn.send(id, &Message::ConfigureOk)?,
                        Err(message) => {
                            log::error!(target: "MP0702", "rejected configuration generation {generation}: {message}");
                            conn.send(id, &Message::Error { code: 500, message })?;
                        }
                    },
                    Err(e) => {
                        log::error!(target: "MP0702", "rejected configuration generation {generation}: {e}");
                        conn.send(
                            id,
                            &Message::Error {
                                code: 400,
                                message: e,
                            },
                        )?;
                    }
                }
            }
            Message::Ping => conn.send(id, &Message::Pong)?,
            _ => {
                return Err(protocol::Error::Malformed(
                    "unexpected frame on a control connection",
                ));
            }
        }
    }
    Ok(())
}

/// A status tool: a JSON document describing the pool.
fn serve_status(
    agent: &Arc<Agent>,
    conn: &mut ModuleConnection,
    viewer: Option<u32>,
) -> Result<(), protocol::Error> {
    while let Some((id, msg)) = conn.read_frame()? {
        match msg {
            Message::Status { query } => {
                // `{"show": "requests"}` asks for the requests in flight,
                // `{"show": "backtraces"}` for the threads (root and the
                // agent's user only: they name every app's requests and
                // scripts); anything else for the pool.
                let show = serde_json::from_slice::<serde_json::Value>(&query)
                    .ok()
                    .and_then(|q| q["show"].as_str().map(str::to_owned));
                let document = match show.as_deref() {
                    Some("requests") => agent.requests.document(viewer),
                    Some("backtraces") if viewer.is_none() => crate::trace::document(),
                    Some("backtraces") => serde_json::json!({
                        "error": "only root and the agent's user may see the agent's threads"
                    }),
                    _ => agent.status(viewer),
                };
                let document = serde_json::to_vec(&document).unwrap_or_default();
                conn.send(id, &Message::StatusReply { document })?;
            }
            Message::Ping => conn.send(id, &Message::Pong)?,
            _ => {
                return Err(protocol::Error::Malformed(
                    "unexpected frame on a status connection",
                ));
            }
        }
    }
    Ok(())
}

/// An Apache worker: one request after another.
fn serve_worker(agent: &Arc<Agent>, conn: &mut ModuleConnection) -> Result<(), protocol::Error> {
    let mut options = OptionsCache::default();
    let slot = agent.requests.register();
    while let Some((id, msg)) = conn.read_frame()? {
        match msg {
            Message::Request(head) => {
                let served = serve_request(agent, conn, id, head, &mut options, &slot);
                slot.end();
                served?;
            }
            Message::Ping => conn.send(id, &Message::Pong)?,
            _ => return Err(protocol::Error::Malformed("expected REQUEST")),
        }
    }
    Ok(())
}

/// The options of the last request on a connection, decoded. An Apache
/// worker usually sends the same options request after request, so
/// decoding them once per connection and location is enough: a request
/// with the same encoded options costs one comparison of bytes.
#[derive(Default)]
struct OptionsCache {
    last: Option<(PairList, Arc<AppOptions>)>,
}

impl OptionsCache {
    /// The decoded options for `pairs`.
    fn get(
        &mut self,
        agent: &Agent,
        pairs: PairList,
    ) -> Result<Arc<AppOptions>, crate::config::Error> {
        if let Some((cached, options)) = &self.last
            && *cached == pairs
        {
            return Ok(Arc::clone(options));
        }
        let options = Arc::new(AppOptions::from_pairs_with(
            &pairs.to_pairs(),
            &agent.default_ruby(),
        )?);
        self.last = Some((pairs, Arc::clone(&options)));
        Ok(options)
    }
}

/// Where the client's body stands, from the agent's side.
enum BodyState {
    /// All of it has been received.
    Ended,
    /// More can be asked for with READ_BODY.
    More,
}

/// Reads the body prefix that follows a REQUEST with a body.
fn read_prefix(
    conn: &mut ModuleConnection,
    id: u32,
) -> Result<(Vec<Vec<u8>>, BodyState), protocol::Error> {
    let mut chunks = Vec::new();
    let mut total = 0;
    loop {
        match next_frame(conn, id)? {
            Message::Body(data) => {
                total += data.len();
                if total > protocol::MAX_BODY_CHUNK {
                    return Err(protocol::Error::Malformed(
                        "the body prefix is larger than 64 KiB",
                    ));
                }
                chunks.push(data);
            }
            Message::End => return Ok((chunks, BodyState::Ended)),
            Message::More => return Ok((chunks, BodyState::More)),
            _ => {
                return Err(protocol::Error::Malformed(
                    "expected BODY, END or MORE after REQUEST",
                ));
            }
        }
    }
}

/// Reads the next frame of request `id`; EOF is an error mid-request.
fn next_frame(conn: &mut ModuleConnection, id: u32) -> Result<Message, protocol::Error> {
    match conn.read_frame()? {
        Some((frame_id, msg)) if frame_id == id => Ok(msg),
        Some(_) => Err(protocol::Error::Malformed(
            "a frame of another request arrived mid-request",
        )),
        None => Err(protocol::Error::UnexpectedEof),
    }
}

/// Serves one request: checkout, forward, relay, checkin.
fn serve_request(
    agent: &Arc<Agent>,
    module: &mut ModuleConnection,
    id: u32,
    head: RequestHead,
    cache: &mut OptionsCache,
    slot: &ClientSlot,
) -> Result<(), protocol::Error> {
    let has_body = head.has_body();
    let upgrade = head.is_upgrade();
    let RequestHead {
        flags,
        options,
        env,
    } = head;
    let (prefix, mut body) = if has_body {
        read_prefix(module, id)?
    } else {
        (Vec::new(), BodyState::Ended)
    };
    let options = match cache.get(agent, options) {
        Ok(options) => options,
        Err(e) => {
            log::error!(target: "MP0703", "invalid application options: {e}");
            return module.send(
                id,
                &Message::Error {
                    code: 500,
                    message: e.to_string(),
                },
            );
        }
    };
    slot.begin(&env, &options);
    let _trace = crate::trace_point!("serve_request", options.app_group_name);
    // Only an error page needs to know what the request accepts.
    let kind = || RequestKind::of(&env);
    // Encoded once: a retry on another process sends the same bytes.
    let mut request_frame = Vec::new();
    protocol::encode_request(id, flags, &PairList::new(), &env, &mut request_frame);
    let mut outcome = RelayOutcome::default();
    // A process that fails before it answered anything (it died after its
    // last request, say) is taken out of the pool and the request goes to
    // another one, as long as no body beyond the prefix was pulled.
    for attempt in 1..=MAX_ATTEMPTS {
        let mut lease = match agent.pool.checkout(&options) {
            Ok(lease) => lease,
            Err(e) => {
                if matches!(e, CheckoutError::QueueFull) {
                    agent.hooks.notify("queue_full_error", Vec::new());
                }
                return answer_checkout_error(module, id, &e, &options, &kind());
            }
        };
        if lease.queued_for() >= protocol::CLIENT_CHECK_INTERVAL && peer_gone(module) {
            // Never dispatch a request whose client gave up while it was
            // queued (the module drops it only after a quiet interval, so a
            // shorter wait needs no look). The connection's end is read
            // next, and closes it quietly.
            log::debug!(target: "MP0708", "dropping a queued request of {}: its client went away", options.app_group_name);
            return Ok(());
        }
        slot.dispatched(lease.pid());
        // PassengerMaxRequestTime limits the time a process spends on the
        // request; the time it waited for one is PassengerMaxRequestQueueTime's.
        let deadline = (options.max_request_time > 0)
            .then(|| Instant::now() + Duration::from_secs(options.max_request_time));
        match dispatch(
            module,
            &mut lease,
            id,
            &request_frame,
            Sent {
                has_body,
                upgrade,
                prefix: &prefix,
            },
            &mut body,
            &mut outcome,
            deadline,
            slot,
        ) {
            Ok(()) if outcome.tunneled => {
                // Neither connection carries another request: the module's
                // end is read next, and closes it quietly.
                lease.discard_connection();
                lease.finish();
                let _ = module.get_ref().shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
            Ok(()) => {
                if outcome.oob {
                    lease.request_oob();
                }
                lease.finish();
                return Ok(());
            }
            Err(Relay::TimedOut { answered }) => {
                log::warn!(
                    target: "MP0707",
                    "a request to process {} of {} ran longer than {} s (PassengerMaxRequestTime): stopping the process",
                    lease.pid(),
                    options.app_group_name,
                    options.max_request_time
                );
                lease.discard_connection();
                // Before the kill, so that a script can still look at the process.
                let text = |value: &[u8]| String::from_utf8_lossy(value).into_owned();
                let mut request = vec![
                    ("PASSENGER_APP_ID", lease.pid().to_string()),
                    (
                        "PASSENGER_REQUEST_PATH",
                        env.last(b"REQUEST_URI").map(text).unwrap_or_default(),
                    ),
                ];
                if let Some(host) = env.last(b"HTTP_HOST") {
                    request.push(("PASSENGER_REQUEST_HOST", text(host)));
                }
                agent
                    .hooks
                    .current()
                    .run("max_request_time_reached", &request);
                lease.kill_process();
                if answered {
                    let message = "the request ran longer than PassengerMaxRequestTime".to_owned();
                    return module.send(id, &Message::Error { code: 504, message });
                }
                return send_page(module, id, error_page::request_timed_out(&kind()));
            }
            Err(Relay::AppBroken {
                answered: false,
                error,
            }) if attempt < MAX_ATTEMPTS && outcome.replayable() => {
                log::warn!(target: "MP0709", "process {} of {} failed before answering ({error}): trying another", lease.pid(), options.app_group_name);
                lease.discard_connection();
                lease.kill_process();
            }
            Err(Relay::AppBroken { answered, error }) => {
                return app_failed(module, id, &mut lease, answered, &error, &kind());
            }
            Err(Relay::Module(e)) => return Err(e),
        }
    }
    unreachable!("the last attempt always returns")
}

/// How many processes one request may try when they fail before answering.
const MAX_ATTEMPTS: u32 = 3;

/// What goes to the app with the request frame, and what it asked for.
#[derive(Clone, Copy)]
struct Sent<'a> {
    /// A body follows the request.
    has_body: bool,
    /// The client asked to switch protocols.
    upgrade: bool,
    /// The body prefix.
    prefix: &'a [Vec<u8>],
}

/// Sends the request to the lease's process and relays the answer. A reused
/// connection the app has closed since is retried once on a fresh one.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    module: &mut ModuleConnection,
    lease: &mut Lease,
    id: u32,
    request_frame: &[u8],
    sent: Sent,
    body: &mut BodyState,
    outcome: &mut RelayOutcome,
    deadline: Option<Instant>,
    slot: &ClientSlot,
) -> Result<(), Relay> {
    let broken = |error: String| Relay::AppBroken {
        answered: false,
        error,
    };
    let mut fresh_retry_left = true;
    loop {
        let reused = lease.has_connection();
        let (app, mut release) = lease
            .connection()
            .map_err(|e| broken(format!("cannot connect: {e}")))?;
        let result = send_request(app, id, request_frame, sent.has_body, sent.prefix, body)
            .map_err(|e| broken(e.to_string()))
            .and_then(|()| {
                let upgrade = sent.upgrade.then_some(slot);
                relay(
                    module,
                    app,
                    id,
                    upgrade,
                    body,
                    outcome,
                    deadline,
                    &mut release,
                )
            });
        match result {
            Err(Relay::AppBroken {
                answered: false, ..
            }) if reused && fresh_retry_left && outcome.replayable() => {
                fresh_retry_left = false;
                lease.discard_connection();
            }
            Ok(()) if deadline.is_some() => {
                // The connection goes back to the idle list: no timeout there.
                return app
                    .get_ref()
                    .set_read_timeout(None)
                    .map_err(|e| broken(e.to_string()));
            }
            other => return other,
        }
    }
}

/// Writes REQUEST and the body prefix to the app.
fn send_request(
    app: &mut AppConnection,
    id: u32,
    request_frame: &[u8],
    has_body: bool,
    prefix: &[Vec<u8>],
    body: &BodyState,
) -> Result<(), protocol::Error> {
    app.queue_encoded(request_frame);
    if has_body {
        for chunk in prefix {
            app.queue_body(id, chunk)?;
        }
        app.queue(
            id,
            if matches!(body, BodyState::Ended) {
                &Message::End
            } else {
                &Message::More
            },
        );
    }
    app.flush()
}

/// Whether the module closed its end (it sends nothing while it waits for
/// a response, so anything readable is the end of the connection).
fn peer_gone(module: &ModuleConnection) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let stream = module.get_ref();
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::ZERO).unwrap_or(0) == 0 {
        return false;
    }
    let mut byte = [0u8; 1];
    let flags = nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
    matches!(
        nix::sys::socket::recv(std::os::fd::AsRawFd::as_raw_fd(stream), &mut byte, flags),
        Ok(0) | Err(_)
    )
}

/// The response header by which an app asks for out-of-band work.
const OOB_HEADER: &[u8] = b"!~Request-OOB-Work";

/// What a relayed response told the agent.
#[derive(Default)]
struct RelayOutcome {
    /// The app asked for out-of-band work.
    oob: bool,
    /// Body beyond the prefix was pulled from the module: the request
    /// cannot be replayed on another process.
    body_pulled: bool,
    /// The app switched protocols and the tunnel is over.
    tunneled: bool,
    /// The app released the process's slot (`RELEASE`): it ran the request.
    released: bool,
}

impl RelayOutcome {
    /// Whether the request can go to another process or connection after
    /// a failure before any answer: nothing beyond the body prefix was
    /// pulled, and the app did not take the request over.
    fn replayable(&self) -> bool {
        !self.body_pulled && !self.released
    }
}

/// How relaying can fail.
enum Relay {
    /// The app's connection failed; `answered` = it had sent a response head.
    AppBroken { answered: bool, error: String },
    /// The module's connection failed: close it.
    Module(protocol::Error),
    /// The request ran longer than PassengerMaxRequestTime.
    TimedOut {
        /// A response head had been sent.
        answered: bool,
    },
}

/// Relays frames between the app and the module until the response ends,
/// or, after a 101 to a request that asked to upgrade (`upgrade` is then its
/// connection's slot, which shows the tunnel), until the tunnel ends. A
/// `RELEASE` from the app gives the process's slot back on the way.
#[allow(clippy::too_many_arguments)]
fn relay(
    module: &mut ModuleConnection,
    app: &mut AppConnection,
    id: u32,
    upgrade: Option<&ClientSlot>,
    body: &mut BodyState,
    outcome: &mut RelayOutcome,
    mut deadline: Option<Instant>,
    release: &mut Release,
) -> Result<(), Relay> {
    let mut answered = false;
    let broken = |answered: bool, error: String| Relay::AppBroken { answered, error };
    loop {
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Relay::TimedOut { answered });
            }
            app.get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| broken(answered, e.to_string()))?;
        }
        let msg = match app.read_frame() {
            Ok(Some((frame_id, msg))) if frame_id == id => msg,
            Ok(Some((frame_id, _))) => {
                return Err(broken(
                    answered,
                    format!("the app answered for request {frame_id}, not {id}"),
                ));
            }
            Ok(None) => return Err(broken(answered, "the app closed the connection".into())),
            Err(protocol::Error::Io(e))
                if deadline.is_some()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
            {
                return Err(Relay::TimedOut { answered });
            }
            Err(e) => return Err(broken(answered, e.to_string())),
        };
        match msg {
            Message::Release => {
                // The app streams the rest from threads of its own; the
                // process is no longer this request's, and
                // PassengerMaxRequestTime no longer applies.
                release.release();
                outcome.released = true;
                if deadline.take().is_some() {
                    app.get_ref()
                        .set_read_timeout(None)
                        .map_err(|e| broken(answered, e.to_string()))?;
                }
            }
            Message::ReadBody { max } => {
                let reply = match body {
                    BodyState::Ended => Message::End,
                    BodyState::More => {
                        outcome.body_pulled = true;
                        module
                            .send(id, &Message::ReadBody { max })
                            .map_err(Relay::Module)?;
                        match next_frame(module, id).map_err(Relay::Module)? {
                            Message::Body(data) => Message::Body(data),
                            Message::End => {
                                *body = BodyState::Ended;
                                Message::End
                            }
                            _ => {
                                return Err(Relay::Module(protocol::Error::Malformed(
                                    "expected BODY or END after READ_BODY",
                                )));
                            }
                        }
                    }
                };
                app.send(id, &reply)
                    .map_err(|e| broken(answered, e.to_string()))?;
            }
            Message::Response(mut response) if !answered => {
                answered = true;
                // `!~` headers are for the agent only; the client never sees them.
                if response
                    .headers
                    .iter()
                    .any(|(name, _)| name.starts_with(b"!~"))
                {
                    outcome.oob = response
                        .headers
                        .iter()
                        .any(|(name, _)| name.eq_ignore_ascii_case(OOB_HEADER));
                    response.headers = response
                        .headers
                        .iter()
                        .filter(|(name, _)| !name.starts_with(b"!~"))
                        .collect();
                }
                if response.status == 101 {
                    let Some(slot) = upgrade else {
                        return Err(broken(
                            true,
                            "the app switched protocols (101) on a request that did not ask to"
                                .into(),
                        ));
                    };
                    module
                        .send(id, &Message::Response(response))
                        .map_err(Relay::Module)?;
                    outcome.tunneled = true;
                    slot.tunneled();
                    if let Ended::Broken(e) =
                        tunnel::run(module, app, id, &mut || release.release())
                    {
                        log::debug!(target: "MP0711", "a tunnel of request {id} ended early: {e}");
                    }
                    return Ok(());
                }
                module.queue(id, &Message::Response(response));
                if !app.has_buffered_input() {
                    module.flush().map_err(Relay::Module)?;
                }
            }
            Message::Body(data) if answered => {
                module.queue_body(id, &data).map_err(Relay::Module)?;
                if !app.has_buffered_input() {
                    module.flush().map_err(Relay::Module)?;
                }
            }
            Message::End if answered => {
                module.send(id, &Message::End).map_err(Relay::Module)?;
                return Ok(());
            }
            Message::Error { code, message } => {
                log::warn!(target: "MP0704", "the app reported an error ({code}): {message}");
                module
                    .send(id, &Message::Error { code, message })
                    .map_err(Relay::Module)?;
                return Ok(());
            }
            other => {
                return Err(broken(
                    answered,
                    format!("unexpected frame from the app: type {:#04x}", other.kind()),
                ));
            }
        }
    }
}

/// Answers a request whose app process failed. Before a response head the
/// client gets a 502 page; after it, an ERROR that makes the module abort.
fn app_failed(
    module: &mut ModuleConnection,
    id: u32,
    lease: &mut Lease,
    answered: bool,
    error: &str,
    kind: &RequestKind,
) -> Result<(), protocol::Error> {
    lease.discard_connection();
    log::error!(
        target: "MP0705",
        "request to process {} failed{}: {error}",
        lease.pid(),
        if answered { " mid-response" } else { "" }
    );
    if answered {
        let message = format!("the application process failed: {error}");
        return module.send(id, &Message::Error { code: 502, message });
    }
    send_page(module, id, error_page::app_failed(kind))
}

/// Turns a checkout failure into the module's answer: a page.
fn answer_checkout_error(
    module: &mut ModuleConnection,
    id: u32,
    e: &CheckoutError,
    options: &AppOptions,
    kind: &RequestKind,
) -> Result<(), protocol::Error> {
    if matches!(e, CheckoutError::QueueFull) {
        log::warn!(target: "MP0706", "{}: {e}: answering 503 (PassengerMaxRequestQueueSize)", options.app_group_name);
    }
    send_page(module, id, error_page::checkout_failed(e, options, kind))
}

/// Sends a whole page as RESPONSE, BODY, END in one write.
fn send_page(module: &mut ModuleConnection, id: u32, page: Page) -> Result<(), protocol::Error> {
    module.queue(id, &Message::Response(page.head));
    module.queue_body(id, &page.body)?;
    module.send(id, &Message::End)
}
