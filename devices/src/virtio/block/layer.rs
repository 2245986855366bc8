//! Forking a disk: its contents frozen into an immutable layer that the parent and each child
//! read under an overlay of their own.
//!
//! A frozen disk is a chain of layers, top to bottom: zero or more layers of sectors (what an
//! in-memory overlay held when it was frozen), at most one layer of 4 KiB blocks in a file (a
//! file overlay, frozen), and the image at the bottom. Layers are shared (`Arc`) by every disk
//! forked from them, so a tree of forks is a tree of layers, and never change once built.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io;
use std::sync::Arc;

use super::backend::{read_file_at, read_through, SectorMap};
use super::overlay_file::{self, Bitmap};
use super::overlay_state::{MemoryOverlayState, OverlaySaveError, OverlayState};
use super::{BlockBackend, Overlay};

/// How much larger than what is being frozen a layer of sectors below it may be and still be
/// merged into it (see [`FrozenLayer`]).
pub const MERGE_RATIO: usize = 2;

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
///
/// The chain stays shallow: when an in-memory overlay is frozen, each layer of sectors right
/// below it that holds at most [`MERGE_RATIO`] times the sectors merged so far is merged into
/// the new layer (sorted maps merged in one pass, sectors shared, not copied). So every layer
/// of sectors holds more than twice what all the layers above it hold together, a chain has at
/// most log2(sectors held) + 1 layers of sectors whatever the number of forks, and each sector
/// is merged O(log(sectors held)) times over its life: a fork that froze few sectors merges
/// only layers as small, never a large layer below them.
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

    /// `sectors` over `below`; `below` itself when `sectors` is empty. Merges the small layers
    /// of sectors right below into it (see [`FrozenLayer`]).
    pub(super) fn sectors(sectors: SectorMap, below: Arc<Self>) -> Arc<Self> {
        if sectors.is_empty() {
            return below;
        }
        let mut merged = sectors.len();
        let mut group = Vec::new();
        let mut below = below;
        while let LayerKind::Sectors {
            sectors: lower,
            below: next,
        } = &below.kind
        {
            if lower.len() > merged.saturating_mul(MERGE_RATIO) {
                break;
            }
            merged += lower.len();
            let next = next.clone();
            group.push(below);
            below = next;
        }
        let sectors = if group.is_empty() {
            sectors
        } else {
            merge(&sectors, &group)
        };
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

/// `top` merged with the maps of `layers` (layers of sectors, top down). Upper layers win: a
/// sector is taken from a lower layer only if no upper one has it. The maps are sorted, so
/// they are merged in one pass through a heap of their next sectors and the result is built in
/// bulk; sectors are shared, not copied.
fn merge(top: &SectorMap, layers: &[Arc<FrozenLayer>]) -> SectorMap {
    let lower = layers.iter().filter_map(|layer| match &layer.kind {
        LayerKind::Sectors { sectors, .. } => Some(sectors),
        _ => None,
    });
    let mut heads: Vec<_> = std::iter::once(top)
        .chain(lower)
        .map(|m| m.iter())
        .collect();
    let mut merged = Vec::with_capacity(heads.iter().map(|h| h.len()).sum());
    // Each layer's next sector, lowest first; on a tie, the upper layer (lower rank) first.
    let mut next: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::with_capacity(heads.len());
    for (rank, head) in heads.iter_mut().enumerate() {
        if let Some((&sector, _)) = head.clone().next() {
            next.push(Reverse((sector, rank)));
        }
    }
    let mut last = None;
    while let Some(Reverse((sector, rank))) = next.pop() {
        let Some((_, data)) = heads.get_mut(rank).and_then(|head| head.next()) else {
            continue;
        };
        if last != Some(sector) {
            merged.push((sector, data.clone()));
            last = Some(sector);
        }
        if let Some((&following, _)) = heads.get(rank).and_then(|head| head.clone().next()) {
            next.push(Reverse((following, rank)));
        }
    }
    // Already sorted: the map is built in bulk, without a search per sector.
    merged.into_iter().collect()
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
/// Costs O(1), plus O(sectors merged) when freezing an in-memory overlay merges small layers
/// below it (see [`FrozenLayer`]); no I/O. What changes for the parent's disk:
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
