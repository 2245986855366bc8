//! A copy-on-write overlay kept in a file: writes land in a sparse overlay file, 4 KiB block by
//! 4 KiB block, and the base is only ever read.

use std::collections::btree_map::Entry;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::backend::SectorMap;
use super::layer::{BlockForkError, FrozenLayer};
use super::overlay_state::{OverlayRestoreError, OverlaySaveError, OverlayState};
use super::{fit_to, BlockBackend, SECTOR_SIZE};

/// Unit of copy-up in a [`FileOverlay`]: the first write to a block copies the whole block from
/// the base into the overlay file.
pub const OVERLAY_BLOCK_SIZE: u64 = 4096;

/// A copy-on-write view of a base disk whose writes go to an overlay file of the same size.
///
/// An in-memory bitmap records which [`OVERLAY_BLOCK_SIZE`] blocks the overlay file holds. Reads
/// take those blocks from the overlay file and every other block from the base. The first write
/// to a block copies the block up from the base (unless the write covers it whole), so a
/// 512-byte sector write keeps the rest of its block. A last block cut short by the end of the
/// disk is copied up as far as the end. The base is never written, and is read only for the
/// blocks the overlay lacks: blocks it holds never depend on the base, and a copy-up past the
/// base's end (a base that shrank) gets zeros there, as the base reads them.
///
/// The bitmap lives in memory: the overlay file on its own does not say which of its blocks
/// are data and which are holes, so it is not a disk image to reopen later.
pub struct FileOverlay<B> {
    pub(super) base: B,
    // Shared with the frozen layer a fork makes of it.
    pub(super) file: Arc<File>,
    pub(super) size: u64,
    pub(super) present: Bitmap,
}

impl<B: BlockBackend> FileOverlay<B> {
    /// An empty overlay over `base` in `file` (opened for reading and writing): a regular file
    /// is resized to the base's size, a block device must hold at least that many bytes (see
    /// [`fit_to`]). What `file` held before is ignored and never read.
    pub fn new(base: B, file: File) -> io::Result<Self> {
        let size = base.size();
        fit_to(&file, size)?;
        let present = Bitmap::new(size.div_ceil(OVERLAY_BLOCK_SIZE))?;
        Ok(Self {
            base,
            file: Arc::new(file),
            size,
            present,
        })
    }

    /// Number of blocks of [`OVERLAY_BLOCK_SIZE`] bytes the overlay file holds.
    pub fn dirty_blocks(&self) -> u64 {
        self.present.count
    }

    /// `[offset, offset + len)` as a byte range, refused unless it lies within the disk.
    fn checked_range(&self, offset: u64, len: usize) -> io::Result<Range<u64>> {
        let end = u64::try_from(len)
            .ok()
            .and_then(|len| offset.checked_add(len))
            .filter(|&end| end <= self.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "access of {len} bytes at {offset} outside a disk of {} bytes",
                        self.size
                    ),
                )
            })?;
        Ok(offset..end)
    }

    /// Byte range of block `block` on the disk; the last block may be short.
    fn block_range(&self, block: u64) -> Range<u64> {
        let start = block.saturating_mul(OVERLAY_BLOCK_SIZE).min(self.size);
        start..start.saturating_add(OVERLAY_BLOCK_SIZE).min(self.size)
    }

    /// Copies block `block` from the base into the overlay file, unless it is there already.
    fn copy_up(&mut self, block: u64) -> io::Result<()> {
        if self.present.get(block) {
            return Ok(());
        }
        let range = self.block_range(block);
        let mut buf = [0u8; OVERLAY_BLOCK_SIZE as usize];
        // A block range is at most OVERLAY_BLOCK_SIZE long.
        let data = buf
            .get_mut(..(range.end - range.start) as usize)
            .ok_or_else(|| invalid("overlay block longer than 4 KiB"))?;
        self.base.read_at(data, range.start)?;
        self.file.write_all_at(data, range.start)?;
        self.present.set(block);
        Ok(())
    }
}

