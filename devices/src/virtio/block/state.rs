//! The block device's own state as plain data (its queues are in the transport's state).

use super::{Block, BlockBackend, ID_BYTES, SECTOR_SIZE};

/// What a block device is, beyond its backend and queues. Untrusted: checked on restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockState {
    /// Whether writes are refused.
    pub read_only: bool,
    /// The GET_ID string, zero-padded.
    pub id: [u8; ID_BYTES],
    /// Disk size in sectors the driver was told.
    pub capacity: u64,
}

/// Why a saved block state was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockRestoreError {
    /// The backend is not the size the driver was told.
    #[error("disk has {backend} sectors, the saved device had {saved}")]
    CapacityMismatch {
        /// Sectors of the backend given to restore.
        backend: u64,
        /// Sectors in the saved state.
        saved: u64,
    },
}

impl Block {
    /// The device's state.
    pub fn save(&self) -> BlockState {
        BlockState {
            read_only: self.read_only,
            id: self.id,
            capacity: self.capacity,
        }
    }

    /// A device over `disk` from a saved state; the disk must have the saved capacity. The
    /// device starts inactive: restoring its transport reactivates it.
    pub fn restore(
        disk: Box<dyn BlockBackend>,
        state: &BlockState,
    ) -> Result<Self, BlockRestoreError> {
        let backend = disk.size() / SECTOR_SIZE;
        if backend != state.capacity {
            return Err(BlockRestoreError::CapacityMismatch {
                backend,
                saved: state.capacity,
            });
        }
        Ok(Self::with_id(disk, state.read_only, state.id))
    }
}
