//! Mapping a view into one contiguous range of the process.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::error::CowError;
use crate::runs::{PageRun, PAGE_SIZE};
use crate::view::View;

/// A view mapped `MAP_PRIVATE` at one address range: the base over the whole range, each
/// layered run over its pages. Unmapped when dropped.
#[derive(Debug)]
pub struct CowMapping {
    addr: *mut u8,
    size: u64,
    view: Arc<View>,
}

// SAFETY: the mapping is plain memory owned by this value; the raw pointer is only an address.
unsafe impl Send for CowMapping {}
// SAFETY: shared references only hand out the address; writes go through the guest-memory
// types built over it, which synchronize as guest memory always does.
unsafe impl Sync for CowMapping {}

impl CowMapping {
    /// Maps `view`: one `mmap` of the base plus one per layered run.
    ///
    /// # Errors
    /// [`CowError::Map`] if the address space is exhausted or the kernel refuses a mapping.
    pub fn map(view: Arc<View>) -> Result<Self, CowError> {
        let size = view.size();
        let len = usize::try_from(size)
            .map_err(|_| CowError::Range("memory larger than the address space"))?;
        let base = view
            .layers()
            .first()
            .ok_or(CowError::Range("a view without a base"))?;
        // SAFETY: a fresh mapping at an address the kernel picks; no existing memory is touched.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                base.file().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(CowError::Map {
                len: size,
                source: std::io::Error::last_os_error(),
            });
        }
        let mapping = Self {
            addr: addr.cast(),
            size,
            view,
        };
        let runs: Vec<(PageRun, usize)> = mapping.view.runs().to_vec();
        for (run, layer) in runs {
            mapping.map_run(run, layer)?;
        }
        Ok(mapping)
    }

    /// Maps `view` over `addr..addr + view.size()`, a range the caller reserved (a
    /// `PROT_NONE` mapping, say, that a pre-created VM's memory slots already point at), and
    /// takes it over: the range is unmapped when the returned mapping drops.
    ///
    /// # Safety
    /// The caller owns that range, nothing else uses or unmaps it, and it hands it over here.
    pub unsafe fn map_fixed(view: Arc<View>, addr: *mut u8) -> Result<Self, CowError> {
        let mapping = Self {
            addr,
            size: view.size(),
            view,
        };
        let whole = PageRun {
            start: 0,
            count: mapping.size / PAGE_SIZE,
        };
        mapping.map_run(whole, 0)?;
        let runs: Vec<(PageRun, usize)> = mapping.view.runs().to_vec();
        for (run, layer) in runs {
            mapping.map_run(run, layer)?;
        }
        Ok(mapping)
    }

    /// Replaces `runs` of this mapping with the pages of `view`'s layer `layer` (dropping this
    /// mapping's own copies of them) and adopts `view`, which must be this mapping's view with
    /// that layer added. Used on a parent after its writes were frozen into a new layer.
    pub fn adopt(
        &mut self,
        view: Arc<View>,
        layer: usize,
        runs: &[PageRun],
    ) -> Result<(), CowError> {
        self.view = view;
        for run in runs {
            self.map_run(*run, layer)?;
        }
        Ok(())
    }

    fn map_run(&self, run: PageRun, layer: usize) -> Result<(), CowError> {
        let (offset, len) = (run.start * PAGE_SIZE, run.count * PAGE_SIZE);
        if offset + len > self.size {
            return Err(CowError::Range("a layered run lies past the end of memory"));
        }
        let file = self
            .view
            .layers()
            .get(layer)
            .ok_or(CowError::Range("no such layer"))?
            .file();
        // SAFETY: the target range lies inside this mapping (checked above), which this value
        // owns; MAP_FIXED replaces only our own pages there.
        let addr = unsafe {
            libc::mmap(
                self.addr.add(offset as usize).cast(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(CowError::Map {
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The start of the mapping.
    pub fn addr(&self) -> *mut u8 {
        self.addr
    }

    /// Its length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The view it maps (what it looked like when mapped; its own writes are on top).
    pub fn view(&self) -> &Arc<View> {
        &self.view
    }
}

impl Drop for CowMapping {
    fn drop(&mut self) {
        // SAFETY: `addr..addr + size` is the mapping this value made and owns; nothing else
        // uses it once the value is dropped.
        unsafe { libc::munmap(self.addr.cast(), self.size as usize) };
    }
}