impl<B: BlockBackend> BlockBackend for FileOverlay<B> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.checked_range(offset, buf.len())?;
        let base = &mut self.base;
        read_blocks(
            &self.file,
            &self.present,
            self.size,
            buf,
            offset,
            |run, at| base.read_at(run, at),
        )
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let range = self.checked_range(offset, buf.len())?;
        let blocks = blocks_of(&range);
        // Only the first and last blocks can be partly covered; they keep the base's bytes
        // around the write. Blocks covered whole need no copy.
        if !blocks.is_empty() {
            for block in [blocks.start, blocks.end - 1] {
                let whole = self.block_range(block);
                if whole.start < range.start || range.end < whole.end {
                    self.copy_up(block)?;
                }
            }
        }
        self.file.write_all_at(buf, range.start)?;
        for block in blocks {
            self.present.set(block);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        // The base is never written, so only the overlay file has anything to make durable.
        self.file.sync_data()
    }

    /// The base freezes first (if it cannot, nothing changes); then the file and its bitmap
    /// (moved, not copied) become a layer over it, and this overlay stops writing the file.
    fn freeze(&mut self) -> Result<Arc<FrozenLayer>, BlockForkError> {
        let below = self.base.freeze()?;
        let present = std::mem::replace(&mut self.present, Bitmap::empty());
        Ok(FrozenLayer::blocks(self.file.clone(), present, below))
    }

    /// The block bitmap; the blocks' bytes are in the overlay file. Refused over a frozen
    /// layer, whose contents the bitmap does not describe.
    fn save_overlay(&self) -> Result<Option<OverlayState>, OverlaySaveError> {
        if self.base.frozen_layer().is_some() {
            return Err(OverlaySaveError::FileOverlayOverFrozenLayer);
        }
        Ok(Some(OverlayState::File(self.save())))
    }
}

