//! The event queue: the device says when every connection was dropped (TRANSPORT_RESET).

use super::conn::Conn;
use super::{Vsock, EVENT_SIZE};
use crate::virtio::queue::Buf;

const EVENT_TRANSPORT_RESET: u32 = 0;

impl Vsock {
    fn event_slot(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < EVENT_SLOTS: inside the allocation.
        unsafe { self.event_slots.add(slot * EVENT_SIZE) }
    }

    pub(super) fn post_event(&mut self, slot: usize) {
        let buf = self.event_slot(slot);
        if let Some(head) = self.events.add(&[Buf::write(buf, EVENT_SIZE)]) {
            self.event_slot_of[usize::from(head)] = slot as u8;
        }
    }

    /// Handles the events the device returned and posts their buffers again.
    pub(super) fn poll_events(&mut self) {
        if !self.events.has_used() {
            return;
        }
        while let Some(used) = self.events.pop_used() {
            let slot = usize::from(self.event_slot_of[usize::from(used.head)]);
            // SAFETY: the device returned this event buffer; it starts with a le32 id.
            let id = unsafe { self.event_slot(slot).cast::<u32>().read_volatile() };
            if used.len >= 4 && u32::from_le(id) == EVENT_TRANSPORT_RESET {
                self.transport_reset();
            }
            self.post_event(slot);
        }
        self.events.notify();
    }

    /// Every connection is gone (the device was reset, e.g. after a migration or snapshot).
    fn transport_reset(&mut self) {
        self.conns.fill(Conn::FREE);
        self.pending_len = 0;
        self.guest_cid = self.mmio.config(|m| m.config_u64(0));
    }
}
