//! What a copy-on-write overlay holds, as plain data, and overlays rebuilt from it.
//!
//! Saved state is untrusted: every restore checks it against the base it is put over.

use std::fs::File;
use std::io;
use std::sync::Arc;

use super::backend::{Sector, SectorMap};
use super::overlay_file::Bitmap;
use super::{file_size, BlockBackend, FileOverlay, Overlay, OVERLAY_BLOCK_SIZE, SECTOR_SIZE};

/// A disk's overlay as plain data (see [`BlockBackend::save_overlay`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverlayState {
    /// An in-memory overlay's sectors; also what a forked disk's chain of layers flattens to.
    Memory(MemoryOverlayState),
    /// A file overlay's block bitmap; the blocks' bytes stay in the overlay file.
    File(FileOverlayState),
}

/// The sectors an in-memory overlay ([`Overlay`]) holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryOverlayState {
    /// Size of the disk in bytes; the base it is restored over must have this size.
    pub disk_size: u64,
    /// Numbers of the sectors held, strictly ascending, each below
    /// `disk_size.div_ceil(512)`.
    pub sectors: Vec<u64>,
    /// Their bytes: 512 per entry of `sectors`, in the same order.
    pub data: Vec<u8>,
}

/// Which blocks a file overlay ([`FileOverlay`]) holds in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOverlayState {
    /// Size of the disk in bytes; the base it is restored over must have this size.
    pub disk_size: u64,
    /// One bit per [`OVERLAY_BLOCK_SIZE`]-byte block, set when the overlay file holds it: word
    /// `i` holds blocks `64 * i` to `64 * i + 63`, lowest bit first. Exactly
    /// `disk_size.div_ceil(4096).div_ceil(64)` words, no bit set past the last block.
    pub present: Vec<u64>,
}

/// Why a disk's overlay could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum OverlaySaveError {
    /// Reading a frozen file overlay's blocks, to flatten a forked disk's layers, failed.
    #[error("cannot read a frozen overlay file's blocks: {0}")]
    Read(#[source] io::Error),
    /// A file overlay over a forked disk's frozen layers: its bitmap alone does not describe
    /// the disk (the VMM never builds one).
    #[error("a file overlay over frozen layers cannot be saved")]
    FileOverlayOverFrozenLayer,
}

/// Why a saved overlay was refused.
#[derive(Debug, thiserror::Error)]
pub enum OverlayRestoreError {
    /// The base is not the size the overlay was saved for.
    #[error("the base disk has {base} bytes, the saved overlay {saved}")]
    DiskSizeMismatch {
        /// Bytes of the base given to restore.
        base: u64,
        /// Bytes in the saved state.
        saved: u64,
    },
    /// The data is not 512 bytes per sector listed.
    #[error("{sectors} sectors saved with {bytes} bytes of data, not 512 each")]
    DataLength {
        /// Sectors listed.
        sectors: usize,
        /// Bytes of data.
        bytes: usize,
    },
    /// A sector lies past the end of the disk.
    #[error("saved sector {sector} is past the disk's {sectors} sectors")]
    SectorOutOfRange {
        /// The sector number.
        sector: u64,
        /// Sectors on the disk.
        sectors: u64,
    },
    /// The sector list is not strictly ascending (so it may hold one twice).
    #[error("saved sector {sector} (entry {index}) does not follow the one before it")]
    SectorsNotAscending {
        /// Position in the list.
        index: usize,
        /// The sector number found there.
        sector: u64,
    },
    /// The bitmap has the wrong number of words for the disk.
    #[error("the block bitmap has {words} words, the disk needs {expected}")]
    BitmapLength {
        /// Words saved.
        words: usize,
        /// Words the disk's blocks need.
        expected: u64,
    },
    /// A bit past the disk's last block is set.
    #[error("block {block} is marked present past the disk's {blocks} blocks")]
    BlockOutOfRange {
        /// The first such block.
        block: u64,
        /// Blocks on the disk.
        blocks: u64,
    },
    /// The overlay file holds fewer bytes than the disk.
    #[error("the overlay file holds {have} bytes, the disk {need}")]
    OverlayFileTooSmall {
        /// Bytes in the file.
        have: u64,
        /// Bytes of the disk.
        need: u64,
    },
    /// The overlay file could not be sized.
    #[error("cannot size the overlay file: {0}")]
    OverlayFile(#[source] io::Error),
}

impl MemoryOverlayState {
    /// The sectors of `map` (of a disk of `disk_size` bytes) as plain data.
    pub(super) fn from_map(disk_size: u64, map: &SectorMap) -> Self {
        let mut data = Vec::with_capacity(map.len() * SECTOR_SIZE as usize);
        for sector in map.values() {
            data.extend_from_slice(&sector[..]);
        }
        Self {
            disk_size,
            sectors: map.keys().copied().collect(),
            data,
        }
    }

