//! Forking a disk: its contents frozen into an immutable layer that the parent and each child
//! read under an overlay of their own.
//!
//! A frozen disk is a chain of layers, top to bottom: zero or more layers of sectors (what an
//! in-memory overlay held when it was frozen), at most one layer of 4 KiB blocks in a file (a
//! file overlay, frozen), and the image at the bottom. Layers are shared (`Arc`) by every disk
//! forked from them, so a tree of forks is a tree of layers, and never change once built.

use std::fs::File;
use std::io;
use std::sync::Arc;

use super::backend::{read_file_at, read_through, SectorMap};
use super::overlay_file::{self, Bitmap};
use super::overlay_state::{MemoryOverlayState, OverlaySaveError, OverlayState};
use super::{BlockBackend, Overlay};

/// Most layers a chain holds (the image included) before a fork flattens it: the layers of
/// sectors above its lowest layer of another kind (the image, or a frozen file overlay) are
/// merged into one. Reads of sectors no layer holds look in each layer once, so this bounds
/// their cost; flattening copies pointers to the sectors held (not their bytes), so its cost is
/// O(sectors held in the chain), and it happens once every `MAX_CHAIN_DEPTH` forks of a disk
/// that writes between forks (an idle disk adds no layer).
pub const MAX_CHAIN_DEPTH: usize = 16;

/// Why a disk could not be forked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockForkError {
    /// The backend cannot freeze its contents (only `RawFile`, `Overlay`, `FileOverlay` and
    /// `FrozenDisk`, over backends that can, do). The disk was left as it was.
    #[error("this block backend cannot be frozen for a fork")]
    Unsupported,
}

/// An immutable layer of a forked disk and, through it, every layer below: what a disk held
/// when it was frozen. Shared by every disk forked from it; read concurrently (`&self`, `pread`
/// on the files) by all of them.
pub struct FrozenLayer {
    size: u64,
    depth: usize,
    kind: LayerKind,
}

enum LayerKind {
    /// The image: read-only from the first fork on; bytes past its end read as zeros.
    Image(Arc<File>),
    /// Sectors a frozen in-memory overlay held, over `below`.
    Sectors {
        sectors: SectorMap,
        below: Arc<FrozenLayer>,
    },
    /// 4 KiB blocks a frozen file overlay held (`present`) in `file`, over `below`.
    Blocks {
        file: Arc<File>,
        present: Bitmap,
        below: Arc<FrozenLayer>,
    },
}

impl FrozenLayer {
    /// The bottom layer: an image of `size` bytes.
    pub(super) fn image(file: Arc<File>, size: u64) -> Arc<Self> {
        Arc::new(Self {
            size,
            depth: 1,
            kind: LayerKind::Image(file),
        })
    }

    /// `sectors` over `below`; `below` itself when `sectors` is empty. Flattens the chain when
    /// it would grow past [`MAX_CHAIN_DEPTH`].
    pub(super) fn sectors(mut sectors: SectorMap, below: Arc<Self>) -> Arc<Self> {
        if sectors.is_empty() {
            return below;
        }
        let mut below = below;
        if below.depth >= MAX_CHAIN_DEPTH {
            // Upper layers win: a sector is taken from a lower layer only if no upper one has
            // it.
            while let LayerKind::Sectors {
                sectors: lower,
                below: next,
            } = &below.kind
            {
                for (&sector, data) in lower {
                    sectors.entry(sector).or_insert_with(|| data.clone());
                }
                below = next.clone();
            }
        }
        Arc::new(Self {
            size: below.size,
            depth: below.depth + 1,
            kind: LayerKind::Sectors { sectors, below },
        })
    }

    /// The blocks of a frozen file overlay, `present` in `file`, over `below`; `below` itself
    /// when no block is present.
    pub(super) fn blocks(file: Arc<File>, present: Bitmap, below: Arc<Self>) -> Arc<Self> {
        if present.count() == 0 {
            return below;
        }
        Arc::new(Self {
            size: below.size,
            depth: below.depth + 1,
            kind: LayerKind::Blocks {
                file,
                present,
                below,
            },
        })
    }

