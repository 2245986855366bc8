//! virtio-vsock (virtio 1.2 §5.10), polled: stream sockets with credit-based flow control,
//! listening ports that accept host-initiated connections, and connections to the host.
//!
//! Received data is copied out of the receive buffers into a per-connection ring of
//! [`CONN_BUF`] bytes (the `buf_alloc` the guest advertises), so receive buffers go back to
//! the device at once and one slow connection never blocks the others. A CREDIT_UPDATE goes
//! out whenever the application has consumed a quarter of the ring since the peer last heard
//! the guest's `fwd_cnt`, and on CREDIT_REQUEST. Anything for an unknown connection is
//! answered with RST.

use super::queue::{Buf, Virtqueue};
use super::transport::{Mmio, VirtioError};
use crate::arena::Arena;
use crate::clock::{Clock, Deadline};

/// Most connections at once.
pub const MAX_CONNS: usize = 128;
/// Per-connection receive ring: the `buf_alloc` advertised to the peer.
pub const CONN_BUF: usize = 16 * 1024;
/// The host's CID.
pub const HOST_CID: u64 = 2;

const HEADER: usize = 44;
/// Room reserved for a header in a slot (keeps the data 64-byte aligned).
const HEADER_ROOM: usize = 64;
const DATA: usize = 4096;
const SLOT: usize = HEADER_ROOM + DATA;
const RX_SLOTS: usize = 64;
const TX_SLOTS: usize = 32;
const EVENT_SLOTS: usize = 4;
const EVENT_SIZE: usize = 8;
const PENDING: usize = 256;
/// How long a closing connection waits for the peer's RST before sending its own.
const CLOSE_TIMEOUT_MS: u64 = 2_000;
/// First local port for connections the guest opens.
const EPHEMERAL_PORTS: u32 = 49152;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const EVENT_QUEUE: u16 = 2;

const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;
const EVENT_TRANSPORT_RESET: u32 = 0;

/// A connection's index in the table.
pub type ConnId = usize;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// The slot is unused.
    Free,
    /// The guest sent REQUEST and waits for RESPONSE.
    Connecting,
    /// Data flows.
    Established,
    /// The guest sent SHUTDOWN and waits for the peer's RST.
    Closing,
    /// Reset or shut down by the peer (or refused): received data can still be read, then
    /// [`Vsock::release`] frees the slot.
    Closed,
}

/// Why a vsock operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockError {
    /// No free connection slot.
    NoSlot,
    /// The connection was reset or refused.
    Reset,
    /// The peer did not answer in time.
    Timeout,
}

/// The 44-byte little-endian packet header (§5.10.6).
#[derive(Clone, Copy, Default)]
struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    kind: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Header {
    fn read(from: *const u8) -> Self {
        let mut b = [0u8; HEADER];
        // SAFETY: callers pass a receive slot the device has returned (HEADER bytes at least).
        unsafe { core::ptr::copy_nonoverlapping(from, b.as_mut_ptr(), HEADER) };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | u64::from(u32_at(o + 4)) << 32;
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    fn write(&self, to: *mut u8) {
        let mut b = [0u8; HEADER];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        // SAFETY: callers pass a free transmit slot (HEADER_ROOM bytes of header room).
        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), to, HEADER) };
    }
}

/// One connection.
#[derive(Clone, Copy)]
struct Conn {
    state: ConnState,
    local_port: u32,
    peer_cid: u64,
    peer_port: u32,
    /// Bytes ever received (wrapping) and bytes ever consumed by the application (`fwd_cnt`).
    rx_cnt: u32,
    fwd_cnt: u32,
    /// The `fwd_cnt` the peer last heard.
    fwd_cnt_sent: u32,
    /// The peer's buffer and what it consumed; bytes ever sent to it.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    /// The peer will send no more.
    peer_done: bool,
    /// Accepted on a listening port and not yet handed out by [`Vsock::accept`].
    unaccepted: bool,
    /// When a closing connection gives up waiting for the peer's RST.
    close_by: Option<Deadline>,
    /// A CREDIT_REQUEST went out and the peer has not sent anything since.
    credit_requested: bool,
}

impl Conn {
    const FREE: Conn = Conn {
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

    fn buffered(&self) -> usize {
        self.rx_cnt.wrapping_sub(self.fwd_cnt) as usize
    }

    /// Bytes the peer can take now.
    fn peer_credit(&self) -> usize {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight) as usize
    }
}

/// A control packet waiting for a transmit slot.
#[derive(Clone, Copy, Default)]
struct Pending {
    header: Header,
}

/// A bound virtio-vsock device.
pub struct Vsock {
    mmio: Mmio,
    rx: Virtqueue,
    tx: Virtqueue,
    events: Virtqueue,
    guest_cid: u64,
    clock: Clock,
    rx_slots: *mut u8,
    tx_slots: *mut u8,
    event_slots: *mut u8,
    /// Which slot each descriptor head of the receive and transmit queues carries.
    rx_slot_of: [u8; 128],
    tx_slot_of: [u8; 128],
    event_slot_of: [u8; 128],
    tx_free: u32,
    /// The connection rings, CONN_BUF bytes each.
    rings: *mut u8,
    /// MAX_CONNS connections and PENDING queued control packets, in arena memory: together
    /// ~20 KiB, too much to move around on the 64 KiB user stack.
    conns: &'static mut [Conn],
    listening: [Option<u32>; 4],
    pending: &'static mut [Pending],
    pending_head: usize,
    pending_len: usize,
    next_port: u32,
}

