//! virtio-net (virtio 1.2 §5.1), polled: receive buffers stay posted, one frame is sent at a
//! time. No offloads are negotiated, so every header is the 12-byte `virtio_net_hdr_v1` with
//! zeroes on transmit, and every receive buffer holds a whole frame.

mod hostile;

use zygote_guest_proto::agent::MAX_NET_FRAME;

use super::queue::{Buf, Virtqueue, MAX_QUEUE_SIZE};
use super::transport::{Mmio, VirtioError};
use super::wait_used;
use crate::arena::Arena;
use crate::clock::Clock;

const F_MAC: u64 = 1 << 5;
/// `virtio_net_hdr_v1` (VERSION_1 always includes `num_buffers`).
const HEADER: usize = 12;
/// One receive or transmit buffer: header and a frame, rounded up.
const BUF_SIZE: usize = 2048;
const RX_BUFFERS: usize = 32;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const SEND_TIMEOUT_MS: u64 = 5_000;

const _: () = assert!(HEADER + MAX_NET_FRAME <= BUF_SIZE);

/// A bound virtio-net device.
pub struct Net {
    mmio: Mmio,
    rx: Virtqueue,
    tx: Virtqueue,
    mac: [u8; 6],
    /// RX_BUFFERS receive buffers of BUF_SIZE, then one transmit buffer.
    buffers: *mut u8,
    /// Which receive buffer each descriptor head carries.
    rx_slot: [u8; MAX_QUEUE_SIZE as usize],
}

impl Net {
    /// Initializes the device (MAC when offered), posts every receive buffer.
    pub fn new(mmio: Mmio, arena: &mut Arena) -> Result<Self, VirtioError> {
        let buffers = arena
            .alloc((RX_BUFFERS + 1) * BUF_SIZE, 4096)
            .ok_or(VirtioError::OutOfMemory)?;
        Self::setup(mmio, arena, buffers, true)
    }

    /// Resets the device and sets it up with fresh queues over `buffers` (RX_BUFFERS + 1 of
    /// BUF_SIZE), posting the receive buffers when `post`.
    fn setup(
        mmio: Mmio,
        arena: &mut Arena,
        buffers: *mut u8,
        post: bool,
    ) -> Result<Self, VirtioError> {
        let features = mmio.begin(0, F_MAC)?;
        let rx = mmio.queue(arena, RX_QUEUE, RX_BUFFERS as u16)?;
        let tx = mmio.queue(arena, TX_QUEUE, 4)?;
        let mac = match features & F_MAC {
            0 => [0x02, 0, 0, 0, 0, 1],
            _ => mmio.config(|m| core::array::from_fn(|i| m.config_u8(i as u64))),
        };
        let mut net = Net {
            mmio,
            rx,
            tx,
            mac,
            buffers,
            rx_slot: [0; MAX_QUEUE_SIZE as usize],
        };
        let posted = if post {
            RX_BUFFERS.min(usize::from(net.rx.free()))
        } else {
            0
        };
        for slot in 0..posted {
            net.post(slot);
        }
        mmio.finish();
        net.rx.notify();
        Ok(net)
    }

    /// The device's MAC address (a local one when it has none).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn buffer(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot <= RX_BUFFERS: inside the allocation.
        unsafe { self.buffers.add(slot * BUF_SIZE) }
    }

    fn post(&mut self, slot: usize) {
        let buf = Buf::write(self.buffer(slot), BUF_SIZE);
        if let Some(head) = self.rx.add(&[buf]) {
            self.rx_slot[usize::from(head)] = slot as u8;
        }
    }

    /// Sends one Ethernet frame (1 to 1514 bytes) and waits until the device took it.
    pub fn send(&mut self, clock: &Clock, frame: &[u8]) -> Result<(), VirtioError> {
        let len = frame.len().min(MAX_NET_FRAME);
        let tx = self.buffer(RX_BUFFERS);
        // SAFETY: the transmit buffer is BUF_SIZE bytes of arena memory only this driver uses,
        // idle (the previous send completed); header and frame fit (asserted above).
        unsafe {
            tx.write_bytes(0, HEADER);
            core::ptr::copy_nonoverlapping(frame.as_ptr(), tx.add(HEADER), len);
        }
        let head = self
            .tx
            .add(&[Buf::read(tx, HEADER + len)])
            .ok_or(VirtioError::OutOfMemory)?;
        self.tx.notify();
        wait_used(&mut self.tx, &self.mmio, clock, SEND_TIMEOUT_MS, head).map(|_| ())
    }

    /// A frame the device has already delivered, if any (no VM exit when there is none);
    /// the buffer goes back to the device at once.
    pub fn try_recv(&mut self, out: &mut [u8]) -> Option<usize> {
        loop {
            let used = self.rx.pop_used()?;
            let slot = usize::from(self.rx_slot[usize::from(used.head)]);
            let len = (used.len as usize).min(BUF_SIZE);
            let frame_len = len.saturating_sub(HEADER).min(out.len());
            // SAFETY: the device returned the buffer; `HEADER + frame_len <= BUF_SIZE`.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    self.buffer(slot).add(HEADER),
                    out.as_mut_ptr(),
                    frame_len,
                )
            };
            self.post(slot);
            self.rx.notify();
            if frame_len > 0 {
                return Some(frame_len);
            }
        }
    }
}
