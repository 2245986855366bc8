//! The per-connection receive rings ([`CONN_BUF`] bytes each): the receive path writes them,
//! the application reads them, and reading gives the peer credit back.

use super::{ConnId, ConnState, Vsock, CONN_BUF};

impl Vsock {
    fn ring(&self, id: ConnId) -> *mut u8 {
        // SAFETY: id < MAX_CONNS: inside the allocation.
        unsafe { self.rings.add(id * CONN_BUF) }
    }

    /// Appends `len` bytes at `from` to connection `id`'s ring (the caller checked they fit).
    pub(super) fn ring_write(&mut self, id: ConnId, mut from: *const u8, len: usize) {
        let ring = self.ring(id);
        let mut left = len;
        while left > 0 {
            let at = self.conns[id].rx_cnt as usize % CONN_BUF;
            let n = left.min(CONN_BUF - at);
            // SAFETY: `at + n <= CONN_BUF` inside this connection's ring; `from` has `left`
            // readable bytes (a returned receive slot).
            unsafe {
                core::ptr::copy_nonoverlapping(from, ring.add(at), n);
                from = from.add(n);
            }
            self.conns[id].rx_cnt = self.conns[id].rx_cnt.wrapping_add(n as u32);
            left -= n;
        }
    }

    /// Bytes received and not yet read.
    pub fn available(&self, id: ConnId) -> usize {
        self.conns[id].buffered()
    }

    /// Whether the peer will send nothing more and everything it sent was read.
    pub fn at_eof(&self, id: ConnId) -> bool {
        let conn = &self.conns[id];
        conn.buffered() == 0 && (conn.peer_done || conn.state == ConnState::Closed)
    }

    /// Copies up to `out.len()` received bytes without consuming them.
    pub fn peek(&self, id: ConnId, out: &mut [u8]) -> usize {
        let conn = &self.conns[id];
        let n = out.len().min(conn.buffered());
        let ring = self.ring(id);
        let at = conn.fwd_cnt as usize % CONN_BUF;
        let first = n.min(CONN_BUF - at);
        // SAFETY: both pieces lie in this connection's ring and were written (they are within
        // the `buffered` bytes after `fwd_cnt`).
        unsafe {
            core::ptr::copy_nonoverlapping(ring.add(at), out.as_mut_ptr(), first);
            core::ptr::copy_nonoverlapping(ring, out.as_mut_ptr().add(first), n - first);
        }
        n
    }

    /// Drops `n` received bytes (at most what is buffered), telling the peer when it may
    /// otherwise stall.
    pub fn consume(&mut self, id: ConnId, n: usize) {
        let conn = &mut self.conns[id];
        let n = n.min(conn.buffered());
        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
        self.consumed = self.consumed.wrapping_add(n as u32);
        let unannounced = conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_sent) as usize;
        if unannounced >= CONN_BUF / 4 && conn.state == ConnState::Established {
            self.credit_update(id);
        }
    }

    /// Reads up to `out.len()` received bytes.
    pub fn recv(&mut self, id: ConnId, out: &mut [u8]) -> usize {
        let n = self.peek(id, out);
        self.consume(id, n);
        n
    }
}
