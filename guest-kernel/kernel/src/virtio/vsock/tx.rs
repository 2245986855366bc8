//! The transmit path: data sends bounded by the peer's credit, transmit slots and their
//! descriptors, and draining before exit.

use super::packet::{Header, HEADER, OP_RW};
use super::{ConnId, ConnState, Vsock, VsockError, DATA, HEADER_ROOM, SLOT, TX_SLOTS};
use crate::virtio::queue::Buf;

impl Vsock {
    pub(super) fn tx_slot(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < TX_SLOTS: inside the allocation.
        unsafe { self.tx_slots.add(slot * SLOT) }
    }

    /// Sends as much of `data` as the peer's credit and free transmit slots allow now; the
    /// bytes sent. An error when the connection is not open.
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<usize, VsockError> {
        if self.conns[id].state != ConnState::Established {
            return Err(VsockError::Reset);
        }
        let mut sent = 0;
        while sent < data.len() {
            let n = (data.len() - sent)
                .min(self.conns[id].peer_credit())
                .min(DATA);
            if n == 0 {
                break;
            }
            let Some(slot) = self.take_tx_slot() else {
                break;
            };
            self.send_rw(id, slot, &data[sent..sent + n]);
            sent += n;
        }
        if sent > 0 {
            self.tx.notify();
        } else if self.conns[id].peer_credit() == 0 && !self.conns[id].credit_requested {
            self.conns[id].credit_requested = true;
            self.credit_request(id);
        }
        Ok(sent)
    }

    /// One RW packet on connection `id` carrying `chunk` (at most DATA bytes, within the
    /// peer's credit) from the free transmit slot `slot`.
    fn send_rw(&mut self, id: ConnId, slot: usize, chunk: &[u8]) {
        let n = chunk.len();
        let base = self.tx_slot(slot);
        // SAFETY: the slot is free (not with the device); HEADER_ROOM + n <= SLOT.
        let payload = unsafe { base.add(HEADER_ROOM) };
        // SAFETY: as above; `chunk` is readable.
        unsafe { core::ptr::copy_nonoverlapping(chunk.as_ptr(), payload, n) };
        let header = self.header(id, OP_RW, 0, n as u32);
        header.write(base);
        self.submit(slot, &[Buf::read(base, HEADER), Buf::read(payload, n)]);
        self.conns[id].tx_cnt = self.conns[id].tx_cnt.wrapping_add(n as u32);
    }

    /// Sends all of `data`, polling the device while the peer's credit or transmit slots run
    /// out; gives up after `timeout_ms` without progress.
    pub fn send_all(&mut self, id: ConnId, data: &[u8], timeout_ms: u64) -> Result<(), VsockError> {
        let mut sent = 0;
        let mut deadline = self.clock.deadline_ms(timeout_ms);
        while sent < data.len() {
            let n = self.send(id, &data[sent..])?;
            if n > 0 {
                sent += n;
                deadline = self.clock.deadline_ms(timeout_ms);
            } else if deadline.passed() {
                return Err(VsockError::Timeout);
            }
            self.poll();
        }
        Ok(())
    }

    /// A header-only packet from the free transmit slot `slot` (the caller notifies).
    pub(super) fn submit_header(&mut self, slot: usize, header: Header) {
        let base = self.tx_slot(slot);
        header.write(base);
        self.submit(slot, &[Buf::read(base, HEADER)]);
    }

    /// A free transmit slot with descriptors for two buffers, if there is one.
    pub(super) fn take_tx_slot(&mut self) -> Option<usize> {
        if self.tx_free == 0 || self.tx.free() < 2 {
            self.reclaim_tx();
        }
        if self.tx.free() < 2 {
            return None;
        }
        let slot = self.tx_free.trailing_zeros() as usize;
        (slot < TX_SLOTS).then(|| {
            self.tx_free &= !(1 << slot);
            slot
        })
    }

    pub(super) fn submit(&mut self, slot: usize, bufs: &[Buf]) {
        // `take_tx_slot` checked there are descriptors for two buffers.
        match self.tx.add(bufs) {
            Some(head) => self.tx_slot_of[usize::from(head)] = slot as u8,
            None => self.tx_free |= 1 << slot,
        }
    }

    /// Frees the transmit slots the device is done with.
    pub(super) fn reclaim_tx(&mut self) {
        while let Some(used) = self.tx.pop_used() {
            let slot = self.tx_slot_of[usize::from(used.head)];
            self.tx_free |= 1 << slot;
        }
    }

    /// Polls until every queued packet went to the device and it returned them all, or
    /// `timeout_ms` passed (before exiting, so the last response is not lost).
    pub fn drain(&mut self, timeout_ms: u64) {
        let deadline = self.clock.deadline_ms(timeout_ms);
        while (self.pending_len > 0 || self.tx_free.count_ones() as usize != TX_SLOTS)
            && !deadline.passed()
        {
            self.poll();
            core::hint::spin_loop();
        }
    }
}