impl Vsock {
    /// Initializes the device, posts receive and event buffers, reads the guest CID.
    pub fn new(mmio: Mmio, arena: &mut Arena, clock: Clock) -> Result<Self, VirtioError> {
        mmio.begin(0, 0)?;
        let rx = mmio.queue(arena, RX_QUEUE, 128)?;
        let tx = mmio.queue(arena, TX_QUEUE, 128)?;
        let events = mmio.queue(arena, EVENT_QUEUE, EVENT_SLOTS as u16)?;
        let oom = VirtioError::OutOfMemory;
        let rx_slots = arena.alloc_uninit(RX_SLOTS * SLOT, 4096).ok_or(oom)?;
        let tx_slots = arena.alloc_uninit(TX_SLOTS * SLOT, 4096).ok_or(oom)?;
        let event_slots = arena.alloc(EVENT_SLOTS * EVENT_SIZE, 64).ok_or(oom)?;
        let rings = arena.alloc_uninit(MAX_CONNS * CONN_BUF, 4096).ok_or(oom)?;
        let conns = arena.alloc_slice(MAX_CONNS, Conn::FREE).ok_or(oom)?;
        let pending = arena.alloc_slice(PENDING, Pending::default()).ok_or(oom)?;
        let guest_cid = mmio.config(|m| m.config_u64(0));
        let mut vsock = Vsock {
            mmio,
            rx,
            tx,
            events,
            guest_cid,
            clock,
            rx_slots,
            tx_slots,
            event_slots,
            rx_slot_of: [0; 128],
            tx_slot_of: [0; 128],
            event_slot_of: [0; 128],
            tx_free: u32::MAX,
            rings,
            conns,
            listening: [None; 4],
            pending,
            pending_head: 0,
            pending_len: 0,
            next_port: EPHEMERAL_PORTS,
        };
        for slot in 0..RX_SLOTS {
            vsock.post_rx(slot);
        }
        for slot in 0..EVENT_SLOTS {
            vsock.post_event(slot);
        }
        mmio.finish();
        vsock.rx.notify();
        vsock.events.notify();
        Ok(vsock)
    }

    /// The guest's CID (from the device config).
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Accepts connection requests to `port` from now on.
    pub fn listen(&mut self, port: u32) {
        if let Some(free) = self.listening.iter_mut().find(|p| p.is_none()) {
            *free = Some(port);
        }
    }

    fn rx_slot(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < RX_SLOTS: inside the allocation.
        unsafe { self.rx_slots.add(slot * SLOT) }
    }

    fn tx_slot(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < TX_SLOTS: inside the allocation.
        unsafe { self.tx_slots.add(slot * SLOT) }
    }

    fn ring(&self, id: ConnId) -> *mut u8 {
        // SAFETY: id < MAX_CONNS: inside the allocation.
        unsafe { self.rings.add(id * CONN_BUF) }
    }

