//! The requests in flight, for `passenger-status --show=requests`.
//!
//! Each Apache worker connection registers a [`ClientSlot`] when it starts
//! sending requests; a request writes only into its own connection's slot,
//! behind a lock that nobody but a status reader ever takes, so tracking
//! costs the request path two uncontended lock operations and three short
//! copies (method, path, host); the app group's name is the request's own
//! options, shared. A slot leaves the registry when its
//! connection ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::config::AppOptions;
use crate::protocol::PairList;

/// Every worker connection's slot.
#[derive(Default)]
pub struct Requests {
    clients: Mutex<Vec<Weak<ClientSlot>>>,
    next_number: AtomicU64,
    begun: AtomicU64,
}

/// One worker connection, and the request it is serving.
pub struct ClientSlot {
    number: u64,
    connected_at: SystemTime,
    registry: Weak<Requests>,
    state: Mutex<ClientState>,
}

#[derive(Default)]
struct ClientState {
    requests_begun: u64,
    current: Option<Current>,
}

/// A request in flight.
struct Current {
    method: String,
    path: String,
    host: String,
    /// Its app's options (for the app group's name).
    app: Arc<AppOptions>,
    started_at: SystemTime,
    /// The process serving it, once it has one.
    pid: Option<i32>,
    /// The app switched protocols: the request is a tunnel now.
    tunnel: bool,
}

impl Current {
    /// Where the request stands, named as the original's request states.
    fn state(&self) -> &'static str {
        match (self.pid, self.tunnel) {
            (None, _) => "CHECKING_OUT_SESSION",
            (Some(_), false) => "WAITING_FOR_APP_OUTPUT",
            (Some(_), true) => "UPGRADED_TO_TUNNEL",
        }
    }
}

impl Requests {
    /// A slot for a new worker connection.
    pub fn register(self: &Arc<Self>) -> Arc<ClientSlot> {
        let slot = Arc::new(ClientSlot {
            number: self.next_number.fetch_add(1, Ordering::Relaxed) + 1,
            connected_at: SystemTime::now(),
            registry: Arc::downgrade(self),
            state: Mutex::default(),
        });
        let mut clients = self.clients.lock();
        clients.retain(|c| c.strong_count() > 0);
        clients.push(Arc::downgrade(&slot));
        slot
    }

    /// The document `passenger-status --show=requests` prints, in the
    /// shape of the original's `server.json` (reference §8.6). With
    /// `viewer`, only the requests served by processes of that uid.
    pub fn document(&self, viewer: Option<u32>) -> Value {
        let clients: Vec<Arc<ClientSlot>> = self
            .clients
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut active = serde_json::Map::new();
        let mut in_flight = 0;
        for client in &clients {
            let state = client.state.lock();
            let current = state.current.as_ref().filter(|c| {
                viewer.is_none_or(|uid| {
                    c.pid
                        .and_then(crate::procfs::owner)
                        .is_some_and(|(owner, _)| owner == uid)
                })
            });
            if viewer.is_some() && current.is_none() {
                continue;
            }
            let name = format!("client-{}", client.number);
            let mut entry = json!({
                "name": name,
                "number": client.number,
                "connected_at": time(client.connected_at),
                "requests_begun": state.requests_begun,
            });
            if let Some(c) = current {
                in_flight += 1;
                entry["current_request"] = json!({
                    "method": c.method,
                    "path": c.path,
                    "host": c.host,
                    "app_group_name": c.app.app_group_name,
                    "started_at": time(c.started_at),
                    "state": c.state(),
                    "session": c.pid.map(|pid| json!({ "pid": pid })),
                });
            }
            active.insert(name, entry);
        }
        json!({
            "threads": 1,
            "thread1": {
                "pid": std::process::id(),
                "server_state": "ACTIVE",
                "active_client_count": active.len(),
                "requests_in_flight": in_flight,
                "total_requests_begun": self.begun.load(Ordering::Relaxed),
                "active_clients": active,
            },
        })
    }
}

