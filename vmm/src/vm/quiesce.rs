//! Stopping the VMM's own threads that write guest memory or device state while a VM is
//! paused: the device event loop and the serial input pump.
//!
//! Each such thread holds a [`GateWaiter`] and watches its eventfd beside its other fds. A
//! pause closes the [`Gate`] and waits until every waiter has acknowledged and parked; resume
//! opens it again. While closed, nothing but the pausing thread touches the VM.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Default)]
struct State {
    closed: bool,
    parked: usize,
    waiters: usize,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The controlling side: closes and opens the gate for every waiter.
pub(crate) struct Gate {
    shared: Arc<Shared>,
    wakers: Mutex<Vec<EventFd>>,
}

/// A thread's side: its eventfd becomes readable when the gate closes.
pub(crate) struct GateWaiter {
    shared: Arc<Shared>,
    event: EventFd,
}

impl Gate {
    pub(crate) fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
            wakers: Mutex::new(Vec::new()),
        }
    }

    /// A waiter for one more thread; its eventfd is what the thread polls.
    pub(crate) fn waiter(&self) -> std::io::Result<GateWaiter> {
        let event = EventFd::new(EFD_NONBLOCK)?;
        let waker = event.try_clone()?;
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(waker);
        self.shared.lock().waiters += 1;
        Ok(GateWaiter {
            shared: self.shared.clone(),
            event,
        })
    }

    /// Closes the gate and waits until every live waiter has parked. Returns `false` if one
    /// did not park by `deadline` (the gate is then opened again).
    pub(crate) fn close(&self, deadline: Instant) -> bool {
        self.shared.lock().closed = true;
        for waker in self.wakers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            // A full eventfd counter is still readable: the wake-up is not lost.
            let _ = waker.write(1);
        }
        let mut state = self.shared.lock();
        while state.parked < state.waiters {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                drop(state);
                self.open();
                return false;
            };
            state = match self.shared.changed.wait_timeout(state, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    /// Lets the waiters run again.
    pub(crate) fn open(&self) {
        self.shared.lock().closed = false;
        self.shared.changed.notify_all();
    }
}

impl GateWaiter {
    /// The eventfd to poll: readable when the gate closes.
    pub(crate) fn event(&self) -> &EventFd {
        &self.event
    }

    /// Called when [`GateWaiter::event`] is readable (or at any point): if the gate is closed,
    /// parks until it opens. `should_stop` is checked about every 100 ms while parked, so a
    /// thread told to stop never stays parked.
    pub(crate) fn park_if_closed(&self, should_stop: impl Fn() -> bool) {
        let _ = self.event.read();
        let mut state = self.shared.lock();
        if !state.closed {
            return;
        }
        state.parked += 1;
        self.shared.changed.notify_all();
        while state.closed && !should_stop() {
            state = match self
                .shared
                .changed
                .wait_timeout(state, Duration::from_millis(100))
            {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        state.parked -= 1;
    }
}

impl Drop for GateWaiter {
    fn drop(&mut self) {
        self.shared.lock().waiters -= 1;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    #[test]
    fn close_waits_for_every_waiter_to_park_and_open_releases_them() {
        let gate = Gate::new();
        let counter = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let waiter = gate.waiter().unwrap();
                let (counter, stop) = (counter.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        waiter.park_if_closed(|| stop.load(Ordering::SeqCst));
                        counter.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        assert!(gate.close(Instant::now() + Duration::from_secs(5)));
        let frozen = counter.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            counter.load(Ordering::SeqCst),
            frozen,
            "a parked thread ran"
        );
        gate.open();
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            counter.load(Ordering::SeqCst) > frozen,
            "threads did not resume"
        );
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn close_gives_up_on_a_waiter_that_never_parks() {
        let gate = Gate::new();
        let _idle = gate.waiter().unwrap();
        assert!(!gate.close(Instant::now() + Duration::from_millis(50)));
        assert!(!gate.shared.lock().closed, "the gate is open again");
    }
}
