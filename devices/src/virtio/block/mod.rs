//! virtio-blk (spec §5.2) over a [`BlockBackend`]: a raw image file, or a copy-on-write overlay
//! (in memory or in a file) that never writes its base. A disk forks ([`Block::fork`],
//! [`fork_disk`]) into copy-on-write overlays over its frozen contents ([`FrozenLayer`]).
//!
//! Requests run synchronously when the driver notifies the queue. Every request is checked
//! (directions, lengths, sector range against the disk, a cap on its size) and a bad one
//! completes with `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP`; only a chain with nowhere to
//! write a status marks the device as needing reset.

mod backend;
mod device;
mod layer;
mod overlay_file;
mod overlay_state;
mod request;
mod size;
mod state;

pub use backend::{BlockBackend, Overlay, RawFile};
pub use device::{Block, BlockError};
pub use layer::{fork_disk, BlockForkError, FrozenDisk, FrozenLayer, MERGE_RATIO};
pub use overlay_file::{FileOverlay, OVERLAY_BLOCK_SIZE};
pub use overlay_state::{
    FileOverlayState, MemoryOverlayState, OverlayRestoreError, OverlaySaveError, OverlayState,
};
pub use request::RequestError;
pub use size::{file_size, fit_to, storage_kind, StorageKind};
pub use state::{BlockRestoreError, BlockState};

/// Size of a virtio-blk sector, the unit of `capacity` and of request offsets.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the device's only queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data buffers a request may carry (`seg_max`): the queue minus header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data buffer the driver should use (`size_max`).
pub const SIZE_MAX: u32 = 64 * 1024;
/// Largest data transfer one request may ask for; larger ones fail with `IOERR`.
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Length of the GET_ID string.
pub const ID_BYTES: usize = 20;

#[cfg(test)]
mod fork_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