impl ClientSlot {
    /// A request of `app` starts (before checkout).
    pub fn begin(&self, env: &PairList, app: &Arc<AppOptions>) {
        let value = |name: &[u8]| {
            env.last(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let current = Current {
            method: value(b"REQUEST_METHOD"),
            path: value(b"REQUEST_URI"),
            host: value(b"HTTP_HOST"),
            app: Arc::clone(app),
            started_at: SystemTime::now(),
            pid: None,
            tunnel: false,
        };
        let mut state = self.state.lock();
        state.requests_begun += 1;
        state.current = Some(current);
        if let Some(registry) = self.registry.upgrade() {
            registry.begun.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The request went to process `pid`.
    pub fn dispatched(&self, pid: i32) {
        if let Some(current) = &mut self.state.lock().current {
            current.pid = Some(pid);
        }
    }

    /// The app switched protocols.
    pub fn tunneled(&self) {
        if let Some(current) = &mut self.state.lock().current {
            current.tunnel = true;
        }
    }

    /// The request is over.
    pub fn end(&self) {
        self.state.lock().current = None;
    }
}

/// A point in time as the status document shows it: seconds since the
/// epoch, and how long ago.
fn time(at: SystemTime) -> Value {
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let ago = SystemTime::now().duration_since(at).unwrap_or_default();
    json!({
        "timestamp": since_epoch.as_secs_f64(),
        "relative_ms": ago.as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options of an app whose group is named `name`.
    fn app(name: &str) -> Arc<AppOptions> {
        let pairs = [
            (b"PassengerAppRoot".to_vec(), b"/srv/app".to_vec()),
            (b"PassengerAppType".to_vec(), b"rack".to_vec()),
            (b"PassengerAppGroupName".to_vec(), name.as_bytes().to_vec()),
        ];
        Arc::new(AppOptions::from_pairs(&pairs).unwrap())
    }

    fn env() -> PairList {
        let mut env = PairList::new();
        env.push(b"REQUEST_METHOD", b"POST");
        env.push(b"REQUEST_URI", b"/upload?x=1");
        env.push(b"HTTP_HOST", b"example.org");
        env
    }

    #[test]
    fn a_request_is_shown_from_its_start_to_its_end() {
        let requests = Arc::new(Requests::default());
        let slot = requests.register();
        let idle = requests.register();
        slot.begin(&env(), &app("/srv/app (production)"));
        let doc = requests.document(None);
        let thread = &doc["thread1"];
        assert_eq!(thread["active_client_count"], 2);
        assert_eq!(thread["requests_in_flight"], 1);
        assert_eq!(thread["total_requests_begun"], 1);
        let current = &thread["active_clients"]["client-1"]["current_request"];
        assert_eq!(current["method"], "POST");
        assert_eq!(current["path"], "/upload?x=1");
        assert_eq!(current["host"], "example.org");
        assert_eq!(current["app_group_name"], "/srv/app (production)");
        assert_eq!(current["state"], "CHECKING_OUT_SESSION");
        assert!(current["session"].is_null());
        assert!(thread["active_clients"]["client-2"]["current_request"].is_null());

        slot.dispatched(4242);
        let doc = requests.document(None);
        let current = &doc["thread1"]["active_clients"]["client-1"]["current_request"];
        assert_eq!(current["state"], "WAITING_FOR_APP_OUTPUT");
        assert_eq!(current["session"]["pid"], 4242);
        slot.tunneled();
        let doc = requests.document(None);
        assert_eq!(
            doc["thread1"]["active_clients"]["client-1"]["current_request"]["state"],
            "UPGRADED_TO_TUNNEL"
        );

        slot.end();
        let doc = requests.document(None);
        assert_eq!(doc["thread1"]["requests_in_flight"], 0);
        assert_eq!(
            doc["thread1"]["active_clients"]["client-1"]["requests_begun"],
            1
        );
        drop(idle);
        let doc = requests.document(None);
        assert_eq!(doc["thread1"]["active_client_count"], 1);
    }

    #[test]
    fn a_viewer_sees_only_requests_served_by_its_own_processes() {
        let requests = Arc::new(Requests::default());
        let mine = requests.register();
        let queued = requests.register();
        let others = requests.register();
        mine.begin(&env(), &app("mine"));
        mine.dispatched(std::process::id() as i32);
        queued.begin(&env(), &app("mine, queued"));
        others.begin(&env(), &app("theirs"));
        others.dispatched(1); // init, root's
        let uid = nix::unistd::getuid().as_raw();
        let doc = requests.document(Some(uid));
        let mut shown: Vec<&String> = doc["thread1"]["active_clients"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        shown.sort();
        // Never the queued one: no process, no owner yet.
        if uid == 0 {
            assert_eq!(shown, ["client-1", "client-3"]);
        } else {
            assert_eq!(shown, ["client-1"]);
        }
        assert!(
            requests.document(Some(uid + 1))["thread1"]["active_clients"]
                .as_object()
                .unwrap()
                .is_empty()
        );
        assert_eq!(requests.document(None)["thread1"]["requests_in_flight"], 3);
    }
}
