//! Where image writers read guest RAM from: a vm-memory `GuestMemoryMmap` or the VM's memfd.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::{
    bitmap::Bitmap, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::{ImageError, MemoryLayout, PAGE_SIZE_U64};
use crate::engine::Mapping;

/// Guest RAM that an image writer can read: a host address per range of a layout, and
/// optionally which parts were ever written.
///
/// The VM must be paused (no vCPU or device thread writing) while a writer reads; a
/// concurrent write makes the image inconsistent.
///
/// # Safety
/// `host_addr` must return an address valid for reads of the range's `len` bytes for as long
/// as `self` is borrowed.
pub unsafe trait GuestRamReader {
    /// Host address of range `index` of `layout`.
    ///
    /// # Errors
    /// [`ImageError::MemoryNotCovered`] if the memory lacks that range.
    fn host_addr(&self, layout: &MemoryLayout, index: usize) -> Result<*const u8, ImageError>;

    /// Sub-ranges `(offset, len)` of image bytes `offset .. offset + len` that may hold data;
    /// the rest is known to be zero. The default says everything may.
    ///
    /// # Errors
    /// An I/O error while asking the kernel.
    fn data_extents(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
        Ok(vec![(offset, len)])
    }
}

// SAFETY: the address is inside one region mapping owned by `self` (its length is checked to
// cover the whole range), valid while `self` is borrowed.
unsafe impl<B: Bitmap> GuestRamReader for GuestMemoryMmap<B> {
    fn host_addr(&self, layout: &MemoryLayout, index: usize) -> Result<*const u8, ImageError> {
        let r = layout.ranges()[index];
        let missing = ImageError::MemoryNotCovered { index };
        let Some((region, at)) = self.to_region_addr(GuestAddress(r.guest_addr)) else {
            return Err(missing);
        };
        if at.0.checked_add(r.len).is_none_or(|end| end > region.len()) {
            return Err(missing);
        }
        region
            .get_host_address(at)
            .map(|p| p.cast_const())
            .map_err(|_| missing)
    }
}

/// The VM's memfd (or any file laid out like a raw image), mapped read-only for a writer;
/// never-touched ranges are skipped with `SEEK_DATA`/`SEEK_HOLE`.
#[derive(Debug)]
pub struct FdMemory<'a> {
    file: &'a File,
    mapping: Mapping,
}

impl<'a> FdMemory<'a> {
    /// Maps `file` (at least `layout.size()` bytes) shared and read-only.
    ///
    /// # Errors
    /// [`ImageError::TooShort`] for a short file, [`ImageError::Io`] if mapping fails.
    pub fn new(file: &'a File, layout: &MemoryLayout) -> Result<Self, ImageError> {
        let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let io_err = |source| ImageError::Io {
            path: path.clone(),
            source,
        };
        let len = file.metadata().map_err(io_err)?.len();
        if len < layout.size() {
            return Err(ImageError::TooShort {
                path,
                len,
                need: layout.size(),
            });
        }
        let mapping = Mapping::map_file(file, layout.size(), libc::PROT_READ, libc::MAP_SHARED)
            .map_err(io_err)?;
        Ok(FdMemory { file, mapping })
    }
}

// SAFETY: the mapping covers `layout.size()` bytes and lives as long as `self`; range `index`
// lies at its `offset`, which is inside the mapping because the layout is validated.
unsafe impl GuestRamReader for FdMemory<'_> {
    fn host_addr(&self, layout: &MemoryLayout, index: usize) -> Result<*const u8, ImageError> {
        let r = layout.ranges()[index];
        if r.offset + r.len > self.mapping.len() as u64 {
            return Err(ImageError::MemoryNotCovered { index });
        }
        // SAFETY: in bounds of the mapping, checked above.
        Ok(unsafe { self.mapping.as_ptr().add(r.offset as usize) }.cast_const())
    }

    fn data_extents(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
        let extents = data_extents(self.file, offset, len)?;
        for &(off, l) in &extents {
            // Map the extent's pages in one call instead of one fault per page (a writer
            // reads every one of them). Best effort: an old kernel without
            // MADV_POPULATE_READ just faults them one by one.
            // SAFETY: `off .. off + l` lies inside our read-only mapping (extents are clipped
            // to the layout, which the mapping covers); populating has no other effect.
            unsafe {
                libc::madvise(
                    self.mapping.as_ptr().add(off as usize).cast(),
                    l as usize,
                    libc::MADV_POPULATE_READ,
                )
            };
        }
        Ok(extents)
    }
}

/// Extents of `file` within `offset .. offset + len` that hold data, page-aligned outward.
pub(crate) fn data_extents(file: &File, offset: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let end = offset + len;
    let mut out = Vec::new();
    let mut at = offset;
    while at < end {
        let Some(data) = crate::sys::seek(file, at, libc::SEEK_DATA)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = crate::sys::seek(file, data, libc::SEEK_HOLE)?
            .unwrap_or(end)
            .min(end);
        let start = data - data % PAGE_SIZE_U64;
        let stop = hole.div_ceil(PAGE_SIZE_U64) * PAGE_SIZE_U64;
        let stop = stop.min(end);
        match out.last_mut() {
            Some((s, l)) if *s + *l >= start => *l = stop.max(*s + *l) - *s,
            _ => out.push((start.max(offset), stop - start.max(offset))),
        }
        at = stop.max(hole);
    }
    Ok(out)
}
