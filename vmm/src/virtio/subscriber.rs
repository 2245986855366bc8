//! Connects one virtio-mmio device to the event loop: its queue-notify ioeventfds and its
//! backend fd.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use zygote_devices::virtio::mmio::MmioTransport;
use zygote_devices::virtio::VirtioDevice;

/// Event data tag of the backend fd; queue notifications use the queue index.
const BACKEND: u32 = u32::MAX;

/// Serves one device's events.
pub struct DeviceSubscriber<D: VirtioDevice> {
    transport: Arc<Mutex<MmioTransport<D>>>,
    notify: Vec<EventFd>,
    backend: Option<RawFd>,
}

impl<D: VirtioDevice> DeviceSubscriber<D> {
    /// A subscriber for `transport`, woken by `notify[i]` for queue `i`.
    pub fn new(transport: Arc<Mutex<MmioTransport<D>>>, notify: Vec<EventFd>) -> Self {
        let backend = lock(&transport).device().backend_fd();
        Self {
            transport,
            notify,
            backend,
        }
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
        if data == BACKEND {
            transport.device_mut().process_backend();
        } else if let Some(fd) = self.notify.get(data as usize) {
            // The counter only says "at least one notification"; its value is irrelevant.
            let _ = fd.read();
            transport.queue_notify(data);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Adding fails only for a duplicate fd; each fd here is registered once.
        for (index, fd) in self.notify.iter().enumerate() {
            let _ = ops.add(Events::with_data(fd, index as u32, EventSet::IN));
        }
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
