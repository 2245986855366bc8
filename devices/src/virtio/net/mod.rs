//! virtio-net (spec §5.1) over a [`NetBackend`]: a TAP device, or an in-process
//! `SOCK_SEQPACKET` socket pair whose other end a host program or a test holds.
//!
//! Two queues, receive (0) and transmit (1); the 12-byte `virtio_net_hdr_v1` in front of every
//! frame; no offloads (no checksum, no segmentation, no mergeable buffers), so every frame is a
//! plain Ethernet frame on the backend side.
//!
//! - Transmit runs when the driver notifies queue 1: each chain's header is skipped, its frame
//!   sent to the backend, and the chain completed with length 0. A malformed chain (header
//!   shorter than 12 bytes, a device-writable buffer, a frame over [`MAX_FRAME_LEN`], a buffer
//!   outside guest memory) is completed unsent and counted in `tx_errors`.
//! - Receive runs when the backend's fd becomes readable ([`Net::process_backend`]) and when
//!   the driver posts buffers (notify of queue 0): frames go into the posted chains, one frame
//!   per chain, with `num_buffers = 1`. With no buffer posted, one frame waits in the device and
//!   the rest wait in the backend (back-pressure, nothing lost); a frame larger than the chain
//!   is dropped and counted in `rx_errors`, and the chain is kept for the next frame.
//!
//! The counters are a shared [`NetStats`] the host reads at any time.

mod backend;
mod device;
mod packet;
mod queue;
mod state;
mod stats;
mod tap;

#[cfg(test)]
mod tests;

pub use backend::{NetBackend, Recv};
pub use device::{Net, NetConfig, NetError};
pub use packet::{PacketBackend, PacketEndpoint};
pub use queue::{RxError, TxError};
pub use state::{NetRestoreError, NetState};
pub use stats::{NetStats, NetStatsSnapshot};
pub use tap::{Tap, TapError};

/// Length of `struct virtio_net_hdr_v1`, in front of every frame in both directions.
pub const NET_HDR_LEN: usize = 12;
/// Largest frame (without the virtio-net header) the device sends or receives.
pub const MAX_FRAME_LEN: usize = 65562;
/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u16 = 1;
/// The MAC a device gets unless configured: locally administered, unicast (`02:5a:79:00:00:01`).
pub const DEFAULT_MAC: [u8; 6] = [0x02, 0x5a, 0x79, 0x00, 0x00, 0x01];