/// Fills `buf` with the disk at `offset` (the caller keeps it within `size`): the blocks
/// `present` says `file` holds from `file`, every run of others from `below(run, offset)`.
/// Consecutive blocks with the same source are read with one call.
pub(super) fn read_blocks(
    file: &File,
    present: &Bitmap,
    size: u64,
    buf: &mut [u8],
    offset: u64,
    mut below: impl FnMut(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let end = offset
        .checked_add(buf.len() as u64)
        .filter(|&end| end <= size)
        .ok_or_else(|| invalid("overlay read past the end of the disk"))?;
    let range = offset..end;
    for run in present.runs(blocks_of(&range)) {
        let start = run
            .blocks
            .start
            .saturating_mul(OVERLAY_BLOCK_SIZE)
            .max(range.start);
        let end = run
            .blocks
            .end
            .saturating_mul(OVERLAY_BLOCK_SIZE)
            .min(range.end);
        let piece = buf
            .get_mut(to_index(start - range.start)?..to_index(end - range.start)?)
            .ok_or_else(|| invalid("overlay read outside its buffer"))?;
        if run.present {
            file.read_exact_at(piece, start)?;
        } else {
            below(piece, start)?;
        }
    }
    Ok(())
}

/// Adds to `map` each sector of the blocks `present` says `file` holds that `map` lacks; a
/// sector cut short by the end of the disk (`size`) is padded with zeros.
pub(super) fn collect_blocks(
    file: &File,
    present: &Bitmap,
    size: u64,
    map: &mut SectorMap,
) -> io::Result<()> {
    let mut block = [0u8; OVERLAY_BLOCK_SIZE as usize];
    for index in present.iter_set() {
        let start = index * OVERLAY_BLOCK_SIZE;
        let len = size.saturating_sub(start).min(OVERLAY_BLOCK_SIZE) as usize;
        let first = start / SECTOR_SIZE;
        let sectors = first..first + (len as u64).div_ceil(SECTOR_SIZE);
        if sectors.clone().all(|sector| map.contains_key(&sector)) {
            continue;
        }
        let data = block
            .get_mut(..len)
            .ok_or_else(|| invalid("overlay block longer than 4 KiB"))?;
        file.read_exact_at(data, start)?;
        for (sector, chunk) in sectors.zip(data.chunks(SECTOR_SIZE as usize)) {
            if let Entry::Vacant(e) = map.entry(sector) {
                let mut bytes = [0u8; SECTOR_SIZE as usize];
                bytes
                    .get_mut(..chunk.len())
                    .ok_or_else(|| invalid("sector longer than 512 bytes"))?
                    .copy_from_slice(chunk);
                e.insert(Arc::new(bytes));
            }
        }
    }
    Ok(())
}

/// The blocks a byte range touches (empty for an empty range).
fn blocks_of(range: &Range<u64>) -> Range<u64> {
    if range.is_empty() {
        return 0..0;
    }
    range.start / OVERLAY_BLOCK_SIZE..range.end.div_ceil(OVERLAY_BLOCK_SIZE)
}

fn to_index(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| invalid("overlay offset does not fit in memory"))
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// One bit per block: set when the overlay file holds the block.
pub(super) struct Bitmap {
    words: Vec<u64>,
    blocks: u64,
    count: u64,
}

/// Consecutive blocks that all are, or all are not, in the overlay.
struct Run {
    blocks: Range<u64>,
    present: bool,
}

impl Bitmap {
    /// An empty bitmap of `blocks` bits; an error rather than an abort when it cannot be
    /// allocated.
    fn new(blocks: u64) -> io::Result<Self> {
        let len = to_index(blocks.div_ceil(64))?;
        let mut words = Vec::new();
        words
            .try_reserve_exact(len)
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "overlay bitmap too large"))?;
        words.resize(len, 0);
        Ok(Self {
            words,
            blocks,
            count: 0,
        })
    }

    /// A bitmap of no blocks, what a frozen overlay keeps.
    pub(super) fn empty() -> Self {
        Self {
            words: Vec::new(),
            blocks: 0,
            count: 0,
        }
    }

    /// A bitmap of `blocks` bits from saved `words`, refused unless there are exactly enough
    /// words and no bit past `blocks` is set.
    pub(super) fn from_words(words: Vec<u64>, blocks: u64) -> Result<Self, OverlayRestoreError> {
        let expected = blocks.div_ceil(64);
        if words.len() as u64 != expected {
            return Err(OverlayRestoreError::BitmapLength {
                words: words.len(),
                expected,
            });
        }
        let tail = blocks % 64;
        if let (Some(&last), true) = (words.last(), tail != 0) {
            if last >> tail != 0 {
                return Err(OverlayRestoreError::BlockOutOfRange {
                    block: blocks + u64::from((last >> tail).trailing_zeros()),
                    blocks,
                });
            }
        }
        let count = words.iter().map(|w| u64::from(w.count_ones())).sum();
        Ok(Self {
            words,
            blocks,
            count,
        })
    }

    /// The bits as saved: word `i` holds blocks `64 * i ..`, lowest bit first.
    pub(super) fn words(&self) -> &[u64] {
        &self.words
    }

    /// Number of blocks set.
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    /// The blocks set, in order.
    fn iter_set(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                Some(i as u64 * 64 + u64::from(bit))
            })
        })
    }

    fn get(&self, block: u64) -> bool {
        usize::try_from(block / 64)
            .ok()
            .and_then(|word| self.words.get(word))
            .is_some_and(|word| word & (1 << (block % 64)) != 0)
    }

    /// Sets the bit of `block`; blocks past the end are ignored.
    fn set(&mut self, block: u64) {
        if block >= self.blocks {
            return;
        }
        let word = usize::try_from(block / 64)
            .ok()
            .and_then(|word| self.words.get_mut(word));
        if let Some(word) = word {
            let bit = 1 << (block % 64);
            if *word & bit == 0 {
                *word |= bit;
                self.count += 1;
            }
        }
    }

    /// Splits `blocks` into maximal runs of equal presence, in order.
    fn runs(&self, blocks: Range<u64>) -> impl Iterator<Item = Run> + '_ {
        let mut next = blocks.start;
        std::iter::from_fn(move || {
            if next >= blocks.end {
                return None;
            }
            let start = next;
            let present = self.get(start);
            next = (start + 1..blocks.end)
                .find(|&b| self.get(b) != present)
                .unwrap_or(blocks.end);
            Some(Run {
                blocks: start..next,
                present,
            })
        })
    }
}