    /// The sectors as a map, each checked against a disk of `disk_size` bytes.
    fn to_map(&self) -> Result<SectorMap, OverlayRestoreError> {
        let sector_len = SECTOR_SIZE as usize;
        if self.sectors.len().checked_mul(sector_len) != Some(self.data.len()) {
            return Err(OverlayRestoreError::DataLength {
                sectors: self.sectors.len(),
                bytes: self.data.len(),
            });
        }
        let on_disk = self.disk_size.div_ceil(SECTOR_SIZE);
        let mut previous = None;
        for (index, &sector) in self.sectors.iter().enumerate() {
            if sector >= on_disk {
                return Err(OverlayRestoreError::SectorOutOfRange {
                    sector,
                    sectors: on_disk,
                });
            }
            if previous.is_some_and(|p| sector <= p) {
                return Err(OverlayRestoreError::SectorsNotAscending { index, sector });
            }
            previous = Some(sector);
        }
        // Ascending keys: the map is built in bulk.
        Ok(self
            .sectors
            .iter()
            .zip(self.data.chunks_exact(sector_len))
            .map(|(&sector, bytes)| {
                let mut data: Sector = [0; SECTOR_SIZE as usize];
                data.copy_from_slice(bytes);
                (sector, Arc::new(data))
            })
            .collect())
    }
}

fn check_size(base: u64, saved: u64) -> Result<(), OverlayRestoreError> {
    if base != saved {
        return Err(OverlayRestoreError::DiskSizeMismatch { base, saved });
    }
    Ok(())
}

impl<B: BlockBackend> Overlay<B> {
    /// The sectors this overlay holds (not its base's), as plain data.
    pub fn save(&self) -> MemoryOverlayState {
        MemoryOverlayState::from_map(self.size(), &self.sectors)
    }

    /// An overlay over `base` holding the saved sectors.
    ///
    /// # Errors
    /// [`OverlayRestoreError`] if `base` is not `state.disk_size` bytes, or the sectors are
    /// not strictly ascending, past the disk's end, or not 512 bytes each.
    pub fn restore(base: B, state: &MemoryOverlayState) -> Result<Self, OverlayRestoreError> {
        check_size(base.size(), state.disk_size)?;
        let sectors = state.to_map()?;
        Ok(Self { base, sectors })
    }
}

impl<B: BlockBackend> FileOverlay<B> {
    /// Which blocks the overlay file holds, as plain data.
    pub fn save(&self) -> FileOverlayState {
        FileOverlayState {
            disk_size: self.size,
            present: self.present.words().to_vec(),
        }
    }

    /// An overlay over `base` in `file` (opened for reading and writing), which must be the
    /// overlay file the state was saved with, unchanged since: it is neither emptied nor
    /// resized, and the blocks the state marks present are read from it.
    ///
    /// # Errors
    /// [`OverlayRestoreError`] if `base` is not `state.disk_size` bytes, the bitmap does not
    /// fit the disk, or `file` cannot be sized or holds fewer bytes than the disk.
    pub fn restore(
        base: B,
        file: File,
        state: &FileOverlayState,
    ) -> Result<Self, OverlayRestoreError> {
        let size = base.size();
        check_size(size, state.disk_size)?;
        let present = Bitmap::from_words(state.present.clone(), size.div_ceil(OVERLAY_BLOCK_SIZE))?;
        let have = file_size(&file).map_err(OverlayRestoreError::OverlayFile)?;
        if have < size {
            return Err(OverlayRestoreError::OverlayFileTooSmall { have, need: size });
        }
        Ok(Self {
            base,
            file: Arc::new(file),
            size,
            present,
        })
    }
}
