//! The VM's device event loop: one thread running an event-manager over every device's queue
//! notification eventfds and host-side backend fds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vm::quiesce::GateWaiter;

/// A subscriber the loop drives.
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Errors from starting the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// The event manager (epoll) could not be created or a subscriber registered.
    #[error("cannot set up the device event loop: {0}")]
    Manager(#[from] event_manager::Error),
    /// The stop eventfd could not be created.
    #[error("cannot create the event loop's stop eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The thread could not be started.
    #[error("cannot start the device event loop thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// Waiting for events failed while the VM ran; its devices stopped being served.
    #[error("the device event loop failed: {0}")]
    Run(#[source] event_manager::Error),
}

/// Ends the loop when its eventfd is written.
struct Stopper {
    fd: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for Stopper {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.fd.read();
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Registration only fails for a duplicate fd, which a fresh eventfd cannot be.
        let _ = ops.add(Events::new(&self.fd, EventSet::IN));
    }
}

/// Parks the loop while its VM is paused (see `vm::quiesce`): no device runs, so guest memory
/// and device state stay still.
struct Pauser {
    waiter: GateWaiter,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for Pauser {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let stopped = &self.stopped;
        self.waiter
            .park_if_closed(|| stopped.load(Ordering::SeqCst));
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Registration only fails for a duplicate fd, which a fresh eventfd cannot be.
        let _ = ops.add(Events::new(self.waiter.event(), EventSet::IN));
    }
}

/// The running loop; dropping it stops and joins the thread.
pub struct EventLoop {
    stop: EventFd,
    stopped: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    /// Starts a thread that serves `subscribers` until the loop is dropped. If waiting for
    /// events ever fails, the loop ends and `on_failure` is told why (the VM stops with it).
    pub(crate) fn start(
        subscribers: Vec<Subscriber>,
        gate: GateWaiter,
        on_failure: impl FnOnce(EventLoopError) + Send + 'static,
    ) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::<Subscriber>::new()?;
        for subscriber in subscribers {
            manager.add_subscriber(subscriber);
        }
        let stop = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::EventFd)?;
        let stopped = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Box::new(Stopper {
            fd: stop.try_clone().map_err(EventLoopError::EventFd)?,
            stopped: stopped.clone(),
        }));
        manager.add_subscriber(Box::new(Pauser {
            waiter: gate,
            stopped: stopped.clone(),
        }));
        let thread_stopped = stopped.clone();
        let thread = std::thread::Builder::new()
            .name("zygote-devices".into())
            .spawn(move || {
                while !thread_stopped.load(Ordering::SeqCst) {
                    if let Err(e) = manager.run() {
                        on_failure(EventLoopError::Run(e));
                        break;
                    }
                }
            })
            .map_err(EventLoopError::Spawn)?;
        Ok(Self {
            stop,
            stopped,
            thread: Some(thread),
        })
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        // Set first, so a loop parked by a pause sees it too.
        self.stopped.store(true, Ordering::SeqCst);
        // If the eventfd cannot be written the thread may never wake: leave it rather than
        // hang the caller (it ends with the process, holding only device handles).
        let Ok(()) = self.stop.write(1) else {
            return;
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
