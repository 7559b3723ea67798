//! What each agent thread is doing, for `passenger-status --show=backtraces`.
//!
//! A thread the agent starts registers itself ([`register_thread`]) under a
//! name that says what it is for ("Group process spawner: /srv/app
//! (production)", "hooks", "connection"). Code that can take long marks
//! what it is doing with [`trace_point!`]: a frame (the function, its source
//! location and a detail such as a hook script's path) pushed on the
//! thread's stack and popped when the guard drops. A dump lists every
//! registered thread with its frames, innermost first, so that a hook script
//! that never returns shows as the script the thread is waiting for.
//!
//! These are annotated stacks, not machine backtraces: a frame costs two
//! uncontended lock operations, nothing when the thread is not registered,
//! and the detail is only computed for a registered thread.

use std::cell::RefCell;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Value as Json, json};

/// One thing a thread is in the middle of.
struct Frame {
    function: &'static str,
    file: &'static str,
    line: u32,
    detail: Option<String>,
}

/// A registered thread.
struct Traced {
    name: String,
    tid: i32,
    frames: Mutex<Vec<Frame>>,
}

/// Every registered thread, in the order they registered.
static THREADS: Mutex<Vec<Arc<Traced>>> = Mutex::new(Vec::new());

thread_local! {
    static CURRENT: RefCell<Option<Arc<Traced>>> = const { RefCell::new(None) };
}

/// Keeps the calling thread in the dump until dropped.
#[must_use = "the thread is listed only while the guard lives"]
pub struct ThreadGuard(Arc<Traced>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        CURRENT.with(|current| current.borrow_mut().take());
        THREADS.lock().retain(|t| !Arc::ptr_eq(t, &self.0));
    }
}

/// Lists the calling thread under `name` until the guard drops.
pub fn register_thread(name: impl Into<String>) -> ThreadGuard {
    let traced = Arc::new(Traced {
        name: name.into(),
        tid: nix::unistd::gettid().as_raw(),
        frames: Mutex::new(Vec::new()),
    });
    CURRENT.with(|current| *current.borrow_mut() = Some(Arc::clone(&traced)));
    THREADS.lock().push(Arc::clone(&traced));
    ThreadGuard(traced)
}

/// Pops its frame when dropped; see [`trace_point!`].
#[must_use = "the frame is popped when the guard drops"]
pub struct TracePoint(bool);

impl Drop for TracePoint {
    fn drop(&mut self) {
        if self.0 {
            CURRENT.with(|current| {
                if let Some(traced) = &*current.borrow() {
                    traced.frames.lock().pop();
                }
            });
        }
    }
}

/// Pushes a frame on the calling thread's stack (when it is registered);
/// `detail` is called only then. Use [`trace_point!`].
pub fn enter(
    function: &'static str,
    file: &'static str,
    line: u32,
    detail: impl FnOnce() -> Option<String>,
) -> TracePoint {
    CURRENT.with(|current| match &*current.borrow() {
        Some(traced) => {
            let frame = Frame {
                function,
                file,
                line,
                detail: detail(),
            };
            traced.frames.lock().push(frame);
            TracePoint(true)
        }
        None => TracePoint(false),
    })
}

/// Marks what the current thread is doing until the end of the scope:
/// `let _trace = trace_point!("run_single_hook_script", command);` (the
/// detail is any `Display`, formatted only for a registered thread).
#[macro_export]
macro_rules! trace_point {
    ($function:expr) => {
        $crate::trace::enter($function, file!(), line!(), || None)
    };
    ($function:expr, $detail:expr) => {
        $crate::trace::enter($function, file!(), line!(), || Some(($detail).to_string()))
    };
}

/// Every registered thread and its frames (innermost first), as the status
/// API sends them.
pub fn document() -> Json {
    let threads: Vec<Json> = THREADS
        .lock()
        .iter()
        .map(|t| {
            let frames: Vec<Json> = t
                .frames
                .lock()
                .iter()
                .rev()
                .map(|f| {
                    json!({
                        "function": f.function,
                        "file": f.file,
                        "line": f.line,
                        "detail": f.detail,
                    })
                })
                .collect();
            json!({ "name": t.name, "tid": t.tid, "frames": frames })
        })
        .collect();
    json!({ "threads": threads })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(doc: &Json, name: &str) -> Vec<Json> {
        doc["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["frames"].as_array().unwrap().clone())
            .unwrap_or_default()
    }

    #[test]
    fn a_registered_thread_lists_its_frames_innermost_first() {
        let (entered, release) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            s.spawn(|| {
                let _thread = register_thread("trace test: busy");
                let _outer = trace_point!("outer");
                let _inner = trace_point!("inner", "/path/to/script");
                entered.wait();
                release.wait();
            });
            entered.wait();
            let frames = frames_of(&document(), "trace test: busy");
            release.wait();
            assert_eq!(frames.len(), 2);
            assert_eq!(frames[0]["function"], "inner");
            assert_eq!(frames[0]["detail"], "/path/to/script");
            assert_eq!(frames[0]["file"], file!());
            assert_eq!(frames[1]["function"], "outer");
            assert_eq!(frames[1]["detail"], Json::Null);
        });
        // Gone with its guard.
        assert!(frames_of(&document(), "trace test: busy").is_empty());
        assert!(
            !document()["threads"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == "trace test: busy")
        );
    }

    #[test]
    fn frames_pop_at_the_end_of_their_scope_and_unregistered_threads_cost_nothing() {
        std::thread::scope(|s| {
            s.spawn(|| {
                let detail_computed = std::cell::Cell::new(false);
                {
                    let _point = enter("unlisted", file!(), line!(), || {
                        detail_computed.set(true);
                        None
                    });
                }
                assert!(!detail_computed.get());
                let _thread = register_thread("trace test: scopes");
                {
                    let _point = trace_point!("short");
                    assert_eq!(frames_of(&document(), "trace test: scopes").len(), 1);
                }
                assert!(frames_of(&document(), "trace test: scopes").is_empty());
            });
        });
    }
}
