//! Which pages of a mapping a VM has written, and how much of its memory is its own, read
//! from the kernel's page tables with `PAGEMAP_SCAN` (Linux 6.7+, `fs/proc/task_mmu.c`).
//!
//! In a `MAP_PRIVATE` file mapping a page the process wrote is an anonymous copy; a page it
//! only read is the file's (shared) page; a page it never touched is not present.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::error::CowError;
use crate::runs::{PageRun, PAGE_SIZE};

const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// `struct page_region` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct PageRegion {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) categories: u64,
}

const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct pm_scan_arg` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = (3 << 30)
    | ((std::mem::size_of::<PmScanArg>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 16;

/// Regions asked for per ioctl.
const BATCH: usize = 512;

/// Calls `each(start, end, categories)` for every region of `[addr, addr + len)` whose pages
/// have all `mask` categories after inverting `inverted` ones.
fn scan(
    addr: u64,
    len: u64,
    inverted: u64,
    mask: u64,
    each: impl FnMut(u64, u64, u64),
) -> Result<(), CowError> {
    scan_with(
        addr,
        len,
        0,
        inverted,
        mask,
        PAGE_IS_FILE | PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        each,
    )
}

/// Calls `each` for every region of `[addr, addr + len)` written since it was last
/// write-protected through a userfaultfd in asynchronous mode, and protects them again.
pub(crate) fn scan_written(
    addr: u64,
    len: u64,
    mut each: impl FnMut(&PageRegion),
) -> Result<(), CowError> {
    scan_with(
        addr,
        len,
        PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        0,
        PAGE_IS_WRITTEN,
        PAGE_IS_WRITTEN,
        |start, end, categories| {
            each(&PageRegion {
                start,
                end,
                categories,
            })
        },
    )
}

fn scan_with(
    addr: u64,
    len: u64,
    flags: u64,
    inverted: u64,
    mask: u64,
    return_mask: u64,
    mut each: impl FnMut(u64, u64, u64),
) -> Result<(), CowError> {
    let pagemap = File::open("/proc/self/pagemap").map_err(CowError::Scan)?;
    let mut regions = vec![PageRegion::default(); BATCH];
    let end = addr + len;
    let mut start = addr;
    while start < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags,
            start,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: BATCH as u64,
            category_inverted: inverted,
            category_mask: mask,
            return_mask,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `BATCH` writable
        // page_region entries that outlive the call; the kernel writes at most `vec_len`.
        let found = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if found < 0 {
            return Err(CowError::Scan(std::io::Error::last_os_error()));
        }
        for region in &regions[..found as usize] {
            each(region.start, region.end, region.categories);
        }
        if arg.walk_end <= start {
            break;
        }
        start = arg.walk_end;
    }
    Ok(())
}

/// The runs of pages of `[addr, addr + len)` that this process has written in a `MAP_PRIVATE`
/// mapping (its anonymous copies), as page indices relative to `addr`.
///
/// # Errors
/// [`CowError::Scan`] if the kernel has no `PAGEMAP_SCAN`.
pub fn dirty_runs(addr: u64, len: u64) -> Result<Vec<PageRun>, CowError> {
    let mut runs: Vec<PageRun> = Vec::new();
    // Present (in memory or swapped) and not a file page.
    scan(
        addr,
        len,
        PAGE_IS_FILE,
        PAGE_IS_FILE,
        |start, end, categories| {
            if categories & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) == 0 {
                return;
            }
            let run = PageRun {
                start: (start - addr) / PAGE_SIZE,
                count: (end - start) / PAGE_SIZE,
            };
            match runs.last_mut() {
                Some(last) if last.end() == run.start => last.count += run.count,
                _ => runs.push(run),
            }
        },
    )?;
    Ok(runs)
}

/// How much of a VM's memory is its own and how much it shares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Bytes of pages only this mapping holds (its writes: anonymous copies, or the pages of a
    /// `MAP_SHARED` memfd it alone maps).
    pub private_bytes: u64,
    /// Bytes of file pages it maps and may share with other VMs mapping the same layers.
    pub shared_bytes: u64,
}

/// Counts the present pages of `[addr, addr + len)`: anonymous ones as private, file ones as
/// shared.
///
/// # Errors
/// [`CowError::Scan`] if the kernel has no `PAGEMAP_SCAN`.
pub fn usage(addr: u64, len: u64) -> Result<MemoryUsage, CowError> {
    let mut usage = MemoryUsage::default();
    scan(addr, len, 0, PAGE_IS_PRESENT, |start, end, categories| {
        if categories & PAGE_IS_FILE != 0 {
            usage.shared_bytes += end - start;
        } else {
            usage.private_bytes += end - start;
        }
    })?;
    Ok(usage)
}
