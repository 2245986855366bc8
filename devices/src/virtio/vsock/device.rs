//! The virtio-vsock device: three queues (rx, tx, event) between the guest and the [`Muxer`].

use std::os::fd::RawFd;
use std::path::PathBuf;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryError};

use super::muxer::Muxer;
use super::packet::{Header, HEADER_LEN, MAX_PAYLOAD};
use crate::virtio::chain::{read_gathered, total_len};
use crate::virtio::{
    collect_chain, read_config_bytes, ActivateError, Activation, Active, Memory, Segment,
    VirtioDevice,
};

/// Virtio device ID of a socket device.
pub const VSOCK_DEVICE_ID: u32 = 19;
const QUEUE_SIZES: [u16; 3] = [256; 3];
const RX: usize = 0;
const TX: usize = 1;

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
    muxer: Muxer,
    active: Option<Active>,
    scratch: Vec<u8>,
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

    /// Takes packets the guest sent.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = active.queues[TX].pop_descriptor_chain(&active.memory) {
            let head = chain.head_index();
            let packet = match collect_chain(chain) {
                Ok(bufs) => read_packet(&active.memory, &bufs.readable, &mut self.scratch),
                Err(_) => Err(None),
            };
            used = true;
            // A full used ring only happens with a broken driver; nothing more to do for it.
            let _ = active.queues[TX].add_used(&active.memory, head, 0);
            match packet {
                Ok((header, len)) => {
                    let payload = &self.scratch[HEADER_LEN..HEADER_LEN + len];
                    self.muxer.recv_from_guest(&header, payload);
                }
                // The header is readable but its payload is not: the stream has lost data.
                Err(Some(header)) => self.muxer.reject(&header),
                Err(None) => {}
            }
        }
        if used {
            let _ = active.interrupt.signal_used_queue();
        }
    }

    /// Fills the guest's rx buffers with packets for it, as long as both last.
    fn fill_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while self.muxer.has_rx() {
            let Some(chain) = active.queues[RX].pop_descriptor_chain(&active.memory) else {
                break;
            };
            let head = chain.head_index();
            let writable = collect_chain(chain).map(|b| b.writable).unwrap_or_default();
            let room = total_len(&writable);
            if room < HEADER_LEN as u64 {
                // Unusable buffer: give it back empty.
                used = true;
                let _ = active.queues[RX].add_used(&active.memory, head, 0);
                continue;
            }
            let cap = (room as usize - HEADER_LEN).min(MAX_PAYLOAD);
            let Some(packet) = self
                .muxer
                .next_rx(&mut self.scratch[HEADER_LEN..HEADER_LEN + cap])
            else {
                active.queues[RX].go_to_previous_position();
                break;
            };
            self.scratch[..HEADER_LEN].copy_from_slice(&packet.header.to_bytes());
            let bytes = &self.scratch[..HEADER_LEN + packet.len];
            used = true;
            let written = match write_scattered(&active.memory, &writable, bytes) {
                Ok(()) => bytes.len() as u32,
                Err(_) => {
                    // The data left the host socket but cannot reach the guest.
                    self.muxer
                        .reset((packet.header.src_port, packet.header.dst_port));
                    0
                }
            };
            let _ = active.queues[RX].add_used(&active.memory, head, written);
        }
        if used {
            let _ = active.interrupt.signal_used_queue();
        }
    }
}

/// Reads a packet (header, then `header.len` payload bytes) into `buf`. A malformed packet
/// is `Err` with its header when that much could be read.
fn read_packet(
    mem: &Memory,
    readable: &[Segment],
    buf: &mut [u8],
) -> Result<(Header, usize), Option<Header>> {
    let available = total_len(readable);
    if available < HEADER_LEN as u64 {
        return Err(None);
    }
    let mut bytes = [0u8; HEADER_LEN];
    read_gathered(mem, readable, &mut bytes).map_err(|_| None)?;
    let header = Header::from_bytes(&bytes);
    let len = header.len as usize;
    if len > MAX_PAYLOAD || (HEADER_LEN + len) as u64 > available {
        return Err(Some(header));
    }
    read_gathered(mem, readable, &mut buf[..HEADER_LEN + len]).map_err(|_| Some(header))?;
    Ok((header, len))
}

/// Writes `data` across `segments` in order (which must hold at least that many bytes).
fn write_scattered(
    mem: &Memory,
    segments: &[Segment],
    data: &[u8],
) -> Result<(), GuestMemoryError> {
    let mut rest = data;
    for seg in segments {
        if rest.is_empty() {
            break;
        }
        let n = (seg.len as usize).min(rest.len());
        mem.write_slice(&rest[..n], seg.addr)?;
        rest = &rest[n..];
    }
    Ok(())
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
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset_all();
    }

    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.queues)
    }

    fn queue_notify(&mut self, index: u16) {
        if usize::from(index) == TX {
            self.process_tx();
        }
        self.fill_rx();
    }

    /// The muxer's inner epoll: readable when a host socket needs attention.
    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }

    fn process_backend(&mut self) {
        self.muxer.process_events();
        self.fill_rx();
    }
}
