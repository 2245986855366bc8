//! Connects one virtio-mmio device to the event loop: its queue-notify ioeventfds and its
//! backend fd.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zygote_devices::virtio::mmio::MmioTransport;
use zygote_devices::virtio::VirtioDevice;

/// Event data tag of the backend fd; queue notifications use the queue index.
const BACKEND: u32 = u32::MAX;
/// Event data tag of the device's own "more work left" eventfd.
const PENDING: u32 = u32::MAX - 1;

/// Serves one device's events.
pub struct DeviceSubscriber<D: VirtioDevice> {
    transport: Arc<Mutex<MmioTransport<D>>>,
    notify: Vec<EventFd>,
    backend: Option<RawFd>,
    /// Written when a pass over a queue stopped at its bound with work left, so the device is
    /// served again on the next round, after the other ready fds (a guest that keeps refilling
    /// a ring gets one queue's worth per round, not the whole thread).
    pending: EventFd,
}

impl<D: VirtioDevice> DeviceSubscriber<D> {
    /// A subscriber for `transport`, woken by `notify[i]` for queue `i`.
    pub fn new(
        transport: Arc<Mutex<MmioTransport<D>>>,
        notify: Vec<EventFd>,
    ) -> std::io::Result<Self> {
        let backend = lock(&transport).device().backend_fd();
        Ok(Self {
            transport,
            notify,
            backend,
            pending: EventFd::new(EFD_NONBLOCK)?,
        })
    }
}

fn lock<D: VirtioDevice>(
    transport: &Mutex<MmioTransport<D>>,
) -> std::sync::MutexGuard<'_, MmioTransport<D>> {
    transport
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<D: VirtioDevice> MutEventSubscriber for DeviceSubscriber<D> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let data = events.data();
        let mut transport = lock(&self.transport);
        match data {
            BACKEND => transport.device_mut().process_backend(),
            PENDING => {
                let _ = self.pending.read();
                transport.process_pending_work();
            }
            queue => {
                if let Some(fd) = self.notify.get(queue as usize) {
                    // The counter only says "at least one notification"; its value is not used.
                    let _ = fd.read();
                    transport.queue_notify(queue);
                }
            }
        }
        if transport.has_pending_work() {
            // Failing to write only delays the rest until the guest's next notification.
            let _ = self.pending.write(1);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Adding fails only for a duplicate fd; each fd here is registered once.
        for (index, fd) in self.notify.iter().enumerate() {
            let _ = ops.add(Events::with_data(fd, index as u32, EventSet::IN));
        }
        let _ = ops.add(Events::with_data(&self.pending, PENDING, EventSet::IN));
        if let Some(fd) = self.backend {
            // Edge-triggered: a backend stays readable while the guest has no buffers for it, and
            // the device drains it itself when the guest posts some.
            let _ = ops.add(Events::with_data_raw(
                fd,
                BACKEND,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ));
        }
    }
}
