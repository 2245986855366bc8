//! The virtio-net device: config space, features, the two queues and the event-loop hooks.

use std::os::fd::RawFd;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::Queue;

use super::backend::{NetBackend, Recv};
use super::queue::{read_tx_frame, write_rx_frame, RxError};
use super::{NetStats, DEFAULT_MAC, MAX_FRAME_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::virtio::queue::Pass;
use crate::virtio::{
    collect_chain, read_config_bytes, ActivateError, Activation, Active, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// How a device presents itself to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC address in config space; must be unicast (low bit of the first byte clear).
    pub mac: [u8; 6],
}

impl Default for NetConfig {
    /// [`DEFAULT_MAC`].
    fn default() -> Self {
        Self { mac: DEFAULT_MAC }
    }
}

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    /// The MAC is a multicast or broadcast address.
    #[error("MAC {0:02x?} is multicast; a device needs a unicast address")]
    MulticastMac([u8; 6]),
}

/// A virtio-net device over a [`NetBackend`].
pub struct Net {
    pub(super) config: NetConfig,
    backend: Box<dyn NetBackend>,
    pub(super) stats: NetStats,
    /// Frames from the backend land here; allocated on first use, `MAX_FRAME_LEN + 1` bytes.
    rx_buf: Vec<u8>,
    /// Length of a frame in `rx_buf` that waits for a receive buffer.
    pending: Option<usize>,
    /// The backend reported its peer gone: its fd is no longer worth watching.
    backend_closed: bool,
    active: Option<Active>,
    /// Scratch buffer for transmitted frames, reused across chains.
    tx_buf: Vec<u8>,
    /// The last pass over a queue stopped at its bound with chains still waiting.
    more_rx: bool,
    more_tx: bool,
}

/// `struct virtio_net_config` up to and including `status`.
const CONFIG_LEN: usize = 8;

impl Net {
    /// A device with `config`, exchanging frames through `backend`.
    pub fn new(config: NetConfig, backend: Box<dyn NetBackend>) -> Result<Self, NetError> {
        if config.mac[0] & 1 != 0 {
            return Err(NetError::MulticastMac(config.mac));
        }
        Ok(Self {
            config,
            backend,
            stats: NetStats::default(),
            rx_buf: Vec::new(),
            pending: None,
            backend_closed: false,
            active: None,
            tx_buf: Vec::new(),
            more_rx: false,
            more_tx: false,
        })
    }