    /// Size of the disk in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Layers in the chain from this one down, the image included (an image alone is 1).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Fills `buf` with the disk at `offset`: each byte from the highest layer that holds it.
    /// A layer asks the one below only for the runs it lacks.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.kind {
            LayerKind::Image(file) => read_file_at(file, buf, offset),
            LayerKind::Sectors { sectors, below } => {
                read_through(sectors, buf, offset, |run, at| below.read_at(run, at))
            }
            LayerKind::Blocks {
                file,
                present,
                below,
            } => overlay_file::read_blocks(file, present, self.size, buf, offset, |run, at| {
                below.read_at(run, at)
            }),
        }
    }

    /// Adds to `map` every sector the chain holds above its image that `map` lacks (what is
    /// already in `map` is newer). A sector a file layer holds only in part (the last one of
    /// a disk whose size is not a multiple of 512) is padded with zeros.
    pub(super) fn collect_sectors(&self, map: &mut SectorMap) -> Result<(), OverlaySaveError> {
        let mut layer = self;
        loop {
            layer = match &layer.kind {
                LayerKind::Image(_) => return Ok(()),
                LayerKind::Sectors { sectors, below } => {
                    for (&sector, data) in sectors {
                        map.entry(sector).or_insert_with(|| data.clone());
                    }
                    below
                }
                LayerKind::Blocks {
                    file,
                    present,
                    below,
                } => {
                    overlay_file::collect_blocks(file, present, layer.size, map)
                        .map_err(OverlaySaveError::Read)?;
                    below
                }
            };
        }
    }
}

/// A read-only disk over a frozen layer: what a forked read-only disk is, and the base of the
/// overlay a forked writable disk is (`Overlay<FrozenDisk>`). Writes are refused with
/// `ErrorKind::PermissionDenied`. Cloning it shares the layer.
#[derive(Clone)]
pub struct FrozenDisk {
    layer: Arc<FrozenLayer>,
}

impl FrozenDisk {
    /// A disk that reads `layer`.
    pub fn new(layer: Arc<FrozenLayer>) -> Self {
        Self { layer }
    }

    /// The layer it reads.
    pub fn layer(&self) -> &Arc<FrozenLayer> {
        &self.layer
    }
}

impl BlockBackend for FrozenDisk {
    fn size(&self) -> u64 {
        self.layer.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.layer.read_at(buf, offset)
    }

    fn write_at(&mut self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a frozen disk layer is never written",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Already frozen: the same layer, shared.
    fn freeze(&mut self) -> Result<Arc<FrozenLayer>, BlockForkError> {
        Ok(self.layer.clone())
    }

    fn frozen_layer(&self) -> Option<&Arc<FrozenLayer>> {
        Some(&self.layer)
    }

    /// The whole chain as one in-memory overlay state over the image.
    fn save_overlay(&self) -> Result<Option<OverlayState>, OverlaySaveError> {
        let mut sectors = SectorMap::new();
        self.layer.collect_sectors(&mut sectors)?;
        Ok(Some(OverlayState::Memory(MemoryOverlayState::from_map(
            self.layer.size,
            &sectors,
        ))))
    }
}

/// Forks `disk` (call it while the VM is paused, with no request in progress): freezes what it
/// holds now into a shared layer ([`BlockBackend::freeze`]), replaces `disk` with a new empty
/// in-memory overlay over that layer, and returns another one for the child. So neither ever
/// sees the other's later writes, nor a sibling's, and the layer is never written. A
/// read-only disk (`read_only`) gets no overlays: both are a [`FrozenDisk`] sharing the layer.
///
/// Costs O(1), or O(sectors an in-memory overlay holds) when it must flatten the chain (see
/// [`MAX_CHAIN_DEPTH`]); no I/O. What changes for the parent's disk:
/// - a raw image written through: the image becomes the bottom layer and is never written
///   again; the parent's later writes go to memory, and `flush` no longer reaches a file;
/// - an in-memory overlay: its sectors become a layer (moved, not copied);
/// - a file overlay: its file and block bitmap become a layer, and the parent stops writing
///   the file; later writes go to memory.
///
/// # Errors
/// [`BlockForkError::Unsupported`] if the backend cannot freeze; `disk` is then unchanged.
pub fn fork_disk(
    disk: &mut Box<dyn BlockBackend>,
    read_only: bool,
) -> Result<Box<dyn BlockBackend>, BlockForkError> {
    let layer = disk.freeze()?;
    *disk = over(layer.clone(), read_only);
    Ok(over(layer, read_only))
}

/// A new disk over `layer`: an empty in-memory overlay, or for a read-only disk the layer
/// itself.
fn over(layer: Arc<FrozenLayer>, read_only: bool) -> Box<dyn BlockBackend> {
    if read_only {
        Box::new(FrozenDisk::new(layer))
    } else {
        Box::new(Overlay::new(FrozenDisk::new(layer)))
    }
}
