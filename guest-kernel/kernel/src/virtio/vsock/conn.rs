//! The connection table: one entry per stream (its state and credit accounting), opening,
//! accepting, closing and freeing connections.

use super::packet::{Header, OP_REQUEST, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::{ConnId, ConnState, Vsock, VsockError, HOST_CID, MAX_CONNS};
use crate::clock::Deadline;

/// How long a closing connection waits for the peer's RST before sending its own.
const CLOSE_TIMEOUT_MS: u64 = 2_000;
/// First local port for connections the guest opens.
pub(super) const EPHEMERAL_PORTS: u32 = 49152;

/// One connection.
#[derive(Clone, Copy)]
pub(super) struct Conn {
    pub(super) state: ConnState,
    pub(super) local_port: u32,
    pub(super) peer_cid: u64,
    pub(super) peer_port: u32,
    /// Bytes ever received (wrapping) and bytes ever consumed by the application (`fwd_cnt`).
    pub(super) rx_cnt: u32,
    pub(super) fwd_cnt: u32,
    /// The `fwd_cnt` the peer last heard.
    pub(super) fwd_cnt_sent: u32,
    /// The peer's buffer and what it consumed; bytes ever sent to it.
    pub(super) peer_buf_alloc: u32,
    pub(super) peer_fwd_cnt: u32,
    pub(super) tx_cnt: u32,
    /// The peer will send no more.
    pub(super) peer_done: bool,
    /// Accepted on a listening port and not yet handed out by [`Vsock::accept`].
    pub(super) unaccepted: bool,
    /// When a closing connection gives up waiting for the peer's RST.
    pub(super) close_by: Option<Deadline>,
    /// A CREDIT_REQUEST went out and the peer has not sent anything since.
    pub(super) credit_requested: bool,
}

impl Conn {
    pub(super) const FREE: Conn = Conn {
        state: ConnState::Free,
        local_port: 0,
        peer_cid: 0,
        peer_port: 0,
        rx_cnt: 0,
        fwd_cnt: 0,
        fwd_cnt_sent: 0,
        peer_buf_alloc: 0,
        peer_fwd_cnt: 0,
        tx_cnt: 0,
        peer_done: false,
        unaccepted: false,
        close_by: None,
        credit_requested: false,
    };

    /// Bytes received and not yet consumed.
    pub(super) fn buffered(&self) -> usize {
        self.rx_cnt.wrapping_sub(self.fwd_cnt) as usize
    }

    /// Bytes the peer can take now.
    pub(super) fn peer_credit(&self) -> usize {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight) as usize
    }
}

impl Vsock {
    /// The connection `h` belongs to.
    pub(super) fn find(&self, h: &Header) -> Option<ConnId> {
        self.conns.iter().position(|c| {
            c.state != ConnState::Free
                && c.local_port == h.dst_port
                && c.peer_port == h.src_port
                && c.peer_cid == h.src_cid
        })
    }

    /// The first connection accepted on a listening port and not handed out yet.
    pub fn accept(&mut self) -> Option<ConnId> {
        let id = self.conns.iter().position(|c| c.unaccepted)?;
        self.conns[id].unaccepted = false;
        Some(id)
    }

    /// Starts a connection to the host's `port`; poll until [`Vsock::state`] says
    /// Established (or Closed: refused).
    pub fn connect(&mut self, port: u32) -> Result<ConnId, VsockError> {
        let id = self
            .conns
            .iter()
            .position(|c| c.state == ConnState::Free)
            .ok_or(VsockError::NoSlot)?;
        let local_port = self.ephemeral_port(port);
        self.conns[id] = Conn {
            state: ConnState::Connecting,
            local_port,
            peer_cid: HOST_CID,
            peer_port: port,
            ..Conn::FREE
        };
        self.control(id, OP_REQUEST, 0);
        Ok(id)
    }

    /// The next local port (counting up from [`EPHEMERAL_PORTS`], wrapping back to it) that
    /// neither a listener nor another connection to `peer_port` uses.
    fn ephemeral_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let candidate = self.next_port;
            self.next_port = match self.next_port.checked_add(1) {
                Some(next) => next,
                None => EPHEMERAL_PORTS,
            };
            let in_use = self.conns.iter().any(|c| {
                c.state != ConnState::Free && c.local_port == candidate && c.peer_port == peer_port
            });
            if !in_use && !self.listening.contains(&Some(candidate)) {
                return candidate;
            }
        }
    }

    /// Where connection `id` stands.
    pub fn state(&self, id: ConnId) -> ConnState {
        self.conns[id].state
    }

    /// Closes connection `id`: SHUTDOWN both ways, then the slot frees when the peer answers
    /// RST (or after a timeout, with our own RST). A connection already closed by the peer is
    /// freed at once.
    pub fn close(&mut self, id: ConnId) {
        match self.conns[id].state {
            ConnState::Established => {
                self.control(id, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.conns[id].state = ConnState::Closing;
                self.conns[id].close_by = Some(self.clock.deadline_ms(CLOSE_TIMEOUT_MS));
                self.conns[id].unaccepted = false;
            }
            ConnState::Connecting => {
                self.reset(id);
                self.conns[id] = Conn::FREE;
            }
            ConnState::Closed => self.conns[id] = Conn::FREE,
            ConnState::Closing | ConnState::Free => {}
        }
    }

    /// Frees a connection the peer closed, once the application is done with it.
    pub fn release(&mut self, id: ConnId) {
        if self.conns[id].state == ConnState::Closed {
            self.conns[id] = Conn::FREE;
        }
    }

    /// Gives up on closing connections whose peer never answered: our own RST, and the slot
    /// is free.
    pub(super) fn expire_closing(&mut self) {
        for id in 0..MAX_CONNS {
            let conn = &self.conns[id];
            if conn.state == ConnState::Closing && conn.close_by.is_some_and(|d| d.passed()) {
                self.reset(id);
                self.conns[id] = Conn::FREE;
            }
        }
    }
}