    /// The device's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.config.mac
    }

    /// The device's counters; the returned handle stays live and shared.
    pub fn stats(&self) -> NetStats {
        self.stats.clone()
    }

    pub(super) fn set_stats(&mut self, stats: NetStats) {
        self.stats = stats;
    }

    /// The fd the event loop should watch for readability, or `None` once the backend's peer
    /// is gone (the loop should then stop watching it).
    ///
    /// The fd stays readable while frames wait for receive buffers the guest has not posted,
    /// so watch it edge-triggered (`EPOLLET`): the device drains the backend again by itself
    /// when the driver posts buffers (notify of the receive queue).
    pub fn backend_fd(&self) -> Option<RawFd> {
        (!self.backend_closed).then(|| self.backend.raw_fd())
    }

    /// Moves frames from the backend into the guest's receive buffers, as far as buffers
    /// allow; at most one more frame waits in the device, the rest in the backend. Does
    /// nothing before the driver activates the device.
    pub fn process_backend(&mut self) {
        self.process_rx();
    }

    /// The frame waiting for a receive buffer, if any.
    pub(super) fn pending_frame(&self) -> Option<&[u8]> {
        self.pending.and_then(|len| self.rx_buf.get(..len))
    }

    /// Puts a (validated) frame back as waiting, as a restore does.
    pub(super) fn set_pending_frame(&mut self, frame: &[u8]) {
        self.ensure_rx_buf();
        self.rx_buf[..frame.len()].copy_from_slice(frame);
        self.pending = Some(frame.len());
    }

    fn ensure_rx_buf(&mut self) {
        // One byte more than the largest frame, to see frames a backend truncated silently.
        if self.rx_buf.len() != MAX_FRAME_LEN + 1 {
            self.rx_buf = vec![0; MAX_FRAME_LEN + 1];
        }
    }

    /// Takes the next frame from the backend into `rx_buf`; false when there is none.
    fn fill_pending(&mut self) -> bool {
        if self.pending.is_some() {
            return true;
        }
        if self.backend_closed {
            return false;
        }
        self.ensure_rx_buf();
        loop {
            match self.backend.recv(&mut self.rx_buf) {
                Ok(Recv::Frame(len)) if len == 0 || len > MAX_FRAME_LEN => {
                    self.stats.rx_dropped();
                }
                Ok(Recv::Frame(len)) => {
                    self.pending = Some(len);
                    return true;
                }
                Ok(Recv::Empty) => return false,
                Ok(Recv::Closed) => {
                    self.backend_closed = true;
                    return false;
                }
                // A failing backend read loses nothing we hold; try again on the next event.
                Err(_) => return false,
            }
        }
    }

    /// Delivers frames while there are frames and receive buffers, taking at most a queue's
    /// worth of buffers (see [`VirtioDevice::has_pending_work`]).
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let mut pass = Pass::new(&active.queues[usize::from(RX_QUEUE)]);
        while self.fill_pending() {
            let (Some(active), Some(len)) = (self.active.as_mut(), self.pending) else {
                break;
            };
            let frame = &self.rx_buf[..len];
            let (mem, interrupt) = (&active.memory, &active.interrupt);
            let queue = &mut active.queues[usize::from(RX_QUEUE)];
            let Some(chain) = pass.pop(queue, mem, interrupt) else {
                break;
            };
            let head = chain.head_index();
            let result = collect_chain(chain)
                .map_err(RxError::from)
                .and_then(|buffers| write_rx_frame(mem, &buffers, frame));
            let used_len = match result {
                Ok(len) => {
                    self.stats.rx_frame(frame.len());
                    self.pending = None;
                    len
                }
                Err(RxError::TooSmall { .. }) => {
                    // The frame is lost; the chain stays posted for the next one.
                    self.stats.rx_error();
                    self.pending = None;
                    pass.put_back(queue);
                    continue;
                }
                Err(_) => {
                    // A malformed chain is returned empty; the frame waits for the next one.
                    self.stats.rx_error();
                    0
                }
            };
            if !pass.add_used(queue, mem, interrupt, head, used_len) {
                break;
            }
        }
        self.more_rx = self.finish(pass, RX_QUEUE);
    }

    /// Sends the frames the driver made available on the transmit queue, at most a queue's
    /// worth (see [`VirtioDevice::has_pending_work`]).
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (mem, interrupt) = (&active.memory, &active.interrupt);
        let queue = &mut active.queues[usize::from(TX_QUEUE)];
        let mut pass = Pass::new(queue);
        while let Some(chain) = pass.pop(queue, mem, interrupt) {
            let head = chain.head_index();
            let frame = collect_chain(chain)
                .map_err(Into::into)
                .and_then(|buffers| read_tx_frame(mem, &buffers, &mut self.tx_buf));
            match frame {
                Ok(frame) => match self.backend.send(frame) {
                    Ok(()) => self.stats.tx_frame(frame.len()),
                    Err(_) => self.stats.tx_dropped(),
                },
                Err(_) => self.stats.tx_error(),
            }
            if !pass.add_used(queue, mem, interrupt, head, 0) {
                break;
            }
        }
        self.more_tx = self.finish(pass, TX_QUEUE);
    }

    /// Ends a pass over `queue`; returns whether it left chains waiting.
    fn finish(&mut self, pass: Pass, queue: u16) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let queue = &mut active.queues[usize::from(queue)];
        pass.finish(queue, &active.memory, &active.interrupt)
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&self.config.mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC and status are read-only for a modern driver (spec §5.1.4).
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation.into_active(2)?);
        // Frames may have waited for the driver; deliver what the posted buffers allow.
        self.process_rx();
        Ok(())
    }

    fn set_memory(&mut self, memory: crate::virtio::Memory) {
        if let Some(active) = self.active.as_mut() {
            active.memory = memory;
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.more_rx = false;
        self.more_tx = false;
        if self.pending.take().is_some() {
            self.stats.rx_dropped();
        }
    }

    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| a.queues.as_slice())
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => {}
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Net::backend_fd(self)
    }

    fn process_backend(&mut self) {
        Net::process_backend(self);
    }

    fn has_pending_work(&self) -> bool {
        self.active.is_some() && (self.more_rx || self.more_tx)
    }

    fn process_pending_work(&mut self) {
        if self.more_tx {
            self.process_tx();
        }
        if self.more_rx {
            self.process_rx();
        }
    }
}
