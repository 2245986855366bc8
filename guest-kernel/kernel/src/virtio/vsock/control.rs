//! Data-less packets (REQUEST, RESPONSE, SHUTDOWN, RST, credit updates and requests): sent at
//! once when a transmit slot is free, else queued in order until one is.

use super::packet::{Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_RST, TYPE_STREAM};
use super::{ConnId, ConnState, Vsock, CONN_BUF, PENDING};

/// A control packet waiting for a transmit slot.
#[derive(Clone, Copy, Default)]
pub(super) struct Pending {
    header: Header,
}

impl Vsock {
    /// The header of a packet on connection `id`; it tells the peer our `fwd_cnt`.
    pub(super) fn header(&mut self, id: ConnId, op: u16, flags: u32, len: u32) -> Header {
        let guest_cid = self.guest_cid;
        let conn = &mut self.conns[id];
        conn.fwd_cnt_sent = conn.fwd_cnt;
        Header {
            src_cid: guest_cid,
            dst_cid: conn.peer_cid,
            src_port: conn.local_port,
            dst_port: conn.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF as u32,
            fwd_cnt: conn.fwd_cnt,
        }
    }

    pub(super) fn credit_update(&mut self, id: ConnId) {
        self.control(id, OP_CREDIT_UPDATE, 0);
    }

    pub(super) fn credit_request(&mut self, id: ConnId) {
        self.control(id, OP_CREDIT_REQUEST, 0);
    }

    pub(super) fn reset(&mut self, id: ConnId) {
        self.control(id, OP_RST, 0);
    }

    /// RST for a connection that broke the protocol; it stays Closed until released.
    pub(super) fn abort(&mut self, id: ConnId) {
        self.reset(id);
        self.conns[id].state = ConnState::Closed;
    }

    /// A data-less packet on connection `id`.
    pub(super) fn control(&mut self, id: ConnId, op: u16, flags: u32) {
        let header = self.header(id, op, flags, 0);
        self.send_control(header);
    }

    /// RST in answer to `h` (for no connection of ours).
    pub(super) fn reply_rst(&mut self, h: &Header) {
        let header = Header {
            src_cid: self.guest_cid,
            dst_cid: h.src_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            kind: TYPE_STREAM,
            op: OP_RST,
            buf_alloc: CONN_BUF as u32,
            ..Header::default()
        };
        self.send_control(header);
    }

    /// Sends a header-only packet now, or queues it (in order) until a slot frees.
    fn send_control(&mut self, header: Header) {
        if self.pending_len == 0 {
            if let Some(slot) = self.take_tx_slot() {
                self.submit_header(slot, header);
                self.tx.notify();
                return;
            }
        }
        if self.pending_len < PENDING {
            let at = (self.pending_head + self.pending_len) % PENDING;
            self.pending[at] = Pending { header };
            self.pending_len += 1;
        }
        // Else dropped: the peer times out or retries; nothing better fits in fixed memory.
    }

    /// Sends queued control packets, oldest first, while transmit slots are free.
    pub(super) fn flush_pending(&mut self) {
        let mut sent = false;
        while self.pending_len > 0 {
            let Some(slot) = self.take_tx_slot() else {
                break;
            };
            let header = self.pending[self.pending_head].header;
            self.pending_head = (self.pending_head + 1) % PENDING;
            self.pending_len -= 1;
            self.submit_header(slot, header);
            sent = true;
        }
        if sent {
            self.tx.notify();
        }
    }
}
