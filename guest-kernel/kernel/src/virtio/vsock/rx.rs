//! The receive path: posting receive slots, and acting on every packet the device returns
//! (connection state changes, data into the rings, answers the protocol requires).

use super::conn::Conn;
use super::packet::{
    Header, HEADER, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::{ConnId, ConnState, Vsock, CONN_BUF, DATA, HEADER_ROOM, SLOT};
use crate::virtio::queue::Buf;

impl Vsock {
    fn rx_slot(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < RX_SLOTS: inside the allocation.
        unsafe { self.rx_slots.add(slot * SLOT) }
    }

    /// Header and data as two descriptors (some devices want the header alone in the first).
    pub(super) fn post_rx(&mut self, slot: usize) {
        let base = self.rx_slot(slot);
        // SAFETY: HEADER_ROOM < SLOT.
        let data = unsafe { base.add(HEADER_ROOM) };
        if let Some(head) = self
            .rx
            .add(&[Buf::write(base, HEADER), Buf::write(data, DATA)])
        {
            self.rx_slot_of[usize::from(head)] = slot as u8;
        }
    }

    /// Handles every packet the device returned and posts its slot again.
    pub(super) fn poll_rx(&mut self) {
        let mut reposted = false;
        while let Some(used) = self.rx.pop_used() {
            let slot = usize::from(self.rx_slot_of[usize::from(used.head)]);
            self.receive(slot, used.len as usize);
            self.post_rx(slot);
            reposted = true;
        }
        if reposted {
            self.rx.notify();
        }
    }

    /// One received packet in receive slot `slot`, `len` bytes written by the device.
    fn receive(&mut self, slot: usize, len: usize) {
        if len < HEADER {
            return;
        }
        let base = self.rx_slot(slot);
        let h = Header::read(base);
        let payload = (h.len as usize).min(len - HEADER).min(DATA);
        if h.dst_cid != self.guest_cid {
            return;
        }
        if h.op == OP_RST && self.find(&h).is_none() {
            self.note_stray_rst(&h);
            return;
        }
        if h.kind != TYPE_STREAM {
            self.reply_rst(&h);
            return;
        }
        match self.find(&h) {
            Some(id) => self.on_packet(id, &h, base, payload),
            None => self.incoming(&h),
        }
    }

    /// A packet for connection `id`; its data (`payload` bytes) follows the header in `base`.
    fn on_packet(&mut self, id: ConnId, h: &Header, base: *mut u8, payload: usize) {
        let conn = &mut self.conns[id];
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = h.fwd_cnt;
        conn.credit_requested = false;
        match (h.op, conn.state) {
            (OP_RST, ConnState::Closing) => self.conns[id] = Conn::FREE,
            (OP_RST, _) => conn.state = ConnState::Closed,
            (OP_RESPONSE, ConnState::Connecting) => conn.state = ConnState::Established,
            (OP_RW, ConnState::Established | ConnState::Closing) => self.on_data(id, base, payload),
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, ConnState::Established) => self.credit_update(id),
            (OP_SHUTDOWN, ConnState::Established | ConnState::Closing) => {
                self.on_shutdown(id, h.flags)
            }
            (_, ConnState::Closed) => {}
            _ => self.abort(id),
        }
    }

    /// RW data for connection `id` into its ring.
    fn on_data(&mut self, id: ConnId, base: *mut u8, payload: usize) {
        if self.conns[id].buffered() + payload > CONN_BUF {
            // The peer ignored our credit: nothing sane left to do.
            self.abort(id);
            return;
        }
        // SAFETY: HEADER_ROOM + payload <= SLOT; the device wrote the slot.
        let data = unsafe { base.add(HEADER_ROOM) };
        self.ring_write(id, data, payload);
    }

    /// SHUTDOWN from the peer of connection `id`.
    fn on_shutdown(&mut self, id: ConnId, flags: u32) {
        let conn = &mut self.conns[id];
        if flags & SHUTDOWN_SEND != 0 {
            conn.peer_done = true;
        }
        if flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV {
            // A clean disconnect: the peer waits for our RST (§5.10.6.5).
            let closing = conn.state == ConnState::Closing;
            self.reset(id);
            match closing {
                true => self.conns[id] = Conn::FREE,
                false => self.conns[id].state = ConnState::Closed,
            }
        }
    }

    /// A packet for no known connection: a REQUEST to a listening port opens one; anything
    /// else (RST aside) is answered with RST.
    fn incoming(&mut self, h: &Header) {
        let listening = self.listening.contains(&Some(h.dst_port));
        let free = self.conns.iter().position(|c| c.state == ConnState::Free);
        match (h.op, listening, free) {
            (OP_REQUEST, true, Some(id)) => {
                self.conns[id] = Conn {
                    state: ConnState::Established,
                    local_port: h.dst_port,
                    peer_cid: h.src_cid,
                    peer_port: h.src_port,
                    peer_buf_alloc: h.buf_alloc,
                    peer_fwd_cnt: h.fwd_cnt,
                    unaccepted: true,
                    ..Conn::FREE
                };
                self.control(id, OP_RESPONSE, 0);
            }
            (OP_RST, _, _) => {}
            _ => self.reply_rst(h),
        }
    }
}
