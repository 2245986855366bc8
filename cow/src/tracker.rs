//! Which pages of a range were written since a point in time, tracked by the kernel:
//! userfaultfd write-protection in asynchronous mode (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7+) and
//! `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING`, which reads the written pages and protects them
//! again in one call (`Documentation/admin-guide/mm/pagemap.rst`, `userfaultfd.rst`).
//!
//! Every write counts, whoever makes it: the guest's (KVM faults the page in for writing
//! through the same page tables) and the VMM's device threads' alike, so a diff snapshot built
//! from it misses nothing. No write ever waits for this process: the kernel resolves the
//! write-protect fault itself and only marks the page.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use crate::error::CowError;
use crate::pagemap::{scan_written, PageRegion};
use crate::runs::{PageRun, PAGE_SIZE};

const UFFD_API: u64 = 0xaa;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

const fn iowr(nr: u64, size: usize) -> libc::c_ulong {
    ((3u64 << 30) | ((size as u64) << 16) | (0xaa << 8) | nr) as libc::c_ulong
}

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

const UFFDIO_API: libc::c_ulong = iowr(0x3f, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: libc::c_ulong = iowr(0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_WRITEPROTECT: libc::c_ulong = iowr(0x06, std::mem::size_of::<UffdioWriteprotect>());

/// Tracks the pages written in `[addr, addr + len)`. Dropping it stops tracking (closing the
/// userfaultfd unregisters the range).
#[derive(Debug)]
pub struct WriteTracker {
    uffd: File,
    addr: u64,
    len: u64,
}

fn ioctl<T>(fd: &File, request: libc::c_ulong, arg: &mut T) -> Result<(), CowError> {
    // SAFETY: `arg` is the struct `request` expects, valid for reads and writes for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
    if ret < 0 {
        Err(CowError::Track(std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

impl WriteTracker {
    /// Starts tracking writes to the mapping `[addr, addr + len)` (page aligned) from now on.
    /// Costs one pass over the range's page tables (write-protecting what is mapped).
    ///
    /// # Errors
    /// [`CowError::Track`] if the kernel lacks asynchronous write-protection or the range is
    /// already registered with another userfaultfd (a lazily restored VM's memory).
    pub fn start(addr: u64, len: u64) -> Result<Self, CowError> {
        if !addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(CowError::Range("a tracked range must be page aligned"));
        }
        // SAFETY: userfaultfd(2) with valid flags; the result is checked.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(CowError::Track(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let uffd = unsafe { File::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC
                | UFFD_FEATURE_WP_HUGETLBFS_SHMEM
                | UFFD_FEATURE_WP_UNPOPULATED,
            ioctls: 0,
        };
        ioctl(&uffd, UFFDIO_API, &mut api)?;
        let mut register = UffdioRegister {
            range: UffdioRange { start: addr, len },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        ioctl(&uffd, UFFDIO_REGISTER, &mut register)?;
        let tracker = Self { uffd, addr, len };
        tracker.protect()?;
        Ok(tracker)
    }

    fn protect(&self) -> Result<(), CowError> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange {
                start: self.addr,
                len: self.len,
            },
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        ioctl(&self.uffd, UFFDIO_WRITEPROTECT, &mut wp)
    }

    /// The pages written since tracking started or since the last call (page indices relative
    /// to the range), and starts a new period: reading and re-protecting is one atomic call.
    ///
    /// # Errors
    /// [`CowError::Scan`] if `PAGEMAP_SCAN` fails.
    pub fn take_written(&self) -> Result<Vec<PageRun>, CowError> {
        let mut runs: Vec<PageRun> = Vec::new();
        scan_written(self.addr, self.len, |region: &PageRegion| {
            let run = PageRun {
                start: (region.start - self.addr) / PAGE_SIZE,
                count: (region.end - region.start) / PAGE_SIZE,
            };
            match runs.last_mut() {
                Some(last) if last.end() == run.start => last.count += run.count,
                _ => runs.push(run),
            }
        })?;
        Ok(runs)
    }
}
