//! The virtio-vsock device: three queues (rx, tx, event) between the guest and the [`Muxer`].

use std::os::fd::RawFd;
use std::path::PathBuf;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often a device holding its receive queue for an unhandled `TRANSPORT_RESET` looks
/// whether the driver has handled it, when the driver does not notify.
const RESET_RECHECK: Duration = Duration::from_millis(2);

use virtio_queue::{Queue, QueueT};

use super::muxer::Muxer;
use super::packet::{read_packet, PacketError, HEADER_LEN, MAX_PAYLOAD};
use crate::virtio::chain::{total_len, write_scattered};
use crate::virtio::queue::{has_available, Pass};
use crate::virtio::{
    collect_chain, read_config_bytes, ActivateError, Activation, Active, VirtioDevice,
};

/// Virtio device ID of a socket device.
pub const VSOCK_DEVICE_ID: u32 = 19;
const QUEUE_SIZES: [u16; 3] = [256; 3];
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, the only event: `struct virtio_vsock_event { le32 id }`.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// How a vsock device is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more; 0-2 are reserved).
    pub guest_cid: u64,
    /// Where host programs connect to reach the guest; guest connections to host port `P` go
    /// to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

/// Errors from creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved (0, 1, 2) or above 32 bits (`u32::MAX` is reserved too).
    #[error("vsock guest_cid {0} is reserved or out of range")]
    InvalidCid(u64),
    /// The host socket could not be created.
    #[error("cannot listen on the vsock socket {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A virtio-vsock device.
pub struct Vsock {
    config: VsockConfig,
    pub(super) muxer: Muxer,
    active: Option<Active>,
    scratch: Vec<u8>,
    /// The last pass over the tx or rx queue stopped at its bound with chains waiting.
    more_tx: bool,
    more_rx: bool,
    /// The guest's packets wait in the tx queue because the muxer's control queue is full;
    /// they are taken again once rx buffers drain it.
    tx_throttled: bool,
    /// A restored device owes the driver a `TRANSPORT_RESET` event (see [`Vsock::restore`]).
    pub(super) transport_reset_pending: bool,
    /// A `TRANSPORT_RESET` went to the driver, which has not yet shown it handled it: the
    /// event queue's avail index when the event was written. The driver shows it by posting
    /// an event buffer again (the index moves; Linux and Zygote's guest both do so right after
    /// handling an event). Until then nothing is delivered on the receive queue: a host
    /// connection's REQUEST that reached the driver before the event would be wiped by it.
    reset_unacked: Option<std::num::Wrapping<u16>>,
}

