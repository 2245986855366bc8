//! Where a block device's bytes live: a raw image file, or a copy-on-write overlay over one.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::layer::{BlockForkError, FrozenLayer};
use super::overlay_state::{OverlaySaveError, OverlayState};
use super::{file_size, SECTOR_SIZE};

/// Storage behind a virtio-blk device. Offsets and lengths are in bytes; callers keep every
/// access within [`BlockBackend::size`].
pub trait BlockBackend: Send {
    /// Size of the disk in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from the disk at `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` to the disk at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes completed writes durable.
    fn flush(&mut self) -> io::Result<()>;

    /// Freezes the disk's current contents into an immutable layer that forks share (see
    /// [`fork_disk`](super::fork_disk), which is how a disk is forked). The cost is O(1) or
    /// O(sectors the backend holds in memory), never O(disk size), and no I/O is done.
    ///
    /// On `Ok`, the contents have moved into the layer and `self` is spent: it must be dropped
    /// and replaced by an overlay over the layer. On `Err`, `self` is unchanged. The default
    /// refuses with [`BlockForkError::Unsupported`]; [`RawFile`], [`Overlay`],
    /// [`FileOverlay`](super::FileOverlay) and [`FrozenDisk`](super::FrozenDisk) freeze.
    fn freeze(&mut self) -> Result<Arc<FrozenLayer>, BlockForkError> {
        Err(BlockForkError::Unsupported)
    }

    /// The frozen layer this backend reads, if it is a [`FrozenDisk`](super::FrozenDisk).
    fn frozen_layer(&self) -> Option<&Arc<FrozenLayer>> {
        None
    }

    /// What the disk holds beyond its image, as plain data: an overlay's contents (the sectors
    /// of an in-memory overlay, the block bitmap of a file overlay), or for a forked disk its
    /// whole chain of frozen layers flattened into one in-memory overlay state over the image
    /// at the bottom. `None` (the default) when the backend's writes land in the image itself.
    fn save_overlay(&self) -> Result<Option<OverlayState>, OverlaySaveError> {
        Ok(None)
    }
}

/// A raw disk image in a regular file or a block device, accessed with `pread`/`pwrite`.
///
/// The disk's size is fixed when it is created (see [`file_size`]). If the file later shrinks
/// under it (the host truncates the image while the VM runs), bytes past the file's new end
/// read as zeros, as a sparse file's holes do, and writes there extend the file again.
#[derive(Debug)]
pub struct RawFile {
    // Shared with the frozen layer a fork makes of it.
    file: Arc<File>,
    size: u64,
}

impl RawFile {
    /// Uses `file` as a disk whose size is the file's size at this moment: its length for a
    /// regular file, `BLKGETSIZE64` for a block device. Anything else is refused with
    /// `ErrorKind::InvalidInput`.
    pub fn new(file: File) -> io::Result<Self> {
        let size = file_size(&file)?;
        Ok(Self {
            file: Arc::new(file),
            size,
        })
    }
}

impl BlockBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_file_at(&self.file, buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The image becomes the bottom layer, read-only from then on: this backend, which wrote
    /// it, is dropped.
    fn freeze(&mut self) -> Result<Arc<FrozenLayer>, BlockForkError> {
        Ok(FrozenLayer::image(self.file.clone(), self.size))
    }
}

