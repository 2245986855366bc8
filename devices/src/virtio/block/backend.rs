//! Where a block device's bytes live: a raw image file, or a copy-on-write overlay over one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::SECTOR_SIZE;

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
}

/// A raw disk image in a file, accessed with `pread`/`pwrite`.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
}

impl RawFile {
    /// Uses `file` as a disk whose size is the file's size at this moment.
    pub fn new(file: File) -> io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }
}

impl BlockBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

type Sector = [u8; SECTOR_SIZE as usize];

/// A copy-on-write view of a base disk: writes land in memory, sector by sector, and the base
/// is only ever read. Reads take a sector from the overlay when it was written, else the base.
pub struct Overlay<B> {
    base: B,
    sectors: BTreeMap<u64, Box<Sector>>,
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
        mut f: impl FnMut(u64, usize, std::ops::Range<usize>) -> io::Result<()>,
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
        self.base.read_at(buf, offset)?;
        let sectors = &self.sectors;
        Self::for_each_piece(offset, buf.len(), |sector, within, range| {
            if let (Some(data), Some(out)) = (sectors.get(&sector), buf.get_mut(range)) {
                let src = data.get(within..within + out.len()).ok_or_else(bad_range)?;
                out.copy_from_slice(src);
            }
            Ok(())
        })
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let Self { base, sectors } = self;
        Self::for_each_piece(offset, buf.len(), |sector, within, range| {
            let data = match sectors.entry(sector) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let mut fresh = Box::new([0u8; SECTOR_SIZE as usize]);
                    read_base_sector(base, sector, &mut fresh)?;
                    e.insert(fresh)
                }
            };
            let src = buf.get(range).ok_or_else(bad_range)?;
            let dst = data
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
}

/// Reads one sector of the base; a sector cut short by the end of the base reads as zeros past
/// the end.
fn read_base_sector<B: BlockBackend>(
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
}