#[cfg(test)]
use vmm_sys_util::tempfile::TempFile;

/// An overlay over `base` in a fresh temporary file, which is returned to keep it alive.
#[cfg(test)]
pub(super) fn over_temp_file<B: BlockBackend>(base: B) -> (FileOverlay<B>, TempFile) {
    let overlay_file = TempFile::new().expect("temporary overlay file");
    let file = File::options()
        .read(true)
        .write(true)
        .open(overlay_file.as_path())
        .expect("open the overlay file");
    let overlay = FileOverlay::new(base, file).expect("overlay over a fresh file");
    (overlay, overlay_file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::testing::{LoopDevice, WatchedBase};
    use crate::virtio::block::RawFile;

    const BLOCK: usize = OVERLAY_BLOCK_SIZE as usize;

    /// Byte `i` of every base image.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A base image of `len` pattern bytes, opened read-only, and an overlay over it.
    struct Fixture {
        base: TempFile,
        overlay_file: TempFile,
        overlay: FileOverlay<RawFile>,
        expected: Vec<u8>,
    }

    impl Fixture {
        fn new(len: usize) -> Self {
            let base = TempFile::new().unwrap();
            base.as_file().write_all_at(&pattern(len), 0).unwrap();
            let raw = RawFile::new(File::open(base.as_path()).unwrap()).unwrap();
            let (overlay, overlay_file) = over_temp_file(raw);
            Self {
                base,
                overlay_file,
                overlay,
                expected: pattern(len),
            }
        }

        fn write(&mut self, data: &[u8], offset: usize) {
            self.overlay.write_at(data, offset as u64).unwrap();
            self.expected[offset..offset + data.len()].copy_from_slice(data);
        }

        fn read(&mut self, offset: usize, len: usize) -> Vec<u8> {
            let mut buf = vec![0u8; len];
            self.overlay.read_at(&mut buf, offset as u64).unwrap();
            buf
        }

        /// Reads the whole disk, compares it with what was written, and checks the base image
        /// is untouched.
        fn check(&mut self) {
            let all = self.read(0, self.expected.len());
            assert!(all == self.expected, "overlay contents differ");
            let base = std::fs::read(self.base.as_path()).unwrap();
            assert!(base == pattern(self.expected.len()), "base image modified");
        }

        fn overlay_bytes(&self) -> Vec<u8> {
            std::fs::read(self.overlay_file.as_path()).unwrap()
        }
    }

    #[test]
    fn the_overlay_file_is_sized_like_the_base_and_reads_fall_through() {
        let mut fx = Fixture::new(4 * BLOCK);
        assert_eq!(fx.overlay.size(), 4 * OVERLAY_BLOCK_SIZE);
        assert_eq!(fx.overlay_bytes().len(), 4 * BLOCK);
        assert_eq!(fx.read(100, 5000), pattern(4 * BLOCK)[100..5100]);
        assert_eq!(fx.overlay.dirty_blocks(), 0);
        fx.check();
    }

    #[test]
    fn a_sector_write_keeps_the_rest_of_its_block() {
        let mut fx = Fixture::new(4 * BLOCK);
        fx.write(&[0xaa; 512], BLOCK + 1024);
        assert_eq!(fx.overlay.dirty_blocks(), 1);
        fx.check();
        // The whole block was copied up into the overlay file, at its own offset.
        let overlay = fx.overlay_bytes();
        assert_eq!(overlay[BLOCK..2 * BLOCK], fx.expected[BLOCK..2 * BLOCK]);
        assert!(overlay[..BLOCK].iter().all(|&b| b == 0));
        // A second write to the same block keeps the first.
        fx.write(&[0xbb; 512], BLOCK + 3584);
        assert_eq!(fx.overlay.dirty_blocks(), 1);
        fx.check();
    }

    #[test]
    fn a_write_across_blocks_copies_up_only_its_partial_ends() {
        let mut fx = Fixture::new(8 * BLOCK);
        // Ends inside block 1 and block 4; covers blocks 2 and 3 whole.
        fx.write(&vec![0xcc; 3 * BLOCK + 1024], BLOCK + 2048);
        assert_eq!(fx.overlay.dirty_blocks(), 4);
        fx.check();
        fx.overlay.flush().unwrap();
    }

    #[test]
    fn reads_across_blocks_mix_overlay_and_base() {
        let mut fx = Fixture::new(8 * BLOCK);
        fx.write(&[1; 512], BLOCK);
        fx.write(&[2; 512], 3 * BLOCK + 512);
        fx.write(&vec![3; BLOCK], 4 * BLOCK);
        // Base, overlay, base, overlay, overlay, base.
        let got = fx.read(BLOCK / 2, 5 * BLOCK);
        assert!(got == fx.expected[BLOCK / 2..BLOCK / 2 + 5 * BLOCK]);
        fx.check();
    }

    #[test]
    fn the_last_partial_block() {
        let len = 3 * BLOCK + 1536;
        let mut fx = Fixture::new(len);
        fx.write(&[0xdd; 512], 3 * BLOCK + 512);
        assert_eq!(fx.overlay.dirty_blocks(), 1);
        fx.check();
        assert_eq!(fx.overlay_bytes().len(), len);
        assert_eq!(fx.read(len - 512, 512), pattern(len)[len - 512..]);
        // A write up to the end covers the short block whole.
        let mut fx = Fixture::new(len);
        fx.write(&[0xee; 1536], 3 * BLOCK);
        fx.check();
    }

    #[test]
    fn accesses_past_the_end_are_refused() {
        let mut fx = Fixture::new(2 * BLOCK);
        let mut buf = [0u8; 512];
        assert!(fx
            .overlay
            .read_at(&mut buf, 2 * OVERLAY_BLOCK_SIZE)
            .is_err());
        assert!(fx.overlay.read_at(&mut buf, u64::MAX - 100).is_err());
        assert!(fx
            .overlay
            .write_at(&buf, 2 * OVERLAY_BLOCK_SIZE - 256)
            .is_err());
        assert!(fx.overlay.write_at(&buf, u64::MAX).is_err());
        assert_eq!(fx.overlay.dirty_blocks(), 0);
        fx.overlay.write_at(&[], 2 * OVERLAY_BLOCK_SIZE).unwrap();
        fx.overlay.read_at(&mut [], 0).unwrap();
        fx.check();
    }

    #[test]
    fn blocks_written_whole_never_touch_the_base() {
        // The base refuses every read of blocks 4..8.
        let base = WatchedBase::new(8 * BLOCK, 4 * OVERLAY_BLOCK_SIZE..8 * OVERLAY_BLOCK_SIZE);
        let reads = base.reads.clone();
        let (mut overlay, _file) = over_temp_file(base);
        let data: Vec<u8> = (0..4 * BLOCK).map(|i| (i * 7) as u8).collect();
        overlay.write_at(&data, 4 * OVERLAY_BLOCK_SIZE).unwrap();
        let mut got = vec![0u8; 6 * BLOCK];
        overlay.read_at(&mut got, 2 * OVERLAY_BLOCK_SIZE).unwrap();
        assert!(got[..2 * BLOCK] == pattern(4 * BLOCK)[2 * BLOCK..]);
        assert!(got[2 * BLOCK..] == data);
        // A partial block copies up that block only.
        overlay
            .write_at(&[0xaa; 512], OVERLAY_BLOCK_SIZE + 512)
            .unwrap();
        overlay
            .write_at(&[0xbb; 512], 5 * OVERLAY_BLOCK_SIZE)
            .unwrap();
        let reads = reads.lock().unwrap();
        assert!(
            reads.iter().all(|r| r.end <= 4 * OVERLAY_BLOCK_SIZE),
            "the base was read for overlay blocks: {reads:?}"
        );
    }

    #[test]
    fn overlay_blocks_survive_the_base_image_shrinking() {
        let mut fx = Fixture::new(16 * BLOCK);
        fx.write(&vec![0x11; 2 * BLOCK], 12 * BLOCK);
        // The host truncates the image to 4 blocks and 100 bytes while the overlay is in use.
        let cut = 4 * BLOCK + 100;
        fx.base.as_file().set_len(cut as u64).unwrap();
        assert_eq!(fx.read(12 * BLOCK, 2 * BLOCK), vec![0x11; 2 * BLOCK]);
        // A whole block, and a single sector that needs its block copied up, past the new end:
        // the base's missing bytes are zeros, as a sparse disk reads.
        fx.overlay
            .write_at(&vec![0x22; BLOCK], 8 * OVERLAY_BLOCK_SIZE)
            .unwrap();
        fx.overlay
            .write_at(&[0x33; 512], 10 * OVERLAY_BLOCK_SIZE + 1024)
            .unwrap();
        assert_eq!(fx.read(8 * BLOCK, BLOCK), vec![0x22; BLOCK]);
        let block = fx.read(10 * BLOCK, BLOCK);
        assert!(block[..1024].iter().all(|&b| b == 0));
        assert_eq!(block[1024..1536], [0x33; 512]);
        assert!(block[1536..].iter().all(|&b| b == 0));
        // The block across the new end keeps the base's bytes before it and zeros after.
        fx.overlay
            .write_at(&[0x44; 512], 4 * OVERLAY_BLOCK_SIZE + 2048)
            .unwrap();
        let block = fx.read(4 * BLOCK, BLOCK);
        assert!(block[..100] == pattern(cut)[4 * BLOCK..]);
        assert!(block[100..2048].iter().all(|&b| b == 0));
        assert_eq!(block[2048..2560], [0x44; 512]);
        // Blocks the overlay never held read as zeros past the end.
        assert!(fx.read(6 * BLOCK, BLOCK).iter().all(|&b| b == 0));
        let base = std::fs::read(fx.base.as_path()).unwrap();
        assert!(base == pattern(cut), "base image modified");
    }

    #[test]
    fn an_overlay_on_a_block_device_keeps_its_size_and_needs_room() {
        let base = LoopDevice::over_pattern("ovl-base", 16 * BLOCK);
        let cow = LoopDevice::over_pattern("ovl-cow", 16 * BLOCK);
        let raw = RawFile::new(File::open(&base.path).unwrap()).unwrap();
        let mut overlay = FileOverlay::new(raw, cow.open()).unwrap();
        assert_eq!(overlay.size(), 16 * OVERLAY_BLOCK_SIZE);
        overlay.write_at(&[0x55; 512], 512).unwrap();
        let mut got = vec![0u8; BLOCK];
        overlay.read_at(&mut got, 0).unwrap();
        let mut expected = pattern(BLOCK);
        expected[512..1024].fill(0x55);
        assert!(got == expected);
        // An overlay device smaller than the disk is refused.
        let small = LoopDevice::over_pattern("ovl-small", 8 * BLOCK);
        let raw = RawFile::new(File::open(&base.path).unwrap()).unwrap();
        assert!(FileOverlay::new(raw, small.open()).is_err());
    }
}