    /// Header and data as two descriptors (some devices want the header alone in the first).
    fn post_rx(&mut self, slot: usize) {
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

    fn event_slot(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < EVENT_SLOTS: inside the allocation.
        unsafe { self.event_slots.add(slot * EVENT_SIZE) }
    }

    fn post_event(&mut self, slot: usize) {
        let buf = self.event_slot(slot);
        if let Some(head) = self.events.add(&[Buf::write(buf, EVENT_SIZE)]) {
            self.event_slot_of[usize::from(head)] = slot as u8;
        }
    }

    /// Processes everything the device returned: received packets (answering as the protocol
    /// requires), finished transmissions, events; sends queued control packets and expires
    /// connections whose close timed out. Costs no VM exit when nothing happened.
    pub fn poll(&mut self) {
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
        if self.events.has_used() {
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
        self.reclaim_tx();
        self.flush_pending();
        for id in 0..MAX_CONNS {
            let conn = &self.conns[id];
            if conn.state == ConnState::Closing && conn.close_by.is_some_and(|d| d.passed()) {
                self.reset(id);
                self.conns[id] = Conn::FREE;
            }
        }
    }

    /// Every connection is gone (the device was reset, e.g. after a migration or snapshot).
    fn transport_reset(&mut self) {
        self.conns.fill(Conn::FREE);
        self.pending_len = 0;
        self.guest_cid = self.mmio.config(|m| m.config_u64(0));
    }

    fn reclaim_tx(&mut self) {
        while let Some(used) = self.tx.pop_used() {
            let slot = self.tx_slot_of[usize::from(used.head)];
            self.tx_free |= 1 << slot;
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
        if h.dst_cid != self.guest_cid || h.op == OP_RST && self.find(&h).is_none() {
            return;
        }
        if h.kind != TYPE_STREAM {
            self.reply_rst(&h);
            return;
        }
        let Some(id) = self.find(&h) else {
            self.incoming(&h);
            return;
        };
        let conn = &mut self.conns[id];
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = h.fwd_cnt;
        conn.credit_requested = false;
        match (h.op, conn.state) {
            (OP_RST, ConnState::Closing) => self.conns[id] = Conn::FREE,
            (OP_RST, _) => conn.state = ConnState::Closed,
            (OP_RESPONSE, ConnState::Connecting) => conn.state = ConnState::Established,
            (OP_RW, ConnState::Established | ConnState::Closing) => {
                if conn.buffered() + payload > CONN_BUF {
                    // The peer ignored our credit: nothing sane left to do.
                    self.reset(id);
                    self.conns[id].state = ConnState::Closed;
                    return;
                }
                // SAFETY: HEADER_ROOM + payload <= SLOT; the device wrote the slot.
                let data = unsafe { base.add(HEADER_ROOM) };
                self.ring_write(id, data, payload);
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, ConnState::Established) => self.credit_update(id),
            (OP_SHUTDOWN, ConnState::Established | ConnState::Closing) => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    conn.peer_done = true;
                }
                if h.flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV {
                    // A clean disconnect: the peer waits for our RST (§5.10.6.5).
                    let closing = conn.state == ConnState::Closing;
                    self.reset(id);
                    match closing {
                        true => self.conns[id] = Conn::FREE,
                        false => self.conns[id].state = ConnState::Closed,
                    }
                }
            }
            (_, ConnState::Closed) => {}
            _ => {
                self.reset(id);
                self.conns[id].state = ConnState::Closed;
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

    fn find(&self, h: &Header) -> Option<ConnId> {
        self.conns.iter().position(|c| {
            c.state != ConnState::Free
                && c.local_port == h.dst_port
                && c.peer_port == h.src_port
                && c.peer_cid == h.src_cid
        })
    }

    fn ring_write(&mut self, id: ConnId, mut from: *const u8, len: usize) {
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
        let local_port = loop {
            let candidate = self.next_port;
            self.next_port = match self.next_port.checked_add(1) {
                Some(next) => next,
                None => EPHEMERAL_PORTS,
            };
            let in_use = self.conns.iter().any(|c| {
                c.state != ConnState::Free && c.local_port == candidate && c.peer_port == port
            });
            if !in_use && !self.listening.contains(&Some(candidate)) {
                break candidate;
            }
        };
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

    /// Where connection `id` stands.
    pub fn state(&self, id: ConnId) -> ConnState {
        self.conns[id].state
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
            let base = self.tx_slot(slot);
            // SAFETY: the slot is free (not with the device); HEADER_ROOM + n <= SLOT.
            let payload = unsafe { base.add(HEADER_ROOM) };
            // SAFETY: as above; `data[sent..sent + n]` is readable.
            unsafe { core::ptr::copy_nonoverlapping(data.as_ptr().add(sent), payload, n) };
            let header = self.header(id, OP_RW, 0, n as u32);
            header.write(base);
            self.submit(slot, &[Buf::read(base, HEADER), Buf::read(payload, n)]);
            self.conns[id].tx_cnt = self.conns[id].tx_cnt.wrapping_add(n as u32);
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

    fn header(&mut self, id: ConnId, op: u16, flags: u32, len: u32) -> Header {
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

    fn credit_update(&mut self, id: ConnId) {
        self.control(id, OP_CREDIT_UPDATE, 0);
    }

    fn credit_request(&mut self, id: ConnId) {
        self.control(id, OP_CREDIT_REQUEST, 0);
    }

    fn reset(&mut self, id: ConnId) {
        self.control(id, OP_RST, 0);
    }

    /// A data-less packet on connection `id`.
    fn control(&mut self, id: ConnId, op: u16, flags: u32) {
        let header = self.header(id, op, flags, 0);
        self.send_control(header);
    }

    /// RST in answer to `h` (for no connection of ours).
    fn reply_rst(&mut self, h: &Header) {
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
                let base = self.tx_slot(slot);
                header.write(base);
                self.submit(slot, &[Buf::read(base, HEADER)]);
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

    fn flush_pending(&mut self) {
        let mut sent = false;
        while self.pending_len > 0 {
            let Some(slot) = self.take_tx_slot() else {
                break;
            };
            let header = self.pending[self.pending_head].header;
            self.pending_head = (self.pending_head + 1) % PENDING;
            self.pending_len -= 1;
            let base = self.tx_slot(slot);
            header.write(base);
            self.submit(slot, &[Buf::read(base, HEADER)]);
            sent = true;
        }
        if sent {
            self.tx.notify();
        }
    }

    fn take_tx_slot(&mut self) -> Option<usize> {
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

    fn submit(&mut self, slot: usize, bufs: &[Buf]) {
        // `take_tx_slot` checked there are descriptors for two buffers.
        match self.tx.add(bufs) {
            Some(head) => self.tx_slot_of[usize::from(head)] = slot as u8,
            None => self.tx_free |= 1 << slot,
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
