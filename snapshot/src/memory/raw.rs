//! The raw full image: a sparse byte-for-byte copy of the memfd, zero pages as holes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::{
    page_is_zero, GuestRamReader, ImageError, MemoryLayout, PageBitmap, WriteStats, PAGE_SIZE,
    PAGE_SIZE_U64,
};
use crate::format::write_atomic;

/// Longest run written with one `pwrite`, in pages (2 MiB).
pub const MAX_RUN_PAGES: u64 = 512;

/// Writes a raw full image of `mem` at `path`, atomically. The file is exactly
/// `layout.size()` bytes; all-zero pages (and ranges `mem` reports as never written) are holes.
///
/// The VM must be paused for the duration (see [`GuestRamReader`]).
///
/// # Errors
/// [`ImageError::MemoryNotCovered`] if `mem` lacks a range; [`ImageError::Write`] for any
/// I/O error (a full disk included), with nothing left at `path`.
pub fn write_raw<R: GuestRamReader + ?Sized>(
    mem: &R,
    layout: &MemoryLayout,
    path: &Path,
) -> Result<WriteStats, ImageError> {
    let bases = host_bases(mem, layout)?;
    let mut stats = WriteStats::default();
    write_atomic(path, |file| {
        file.set_len(layout.size())?;
        for_each_data_run(mem, layout, &bases, None, |offset, ptr, len| {
            pwrite_all(file, ptr, len, offset)?;
            stats.data_pages += len as u64 / PAGE_SIZE_U64;
            stats.bytes_written += len as u64;
            Ok(())
        })
    })?;
    Ok(stats)
}

/// The host base address of every range of `layout` in `mem`.
pub(crate) fn host_bases<R: GuestRamReader + ?Sized>(
    mem: &R,
    layout: &MemoryLayout,
) -> Result<Vec<*const u8>, ImageError> {
    (0..layout.ranges().len())
        .map(|i| mem.host_addr(layout, i))
        .collect()
}

/// Calls `f(image_offset, host_ptr, len)` for every run of non-zero pages of `mem` (restricted
/// to the pages of `only` when given), runs at most [`MAX_RUN_PAGES`] long.
pub(crate) fn for_each_data_run<R, F>(
    mem: &R,
    layout: &MemoryLayout,
    bases: &[*const u8],
    only: Option<&PageBitmap>,
    mut f: F,
) -> io::Result<()>
where
    R: GuestRamReader + ?Sized,
    F: FnMut(u64, *const u8, usize) -> io::Result<()>,
{
    for (range, &base) in layout.ranges().iter().zip(bases) {
        for (ext_off, ext_len) in mem.data_extents(range.offset, range.len)? {
            let mut run: Option<(u64, u64)> = None; // (first image offset, pages)
            let mut page_off = ext_off;
            while page_off < ext_off + ext_len {
                let page = page_off / PAGE_SIZE_U64;
                // SAFETY: `page_off` lies in `range` (extents are clipped to it) and `base` is
                // valid for `range.len` bytes; guest memory is page-aligned.
                let ptr = unsafe { base.add((page_off - range.offset) as usize) };
                let wanted = only.is_none_or(|b| b.get(page));
                // SAFETY: `ptr` is valid for PAGE_SIZE reads and page-aligned (see above).
                let data = wanted && !unsafe { page_is_zero(ptr) };
                match (&mut run, data) {
                    (Some((_, n)), true) if *n < MAX_RUN_PAGES => *n += 1,
                    (r, true) => {
                        if let Some((o, n)) = r.take() {
                            emit(&mut f, range.offset, base, o, n)?;
                        }
                        *r = Some((page_off, 1));
                    }
                    (r, false) => {
                        if let Some((o, n)) = r.take() {
                            emit(&mut f, range.offset, base, o, n)?;
                        }
                    }
                }
                page_off += PAGE_SIZE_U64;
            }
            if let Some((o, n)) = run {
                emit(&mut f, range.offset, base, o, n)?;
            }
        }
    }
    Ok(())
}

fn emit<F>(f: &mut F, range_offset: u64, base: *const u8, offset: u64, pages: u64) -> io::Result<()>
where
    F: FnMut(u64, *const u8, usize) -> io::Result<()>,
{
    // SAFETY: `offset` lies in the range starting at `range_offset`, mapped at `base`.
    let ptr = unsafe { base.add((offset - range_offset) as usize) };
    f(offset, ptr, (pages as usize) * PAGE_SIZE)
}

/// `pwrite` all of `len` bytes at `ptr` to `file` at `offset`.
pub(crate) fn pwrite_all(file: &File, ptr: *const u8, len: usize, offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < len {
        // SAFETY: `ptr` is valid for `len` reads (caller's contract); the kernel copies from it.
        let n = unsafe {
            libc::pwrite(
                file.as_raw_fd(),
                ptr.add(done).cast(),
                len - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        done += n as usize;
    }
    Ok(())
}

/// `pread` exactly `buf.len()` bytes at `offset`; an early end of file is `UnexpectedEof`.
pub(crate) fn pread_exact(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}