impl Vsock {
    /// A device for guest `config.guest_cid`, listening at `config.uds_path`.
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        if config.guest_cid < 3 || config.guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(config.guest_cid));
        }
        let muxer = Muxer::new(config.guest_cid, &config.uds_path).map_err(|source| {
            VsockError::Listen {
                path: config.uds_path.clone(),
                source,
            }
        })?;
        Ok(Self {
            config: config.clone(),
            muxer,
            active: None,
            scratch: vec![0; HEADER_LEN + MAX_PAYLOAD],
            more_tx: false,
            more_rx: false,
            tx_throttled: false,
            transport_reset_pending: false,
            reset_unacked: None,
        })
    }

    /// The device's configuration.
    pub fn config(&self) -> &VsockConfig {
        &self.config
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// One round of work: the guest's packets (when `tx`), then packets for the guest, then
    /// the guest's packets that waited for those rx buffers to drain the control queue.
    fn run(&mut self, tx: bool) {
        if tx {
            self.process_tx();
        }
        self.fill_rx();
        if self.tx_throttled && self.muxer.can_take_packet() {
            self.process_tx();
            self.fill_rx();
        }
    }

    /// Takes packets the guest sent, at most a queue's worth, and only while the muxer can
    /// take them (see [`Muxer::can_take_packet`]); the rest wait in the tx queue.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (mem, interrupt) = (&active.memory, &active.interrupt);
        let queue = &mut active.queues[TX];
        let mut pass = Pass::new(queue);
        while self.muxer.can_take_packet() {
            let Some(chain) = pass.pop(queue, mem, interrupt) else {
                break;
            };
            let head = chain.head_index();
            let packet = collect_chain(chain)
                .map_err(|_| PacketError::Unreadable)
                .and_then(|bufs| read_packet(mem, &bufs.readable, &mut self.scratch));
            let used = pass.add_used(queue, mem, interrupt, head, 0);
            match packet {
                Ok((header, len)) => {
                    let payload = &self.scratch[HEADER_LEN..HEADER_LEN + len];
                    self.muxer.recv_from_guest(&header, payload);
                }
                // The header is readable but its payload is not: the stream has lost data.
                Err(PacketError::Truncated(header)) => self.muxer.reject(&header),
                Err(PacketError::Unreadable) => {}
            }
            if !used {
                break;
            }
        }
        self.tx_throttled = !self.muxer.can_take_packet() && has_available(queue, mem);
        self.more_tx = pass.finish(queue, mem, interrupt);
    }

    /// Fills the guest's rx buffers with packets for it, as long as both last and at most a
    /// queue's worth of buffers.
    fn fill_rx(&mut self) {
        if !self.reset_handled() {
            // A driver that suppresses notifications (VIRTIO_RING_F_EVENT_IDX, Linux) may post
            // the event buffer again without telling the device: look again shortly.
            if self.muxer.has_rx() {
                self.muxer.wake_at(Instant::now() + RESET_RECHECK);
            }
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (mem, interrupt) = (&active.memory, &active.interrupt);
        let queue = &mut active.queues[RX];
        let mut pass = Pass::new(queue);
        while self.muxer.has_rx() {
            let Some(chain) = pass.pop(queue, mem, interrupt) else {
                break;
            };
            let head = chain.head_index();
            let writable = collect_chain(chain).map(|b| b.writable).unwrap_or_default();
            let room = total_len(&writable);
            if room < HEADER_LEN as u64 {
                // Unusable buffer: give it back empty.
                if !pass.add_used(queue, mem, interrupt, head, 0) {
                    break;
                }
                continue;
            }
            let cap = (room as usize - HEADER_LEN).min(MAX_PAYLOAD);
            let Some(packet) = self
                .muxer
                .next_rx(&mut self.scratch[HEADER_LEN..HEADER_LEN + cap])
            else {
                pass.put_back(queue);
                break;
            };
            self.scratch[..HEADER_LEN].copy_from_slice(&packet.header.to_bytes());
            let bytes = &self.scratch[..HEADER_LEN + packet.len];
            let written = match write_scattered(mem, &writable, bytes) {
                // At most HEADER_LEN + MAX_PAYLOAD.
                Ok(()) => bytes.len() as u32,
                Err(_) => {
                    // The data left the host socket but cannot reach the guest.
                    self.muxer
                        .reset((packet.header.src_port, packet.header.dst_port));
                    0
                }
            };
            if !pass.add_used(queue, mem, interrupt, head, written) {
                break;
            }
        }
        self.more_rx = pass.finish(queue, mem, interrupt);
    }

    /// Whether the driver has handled the last `TRANSPORT_RESET` (see `reset_unacked`).
    fn reset_handled(&mut self) -> bool {
        let Some(at) = self.reset_unacked else {
            return true;
        };
        let Some(active) = self.active.as_ref() else {
            return true;
        };
        let queue = &active.queues[EVENT];
        match queue.avail_idx(&active.memory, Ordering::Acquire) {
            Ok(now) if now != at => {
                self.reset_unacked = None;
                true
            }
            // A ring the device cannot read any more holds nothing back.
            Err(_) => {
                self.reset_unacked = None;
                true
            }
            Ok(_) => false,
        }
    }

    /// Writes the `TRANSPORT_RESET` event a restored device owes into the first usable event
    /// buffer, and interrupts. Without a buffer yet it waits for the driver to post one.
    fn send_transport_reset(&mut self) {
        if !self.transport_reset_pending {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (mem, interrupt) = (&active.memory, &active.interrupt);
        let queue = &mut active.queues[EVENT];
        let mut pass = Pass::new(queue);
        while let Some(chain) = pass.pop(queue, mem, interrupt) {
            let head = chain.head_index();
            let event = EVENT_TRANSPORT_RESET.to_le_bytes();
            let written = match collect_chain(chain) {
                Ok(bufs) if bufs.readable.is_empty() => {
                    write_scattered(mem, &bufs.writable, &event).map_or(0, |()| event.len() as u32)
                }
                // A malformed event buffer goes back empty; the event takes the next one.
                _ => 0,
            };
            if written > 0 {
                self.transport_reset_pending = false;
                self.reset_unacked = queue.avail_idx(mem, Ordering::Acquire).ok();
            }
            if !pass.add_used(queue, mem, interrupt, head, written) || written > 0 {
                break;
            }
        }
        pass.finish(queue, mem, interrupt);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VSOCK_DEVICE_ID
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.muxer.guest_cid().to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation.into_active(QUEUE_SIZES.len())?);
        self.send_transport_reset();
        Ok(())
    }

    fn set_memory(&mut self, memory: crate::virtio::Memory) {
        if let Some(active) = self.active.as_mut() {
            active.memory = memory;
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.reset_unacked = None;
        self.muxer.reset_all();
        self.more_tx = false;
        self.more_rx = false;
        self.tx_throttled = false;
    }

    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.queues)
    }

    fn queue_notify(&mut self, index: u16) {
        if usize::from(index) == EVENT {
            self.send_transport_reset();
        }
        self.run(usize::from(index) == TX);
    }

    /// The muxer's inner epoll: readable when a host socket needs attention.
    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }

    fn process_backend(&mut self) {
        self.muxer.process_events();
        self.run(false);
    }

    fn has_pending_work(&self) -> bool {
        let tx_can_resume = self.tx_throttled && self.muxer.can_take_packet();
        self.active.is_some() && (self.more_tx || self.more_rx || tx_can_resume)
    }

    fn process_pending_work(&mut self) {
        self.run(self.more_tx);
    }
}
