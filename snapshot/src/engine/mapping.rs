//! An owned host memory mapping.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// A host mapping owned by its value: `munmap` on drop.
#[derive(Debug)]
pub struct Mapping {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is no more thread-bound than a
// Vec. Concurrent access through the raw pointer is the users' business (guest memory is
// shared between vCPU threads by design).
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` only exposes the address and length.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` from offset 0.
    ///
    /// # Errors
    /// The `mmap` error.
    pub fn map_file(file: &File, len: u64, prot: i32, flags: i32) -> io::Result<Self> {
        Self::map(Some(file), len, prot, flags)
    }

    /// Maps `len` bytes of anonymous memory (`MAP_ANONYMOUS` is added to `flags`).
    ///
    /// # Errors
    /// The `mmap` error.
    pub fn map_anonymous(len: u64, prot: i32, flags: i32) -> io::Result<Self> {
        Self::map(None, len, prot, flags | libc::MAP_ANONYMOUS)
    }

    fn map(file: Option<&File>, len: u64, prot: i32, flags: i32) -> io::Result<Self> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let fd = file.map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED), so no existing memory
        // is affected; the result is checked.
        let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr =
            NonNull::new(addr.cast()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Mapping { addr, len })
    }

    /// Takes ownership of an existing mapping.
    ///
    /// # Safety
    /// `addr .. addr + len` must be a mapping that nothing else unmaps, and that no one uses
    /// after this value is dropped.
    pub unsafe fn from_raw(addr: NonNull<u8>, len: usize) -> Self {
        Mapping { addr, len }
    }

    /// First byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (a mapping is never empty).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own `addr .. addr + len` (constructor contracts) and nobody uses it now.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}
