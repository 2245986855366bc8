//! The fault-serving core shared by the uffd, prefetch and Firecracker-protocol engines.
//!
//! A handler owns a [`PageSource`] and a userfaultfd registered (MISSING mode) over one or more
//! host regions, each mapping a span of image offsets. On a fault it reads the faulting page and
//! up to `neighbours` following pages that were not served yet, and places them with
//! `UFFDIO_ZEROPAGE` (all-zero runs) or `UFFDIO_COPY` (the rest), waking the faulting thread.
//! `EEXIST` (a page already there) falls back to page by page and a wake; `EAGAIN` retries.
//!
//! On a source error the handler calls the failure sink once, then unregisters every region,
//! which wakes all blocked faulting threads; later faults are ordinary (zero-filled) faults.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use userfaultfd::{Event, Uffd};

use super::{EngineError, FailureSink, Mapping, StatsCounters};
use crate::memory::ImageError;
use crate::memory::{is_zero, PageBitmap, PageSource, PAGE_SIZE, PAGE_SIZE_U64};

/// One registered host region: `size` bytes at `host` hold image bytes from `offset`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    pub host: usize,
    pub size: u64,
    pub offset: u64,
}

/// Fault-serving state, run on its own thread by [`Handler::run`].
pub(crate) struct Handler {
    pub uffd: Uffd,
    pub regions: Vec<Region>,
    pub source: PageSource,
    /// Pages placed so far (shared with a prefetch recorder).
    pub served: Arc<Mutex<PageBitmap>>,
    pub neighbours: u64,
    pub counters: Arc<StatsCounters>,
    pub on_failure: Option<FailureSink>,
    pub zeropage: bool,
    pub buf: Vec<u8>,
    /// A read-only shared mapping of the raw image when the source is one: pages are copied
    /// straight from it (no `pread`, no staging buffer). A truncated image makes the copy fail
    /// with `EFAULT` (the kernel's access, never a SIGBUS in the handler).
    pub direct: Option<Mapping>,
    /// Host address of the stop page (see [`Handler::run_blocking`]), unregistered with the
    /// regions on failure.
    pub stop_page: Option<usize>,
}

/// Why the handler loop ended.
pub(crate) enum Exit {
    Stopped,
    Failed,
}