/// Fills `buf` from `file` at `offset`; bytes past the file's end read as zeros, as a sparse
/// file's holes do.
pub(super) fn read_file_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|rest| !rest.is_empty()) {
        match file.read_at(rest, offset + done as u64) {
            // The end of the file: the rest of a fixed-size disk reads as zeros.
            Ok(0) => {
                rest.fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One sector's bytes.
pub(super) type Sector = [u8; SECTOR_SIZE as usize];
/// Sectors an overlay holds, by sector number. Shared (`Arc`) so that flattening a chain of
/// frozen layers copies pointers, not bytes; a writable overlay's sectors are never shared
/// (a fork moves the whole map into a frozen layer), so writing one never copies it.
pub(super) type SectorMap = BTreeMap<u64, Arc<Sector>>;

/// A copy-on-write view of a base disk: writes land in memory, sector by sector, and the base
/// is only ever read.
///
/// The base is read only for the bytes the overlay lacks: a read takes the sectors the overlay
/// holds from memory and asks the base for the others; a write that covers a sector whole
/// never reads the base, and a write to part of a sector the overlay lacks first copies that
/// sector from the base (bytes past the base's end, if it shrank, are zeros as the base reads
/// them). So sectors held whole in the overlay never depend on the base.
///
/// A forked disk is an `Overlay<FrozenDisk>`: an empty overlay over the frozen layers.
pub struct Overlay<B> {
    pub(super) base: B,
    pub(super) sectors: SectorMap,
}

impl<B: BlockBackend> Overlay<B> {
    /// An empty overlay over `base`.
    pub fn new(base: B) -> Self {
        Self {
            base,
            sectors: BTreeMap::new(),
        }
    }

    /// Number of sectors written so far.
    pub fn dirty_sectors(&self) -> usize {
        self.sectors.len()
    }

    /// Calls `f` with each piece of `[offset, offset + len)` that lies within one sector: the
    /// sector number, the offset inside the sector, and the piece's offset inside the range.
    fn for_each_piece(
        offset: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let sector = pos / SECTOR_SIZE;
            let within = (pos % SECTOR_SIZE) as usize;
            let n = (SECTOR_SIZE as usize - within).min(len - done);
            f(sector, within, done..done + n)?;
            done += n;
        }
        Ok(())
    }
}

impl<B: BlockBackend> BlockBackend for Overlay<B> {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let base = &mut self.base;
        read_through(&self.sectors, buf, offset, |run, at| base.read_at(run, at))
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let Self { base, sectors } = self;
        Self::for_each_piece(offset, buf.len(), |sector, within, range| {
            let src = buf.get(range).ok_or_else(bad_range)?;
            let data = match sectors.entry(sector) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let mut fresh = Arc::new([0u8; SECTOR_SIZE as usize]);
                    // Only a partial sector needs the base's bytes around the write.
                    if src.len() < fresh.len() {
                        read_base_sector(base, sector, Arc::make_mut(&mut fresh))?;
                    }
                    e.insert(fresh)
                }
            };
            // Sectors of a writable overlay are never shared, so this does not copy.
            let dst = Arc::make_mut(data)
                .get_mut(within..within + src.len())
                .ok_or_else(bad_range)?;
            dst.copy_from_slice(src);
            Ok(())
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        // The overlay is in memory and the base is never written: nothing to make durable.
        Ok(())
    }

    /// The base freezes first (if it cannot, nothing changes); then the sector map moves, not
    /// copied, into a layer over it. An empty overlay adds no layer.
    fn freeze(&mut self) -> Result<Arc<FrozenLayer>, BlockForkError> {
        let below = self.base.freeze()?;
        Ok(FrozenLayer::sectors(
            std::mem::take(&mut self.sectors),
            below,
        ))
    }

    fn save_overlay(&self) -> Result<Option<OverlayState>, OverlaySaveError> {
        let mut sectors = self.sectors.clone();
        if let Some(layer) = self.base.frozen_layer() {
            layer.collect_sectors(&mut sectors)?;
        }
        Ok(Some(OverlayState::Memory(
            super::overlay_state::MemoryOverlayState::from_map(self.size(), &sectors),
        )))
    }
}

/// Fills `buf` with the disk at `offset`: the sectors `sectors` holds from memory, every run
/// of bytes it lacks from `below(run, offset_of_run)`, one call per run. One range lookup in
/// `sectors`, so its cost grows with the sectors held in the range, not the range's length.
pub(super) fn read_through(
    sectors: &SectorMap,
    buf: &mut [u8],
    offset: u64,
    mut below: impl FnMut(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let Some(last) = buf.len().checked_sub(1) else {
        return Ok(());
    };
    let end = offset.checked_add(buf.len() as u64).ok_or_else(bad_range)?;
    let last_sector = (offset + last as u64) / SECTOR_SIZE;
    // Next byte of the disk not filled yet.
    let mut pos = offset;
    for (&sector, data) in sectors.range(offset / SECTOR_SIZE..=last_sector) {
        let start = sector * SECTOR_SIZE;
        let from = start.max(offset);
        let to = (start + SECTOR_SIZE).min(end);
        if pos < from {
            below(piece(buf, offset, pos..from)?, pos)?;
        }
        let src = data
            .get((from - start) as usize..(to - start) as usize)
            .ok_or_else(bad_range)?;
        piece(buf, offset, from..to)?.copy_from_slice(src);
        pos = to;
    }
    if pos < end {
        below(piece(buf, offset, pos..end)?, pos)?;
    }
    Ok(())
}

/// The part of `buf` (which holds the disk from `offset`) for the disk bytes `range`.
fn piece(buf: &mut [u8], offset: u64, range: Range<u64>) -> io::Result<&mut [u8]> {
    let start = usize::try_from(range.start - offset).map_err(|_| bad_range())?;
    let end = usize::try_from(range.end - offset).map_err(|_| bad_range())?;
    buf.get_mut(start..end).ok_or_else(bad_range)
}

/// Reads one sector of the base; a sector cut short by the end of the disk reads as zeros past
/// the end.
pub(super) fn read_base_sector<B: BlockBackend>(
    base: &mut B,
    sector: u64,
    out: &mut Sector,
) -> io::Result<()> {
    let start = sector * SECTOR_SIZE;
    let len = base.size().saturating_sub(start).min(SECTOR_SIZE) as usize;
    match out.get_mut(..len) {
        Some(part) if len > 0 => base.read_at(part, start),
        _ => Ok(()),
    }
}

fn bad_range() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "access outside the overlay sector",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::testing::{pattern, LoopDevice, WatchedBase};
    use vmm_sys_util::tempfile::TempFile;

    fn image(contents: &[u8]) -> (TempFile, RawFile) {
        let tmp = TempFile::new().unwrap();
        tmp.as_file().write_all_at(contents, 0).unwrap();
        let file = File::open(tmp.as_path()).unwrap();
        (tmp, RawFile::new(file).unwrap())
    }

    #[test]
    fn overlay_reads_its_writes_and_keeps_the_base() {
        let base: Vec<u8> = (0..4 * SECTOR_SIZE).map(|i| i as u8).collect();
        let (tmp, raw) = image(&base);
        let mut overlay = Overlay::new(raw);
        overlay.write_at(&[0xaa; 700], 300).unwrap();
        assert_eq!(overlay.dirty_sectors(), 2);
        let mut all = vec![0u8; base.len()];
        overlay.read_at(&mut all, 0).unwrap();
        let mut expected = base.clone();
        expected[300..1000].fill(0xaa);
        assert_eq!(all, expected);
        assert_eq!(std::fs::read(tmp.as_path()).unwrap(), base);
        overlay.flush().unwrap();
    }

    const SECTOR: u64 = SECTOR_SIZE;

    #[test]
    fn overlay_sectors_written_whole_never_touch_the_base() {
        // The base refuses every read of sectors 8..16.
        let mut overlay = Overlay::new(WatchedBase::new(16 * 512, 8 * SECTOR..16 * SECTOR));
        let reads = overlay.base.reads.clone();
        let data: Vec<u8> = (0..8 * 512).map(|i| (i * 7) as u8).collect();
        overlay.write_at(&data, 8 * SECTOR).unwrap();
        let mut got = vec![0u8; 8 * 512];
        overlay.read_at(&mut got, 8 * SECTOR).unwrap();
        assert!(got == data);
        // A read across base and overlay sectors asks the base for its own sectors only.
        let mut mixed = vec![0u8; 12 * 512];
        overlay.read_at(&mut mixed, 4 * SECTOR).unwrap();
        assert!(mixed[..4 * 512] == pattern(8 * 512)[4 * 512..]);
        assert!(mixed[4 * 512..] == data);
        // Partial sectors are completed from the base, only those sectors.
        overlay.write_at(&[0xaa; 10], 2 * SECTOR + 100).unwrap();
        let mut sector = [0u8; 512];
        overlay.read_at(&mut sector, 2 * SECTOR).unwrap();
        let mut expected = pattern(3 * 512)[2 * 512..].to_vec();
        expected[100..110].fill(0xaa);
        assert!(sector[..] == expected[..]);
        let reads = reads.lock().unwrap();
        assert!(
            reads.iter().all(|r| r.end <= 8 * SECTOR),
            "the base was read for overlay sectors: {reads:?}"
        );
    }

    #[test]
    fn overlay_sectors_survive_the_base_image_shrinking() {
        let (tmp, raw) = image(&pattern(16 * 512));
        let mut overlay = Overlay::new(raw);
        overlay.write_at(&[0x11; 4 * 512], 12 * SECTOR).unwrap();
        // The host truncates the image to 4 sectors and 100 bytes while the overlay is in use.
        tmp.as_file().set_len(4 * SECTOR + 100).unwrap();
        let mut got = vec![0u8; 4 * 512];
        overlay.read_at(&mut got, 12 * SECTOR).unwrap();
        assert_eq!(got, [0x11; 4 * 512]);
        // Whole sectors past the new end are written and read back.
        overlay.write_at(&[0x22; 2 * 512], 8 * SECTOR).unwrap();
        overlay.read_at(&mut got[..1024], 8 * SECTOR).unwrap();
        assert_eq!(got[..1024], [0x22; 1024]);
        // A partial sector past the end is completed with zeros, as a sparse disk reads; so is
        // the short sector across the new end, after the base's bytes.
        overlay.write_at(&[0x33; 10], 6 * SECTOR + 500).unwrap();
        let mut sector = [0u8; 512];
        overlay.read_at(&mut sector, 6 * SECTOR).unwrap();
        assert!(sector[..500].iter().all(|&b| b == 0));
        assert_eq!(sector[500..510], [0x33; 10]);
        overlay.write_at(&[0x44; 10], 4 * SECTOR + 200).unwrap();
        overlay.read_at(&mut sector, 4 * SECTOR).unwrap();
        assert!(sector[..100] == pattern(5 * 512)[4 * 512..4 * 512 + 100]);
        assert!(sector[100..200].iter().all(|&b| b == 0));
        assert_eq!(sector[200..210], [0x44; 10]);
        // Sectors the overlay never held read as zeros past the end, the base's bytes before.
        overlay.read_at(&mut sector, 10 * SECTOR).unwrap();
        assert_eq!(sector, [0; 512]);
        overlay.read_at(&mut sector, 3 * SECTOR).unwrap();
        assert!(sector[..] == pattern(4 * 512)[3 * 512..]);
        // The base was never written.
        assert_eq!(
            std::fs::metadata(tmp.as_path()).unwrap().len(),
            4 * SECTOR + 100
        );
    }

    #[test]
    fn raw_file_reads_past_a_truncated_end_as_zeros_and_writes_extend_it() {
        let (tmp, _) = image(&pattern(8 * 512));
        let file = File::options().read(true).write(true).open(tmp.as_path());
        let mut raw = RawFile::new(file.unwrap()).unwrap();
        tmp.as_file().set_len(2 * SECTOR + 10).unwrap();
        assert_eq!(raw.size(), 8 * SECTOR, "the disk keeps its size");
        let mut got = vec![0xffu8; 2 * 512];
        raw.read_at(&mut got, 2 * SECTOR - 512).unwrap();
        assert!(got[..522] == pattern(2 * 512 + 10)[512..]);
        assert!(got[522..].iter().all(|&b| b == 0));
        raw.write_at(&[5; 512], 6 * SECTOR).unwrap();
        raw.read_at(&mut got, 6 * SECTOR).unwrap();
        assert_eq!(got[..512], [5; 512]);
        assert!(got[512..].iter().all(|&b| b == 0));
    }

    #[test]
    fn raw_file_sizes_a_loop_device_by_its_bytes() {
        let dev = LoopDevice::over_pattern("rawfile", 1 << 20);
        let mut raw = RawFile::new(dev.open()).unwrap();
        assert_eq!(raw.size(), 1 << 20);
        let mut last = [0u8; 512];
        raw.read_at(&mut last, (1 << 20) - 512).unwrap();
        assert!(last[..] == pattern(1 << 20)[(1 << 20) - 512..]);
    }
}
