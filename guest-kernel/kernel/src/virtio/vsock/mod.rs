//! virtio-vsock (virtio 1.2 §5.10), polled: stream sockets with credit-based flow control,
//! listening ports that accept host-initiated connections, and connections to the host.
//!
//! Received data is copied out of the receive buffers into a per-connection ring of
//! [`CONN_BUF`] bytes (the `buf_alloc` the guest advertises), so receive buffers go back to
//! the device at once and one slow connection never blocks the others. A CREDIT_UPDATE goes
//! out whenever the application has consumed a quarter of the ring since the peer last heard
//! the guest's `fwd_cnt`, and on CREDIT_REQUEST. Anything for an unknown connection is
//! answered with RST.
//!
//! The device and its memory are here; `packet` is the wire header, `conn` the connection
//! table, `rx` the receive path, `ring` the per-connection receive rings the application
//! reads, `tx` data sends, `control` data-less packets and their queue, `event` the event
//! queue.

mod conn;
mod control;
mod event;
mod hostile;
mod packet;
mod ring;
mod rx;
mod tx;

use super::queue::Virtqueue;
use super::transport::{Mmio, VirtioError};
use crate::arena::Arena;
use crate::clock::Clock;
use conn::{Conn, EPHEMERAL_PORTS};
use control::Pending;
pub use hostile::{STRAY_PEER_PORT, STRAY_PORTS};

/// Most connections at once.
pub const MAX_CONNS: usize = 128;
/// Per-connection receive ring: the `buf_alloc` advertised to the peer.
pub const CONN_BUF: usize = 16 * 1024;
/// The host's CID.
pub const HOST_CID: u64 = 2;

/// Room reserved for a header in a slot (keeps the data 64-byte aligned).
const HEADER_ROOM: usize = 64;
const DATA: usize = 4096;
const SLOT: usize = HEADER_ROOM + DATA;
const RX_SLOTS: usize = 64;
const TX_SLOTS: usize = 32;
const EVENT_SLOTS: usize = 4;
/// The event queue has room for more than the posted event buffers (the `hostile` workload
/// posts bad ones there).
const EVENT_QUEUE_SIZE: u16 = 8;
const EVENT_SIZE: usize = 8;
const PENDING: usize = 256;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const EVENT_QUEUE: u16 = 2;

/// A connection's index in the table.
pub type ConnId = usize;

/// What [`Vsock::activity`] returns: the three queues' [`Virtqueue::progress`] and the bytes
/// the application consumed (wrapping).
pub type Activity = [u32; 4];

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
    /// RSTs that matched no connection, one bit per port from `hostile::STRAY_PORTS` (the
    /// `hostile` workload's packets).
    stray_rsts: u32,
    /// Received bytes the application consumed, over all connections (wrapping).
    consumed: u32,
}

impl Vsock {
    /// Initializes the device, posts receive and event buffers, reads the guest CID.
    pub fn new(mmio: Mmio, arena: &mut Arena, clock: Clock) -> Result<Self, VirtioError> {
        let (rx, tx, events) = Self::begin(mmio, arena)?;
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
            stray_rsts: 0,
            consumed: 0,
        };
        vsock.go_live(true, true);
        Ok(vsock)
    }

    /// Resets the device, negotiates features and sets up fresh rx, tx and event queues.
    fn begin(
        mmio: Mmio,
        arena: &mut Arena,
    ) -> Result<(Virtqueue, Virtqueue, Virtqueue), VirtioError> {
        mmio.begin(0, 0)?;
        let rx = mmio.queue(arena, RX_QUEUE, 128)?;
        let tx = mmio.queue(arena, TX_QUEUE, 128)?;
        let events = mmio.queue(arena, EVENT_QUEUE, EVENT_QUEUE_SIZE)?;
        Ok((rx, tx, events))
    }

    /// Posts the receive buffers (when `rx`) and the event buffers (when `events`), sets
    /// DRIVER_OK and tells the device.
    fn go_live(&mut self, rx: bool, events: bool) {
        for slot in 0..if rx { RX_SLOTS } else { 0 } {
            self.post_rx(slot);
        }
        for slot in 0..if events { EVENT_SLOTS } else { 0 } {
            self.post_event(slot);
        }
        self.mmio.finish();
        self.rx.notify();
        self.events.notify();
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

    /// Changes whenever the device returned a buffer, the driver sent a packet or posted a
    /// buffer, or the application consumed received data: if it stays the same over a poll
    /// loop's pass, that pass found no work. Reads no device register.
    pub fn activity(&self) -> Activity {
        [
            self.rx.progress(),
            self.tx.progress(),
            self.events.progress(),
            self.consumed,
        ]
    }

    /// Processes everything the device returned: received packets (answering as the protocol
    /// requires), finished transmissions, events; sends queued control packets and expires
    /// connections whose close timed out. Costs no VM exit when nothing happened.
    pub fn poll(&mut self) {
        self.poll_rx();
        self.poll_events();
        self.reclaim_tx();
        self.flush_pending();
        self.expire_closing();
    }
}