impl Handler {
    /// Serves faults until `stop` becomes readable (an eventfd signalled, a socket closed by
    /// its peer) or serving fails.
    pub(crate) fn run(mut self, stop: &impl AsRawFd) -> Exit {
        let fds = [self.uffd.as_raw_fd(), stop.as_raw_fd()];
        let mut events = userfaultfd::EventBuffer::new(16);
        loop {
            let revents = match crate::sys::poll_readable(&fds, -1) {
                Ok(r) => r,
                Err(source) => {
                    return self.fail(EngineError::Os {
                        op: "poll userfaultfd",
                        source,
                    })
                }
            };
            if revents[1] != 0 {
                return Exit::Stopped;
            }
            if revents[0] & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                return self.fail(EngineError::Os {
                    op: "poll userfaultfd",
                    source: std::io::Error::from(std::io::ErrorKind::BrokenPipe),
                });
            }
            // One batch per wake-up: poll again rather than read until EAGAIN, which saves a
            // syscall per fault when faults come one at a time (the common case).
            let batch: Vec<_> = match self.uffd.read_events(&mut events) {
                Ok(iter) => iter.collect(),
                Err(source) => {
                    return self.fail(EngineError::Userfaultfd {
                        op: "read events",
                        source,
                    })
                }
            };
            for event in batch {
                match event {
                    Ok(Event::Pagefault { addr, .. }) => {
                        if let Err(e) = self.serve(addr as usize) {
                            return self.fail(e);
                        }
                    }
                    Ok(_) => {}
                    Err(source) => {
                        return self.fail(EngineError::Userfaultfd {
                            op: "read event",
                            source,
                        })
                    }
                }
            }
        }
    }

    /// Serves faults with blocking reads (one syscall per wake-up fewer than
    /// [`Handler::run`]) until the stop page faults: the stopping thread reads the stop page,
    /// a one-page mapping registered on the same userfaultfd, and the handler answers that
    /// fault with a zero page and returns. The userfaultfd must be blocking and owned by this
    /// process alone.
    pub(crate) fn run_blocking(mut self) -> Exit {
        let mut events = userfaultfd::EventBuffer::new(16);
        loop {
            let batch: Vec<_> = match self.uffd.read_events(&mut events) {
                Ok(iter) => iter.collect(),
                Err(source) => {
                    return self.fail(EngineError::Userfaultfd {
                        op: "read events",
                        source,
                    })
                }
            };
            for event in batch {
                match event {
                    Ok(Event::Pagefault { addr, .. }) => {
                        let addr = addr as usize;
                        if let Some(stop) = self
                            .stop_page
                            .filter(|&s| addr >= s && addr < s + PAGE_SIZE)
                        {
                            // SAFETY: the stop page is registered with this uffd and ours.
                            let _ = unsafe {
                                self.uffd
                                    .zeropage(stop as *mut libc::c_void, PAGE_SIZE, true)
                            };
                            return Exit::Stopped;
                        }
                        if let Err(e) = self.serve(addr) {
                            return self.fail(e);
                        }
                    }
                    Ok(_) => {}
                    Err(source) => {
                        return self.fail(EngineError::Userfaultfd {
                            op: "read event",
                            source,
                        })
                    }
                }
            }
        }
    }

    /// Reports `err` once, then unregisters every region so no thread stays blocked.
    pub(crate) fn fail(&mut self, err: EngineError) -> Exit {
        if let Some(sink) = self.on_failure.take() {
            sink(err);
        }
        if let Some(stop) = self.stop_page {
            let _ = self.uffd.unregister(stop as *mut libc::c_void, PAGE_SIZE);
        }
        for r in &self.regions {
            let _ = self
                .uffd
                .unregister(r.host as *mut libc::c_void, r.size as usize);
        }
        Exit::Failed
    }

    fn locate(&self, addr: usize) -> Option<(Region, u64)> {
        self.regions
            .iter()
            .find(|r| addr >= r.host && ((addr - r.host) as u64) < r.size)
            .map(|r| (*r, (addr - r.host) as u64 / PAGE_SIZE_U64))
    }

    /// Serves the fault at host address `addr`.
    pub(crate) fn serve(&mut self, addr: usize) -> Result<(), EngineError> {
        StatsCounters::add(&self.counters.faults, 1);
        let Some((region, index)) = self.locate(addr) else {
            return Ok(());
        };
        let first = region.offset / PAGE_SIZE_U64 + index;
        let host = region.host + (index * PAGE_SIZE_U64) as usize;
        let region_end = region.offset / PAGE_SIZE_U64 + region.size / PAGE_SIZE_U64;
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        if served.get(first) {
            // Placed before and gone again (a hole punched): it reads as zero now.
            drop(served);
            return self.place(host, 1);
        }
        let mut end = first + 1;
        while end < region_end && end - first <= self.neighbours && !served.get(end) {
            end += 1;
        }
        served.set_range(first, end - first);
        drop(served);
        let n = (end - first) as usize;
        if let Some(direct) = &self.direct {
            let src = direct.as_ptr().wrapping_add(first as usize * PAGE_SIZE);
            // SAFETY: `first .. end` lies in the image (regions are checked against the layout
            // and the mapping covers it); a source page gone (truncation) makes the kernel's
            // copy fail with EFAULT rather than fault here.
            let data = unsafe { std::slice::from_raw_parts(src.cast_const(), n * PAGE_SIZE) };
            StatsCounters::add(&self.counters.pages_copied, n as u64);
            return self.copy(host, data).map_err(|e| match e {
                EngineError::Userfaultfd {
                    source: userfaultfd::Error::CopyFailed(errno),
                    ..
                } if errno as i32 == libc::EFAULT => EngineError::Source(ImageError::Io {
                    path: self
                        .source
                        .raw_file()
                        .map(|(_, p)| p.to_path_buf())
                        .unwrap_or_default(),
                    source: std::io::Error::from_raw_os_error(libc::EFAULT),
                }),
                other => other,
            });
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(n * PAGE_SIZE, 0);
        let read = self.source.read_pages(first, &mut buf[..n * PAGE_SIZE]);
        let result = read
            .map_err(EngineError::Source)
            .and_then(|()| self.place_runs(host, &buf[..n * PAGE_SIZE]));
        self.buf = buf;
        result
    }

    /// Places `data` (whole pages) at `host`, zero runs with ZEROPAGE and the rest with COPY.
    fn place_runs(&mut self, host: usize, data: &[u8]) -> Result<(), EngineError> {
        let pages: Vec<bool> = data.chunks(PAGE_SIZE).map(is_zero).collect();
        let mut i = 0;
        while i < pages.len() {
            let zero = pages[i];
            let mut j = i + 1;
            while j < pages.len() && pages[j] == zero {
                j += 1;
            }
            let at = host + i * PAGE_SIZE;
            if zero && self.zeropage {
                // Counted before placing: the wake lets readers look at the stats at once.
                StatsCounters::add(&self.counters.zero_pages, (j - i) as u64);
                self.place(at, (j - i) as u64)?;
            } else {
                StatsCounters::add(&self.counters.pages_copied, (j - i) as u64);
                self.copy(at, &data[i * PAGE_SIZE..j * PAGE_SIZE])?;
            }
            i = j;
        }
        Ok(())
    }

    /// `UFFDIO_ZEROPAGE` over `pages` pages at `host` (a zero COPY when the range does not
    /// support it), retrying after a partial fill (the kernel stops at a page already there
    /// and reports how far it got) and tolerating pages already there.
    fn place(&mut self, host: usize, pages: u64) -> Result<(), EngineError> {
        let len = pages as usize * PAGE_SIZE;
        if !self.zeropage {
            let zeros = vec![0u8; len];
            return self.copy(host, &zeros);
        }
        let mut done = 0usize;
        while done < len {
            let at = host + done;
            // SAFETY: `at .. host + len` lies in a region registered with this uffd; ZEROPAGE
            // only fills missing pages there.
            match unsafe {
                self.uffd
                    .zeropage(at as *mut libc::c_void, len - done, true)
            } {
                Ok(n) if n > 0 => done += n.min(len - done),
                Ok(_) => done += PAGE_SIZE,
                Err(userfaultfd::Error::ZeropageFailed(e)) if e as i32 == libc::EEXIST => {
                    // The page at `at` is there already: wake its waiters and go on.
                    self.uffd
                        .wake(at as *mut libc::c_void, PAGE_SIZE)
                        .map_err(EngineError::uffd("wake"))?;
                    done += PAGE_SIZE;
                }
                Err(userfaultfd::Error::ZeropageFailed(e)) if e as i32 == libc::EAGAIN => {}
                Err(source) => {
                    return Err(EngineError::Userfaultfd {
                        op: "zeropage",
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// `UFFDIO_COPY` of `data` to `host`, retrying after a partial copy (the kernel stops at a
    /// page already there and reports how far it got) and skipping pages already there.
    fn copy(&mut self, host: usize, data: &[u8]) -> Result<(), EngineError> {
        let mut done = 0usize;
        while done < data.len() {
            let at = host + done;
            let rest = &data[done..];
            // SAFETY: the destination lies in a registered region, the source is `rest.len()`
            // readable bytes; COPY only fills missing pages.
            match unsafe {
                self.uffd.copy(
                    rest.as_ptr().cast(),
                    at as *mut libc::c_void,
                    rest.len(),
                    true,
                )
            } {
                Ok(n) if n > 0 => done += n.min(rest.len()),
                Ok(_) => {
                    return Err(EngineError::Os {
                        op: "copy",
                        source: std::io::Error::from(std::io::ErrorKind::WriteZero),
                    })
                }
                Err(userfaultfd::Error::PartiallyCopied(n)) => done += n,
                Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EEXIST => {
                    // The page at `at` is there already: wake its waiters and go on.
                    self.uffd
                        .wake(at as *mut libc::c_void, PAGE_SIZE)
                        .map_err(EngineError::uffd("wake"))?;
                    done += PAGE_SIZE;
                }
                Err(source) => return Err(EngineError::Userfaultfd { op: "copy", source }),
            }
        }
        Ok(())
    }
}

/// A read-only shared mapping of `source`'s raw image for copying from directly, when the
/// source is a single raw image (`None` otherwise or if mapping fails: the handler reads).
pub(crate) fn direct_map(source: &PageSource) -> Option<Mapping> {
    let (file, _) = source.raw_file()?;
    Mapping::map_file(
        file,
        source.layout().size(),
        libc::PROT_READ,
        libc::MAP_SHARED,
    )
    .ok()
}

/// Creates a userfaultfd able to serve kernel-mode faults too (KVM touches guest memory from
/// the kernel), close-on-exec, blocking or not.
pub(crate) fn new_uffd(non_blocking: bool) -> Result<Uffd, EngineError> {
    userfaultfd::UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(non_blocking)
        .user_mode_only(false)
        .create()
        .map_err(EngineError::uffd("create"))
}

/// Registers `len` bytes at `host` in MISSING mode; returns whether ZEROPAGE is supported there.
pub(crate) fn register(uffd: &Uffd, host: *mut u8, len: usize) -> Result<bool, EngineError> {
    let ioctls = uffd
        .register(host.cast(), len)
        .map_err(EngineError::uffd("register"))?;
    Ok(ioctls.contains(userfaultfd::IoctlFlags::ZEROPAGE))
}
