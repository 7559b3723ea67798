//! A one-shot handoff from the pool to a request thread waiting in a queue.
//!
//! A queued request's thread sleeps until the pool hands it a lease (or an
//! error). At 16 concurrent requests for 6 processes most requests wait, so
//! this happens on nearly every request. A channel's receiver spins and
//! yields the CPU several times before it sleeps (about three
//! `sched_yield` calls per request were measured in the agent); here the
//! waiter parks at once (a futex wait) and the pool unparks it after
//! filling the slot.
//!
//! The waiter may give up (its queue time ran out): the slot is then
//! marked abandoned under its lock, and a value filled afterwards is given
//! back to the pool instead of being lost, so a lease inside it is checked
//! back in.

use std::sync::Arc;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Creates the two ends of a handoff; the waiting end belongs to the
/// calling thread, which is the one woken.
pub fn handoff<T>() -> (Filler<T>, Slot<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::Empty),
        waiter: thread::current(),
    });
    (
        Filler {
            shared: Some(Arc::clone(&shared)),
        },
        Slot { shared },
    )
}

/// What the slot holds.
enum State<T> {
    /// Nothing yet.
    Empty,
    /// The value, not yet taken.
    Full(T),
    /// The filler was dropped without a value (the pool shut down).
    Closed,
    /// The waiter gave up; a value filled now goes back to the filler.
    Abandoned,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// The thread that waits on the slot.
    waiter: Thread,
}

/// The pool's end: fills the slot once and wakes the waiter.
pub struct Filler<T> {
    /// `None` once filled.
    shared: Option<Arc<Shared<T>>>,
}

impl<T> Filler<T> {
    /// Hands `value` to the waiter; gives it back if the waiter gave up.
    pub fn fill(mut self, value: T) -> Result<(), T> {
        let shared = self.shared.take().expect("a filler is filled once");
        {
            let mut state = shared.state.lock();
            if matches!(*state, State::Abandoned) {
                return Err(value);
            }
            *state = State::Full(value);
        }
        shared.waiter.unpark();
        Ok(())
    }
}

/// Dropped unfilled: the waiter wakes and learns there will be no value.
impl<T> Drop for Filler<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            let mut state = shared.state.lock();
            if matches!(*state, State::Empty) {
                *state = State::Closed;
            }
            drop(state);
            shared.waiter.unpark();
        }
    }
}

/// Why a wait ended without a value.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The time limit passed; the slot is abandoned.
    TimedOut,
    /// The filler was dropped without a value.
    Closed,
}

/// The waiting end. Only the thread that called [`handoff`] may wait.
pub struct Slot<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Slot<T> {
    /// Sleeps until the slot is filled, or closed, or `limit` has passed.
    pub fn wait(self, limit: Option<Duration>) -> Result<T, WaitError> {
        debug_assert_eq!(thread::current().id(), self.shared.waiter.id());
        let deadline = limit.map(|limit| Instant::now() + limit);
        loop {
            {
                let mut state = self.shared.state.lock();
                match std::mem::replace(&mut *state, State::Empty) {
                    State::Full(value) => return Ok(value),
                    State::Closed => return Err(WaitError::Closed),
                    State::Empty | State::Abandoned => {}
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    *state = State::Abandoned;
                    return Err(WaitError::TimedOut);
                }
            }
            // A wake-up that came before this point is not lost: park
            // returns at once for an unpark it has not consumed yet.
            match deadline {
                None => thread::park(),
                Some(d) => thread::park_timeout(d.saturating_duration_since(Instant::now())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_filled_from_another_thread_wakes_the_waiter() {
        let (filler, slot) = handoff();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            filler.fill(7).unwrap();
        });
        assert_eq!(slot.wait(None), Ok(7));
        t.join().unwrap();
    }

    #[test]
    fn a_value_filled_before_the_wait_is_there() {
        let (filler, slot) = handoff();
        filler.fill("lease").unwrap();
        assert_eq!(slot.wait(Some(Duration::ZERO)), Ok("lease"));
    }

    #[test]
    fn a_waiter_that_gave_up_returns_the_value_to_the_filler() {
        let (filler, slot) = handoff::<u32>();
        assert_eq!(
            slot.wait(Some(Duration::from_millis(10))),
            Err(WaitError::TimedOut)
        );
        assert_eq!(filler.fill(3), Err(3));
    }

    #[test]
    fn a_dropped_filler_closes_the_slot() {
        let (filler, slot) = handoff::<u32>();
        let t = thread::spawn(move || drop(filler));
        assert_eq!(slot.wait(None), Err(WaitError::Closed));
        t.join().unwrap();
    }
}
