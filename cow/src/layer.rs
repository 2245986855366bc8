//! A frozen layer: a sparse memfd holding some pages of guest memory at their own offsets.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use crate::error::CowError;
use crate::runs::{PageRun, PAGE_SIZE};

/// Pages frozen at a fork: nothing writes the memfd once the layer exists, so every VM whose
/// view includes it can map it privately.
#[derive(Debug)]
pub struct Layer {
    file: File,
    runs: Vec<PageRun>,
}

impl Layer {
    /// A layer over a memfd already holding `runs` (the whole file, for a base).
    ///
    /// The caller promises nothing writes `file` any more; its size is sealed here so a
    /// mapping of it can never fault with `SIGBUS`.
    pub fn from_file(file: File, runs: Vec<PageRun>) -> Self {
        // Sealing can fail on a file created without MFD_ALLOW_SEALING; the VMM's memfds allow
        // it, and a shrink is then still impossible because nothing else holds the fd.
        // SAFETY: F_ADD_SEALS on an fd we own, with valid seal flags.
        let _ = unsafe {
            libc::fcntl(
                file.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            )
        };
        Self { file, runs }
    }

    /// Copies `runs` (page indices) of the `size`-byte mapping at `src` into a new sparse memfd
    /// of `size` bytes, at the same offsets.
    ///
    /// # Safety
    /// `src..src + size` must be readable for the duration of the call, and nothing may
    /// write the pages in `runs` meanwhile (the VM is paused).
    pub unsafe fn freeze(src: *const u8, size: u64, runs: Vec<PageRun>) -> Result<Self, CowError> {
        let file = create_memfd(size)?;
        for run in &runs {
            let (offset, len) = (run.start * PAGE_SIZE, run.count * PAGE_SIZE);
            if offset + len > size {
                return Err(CowError::Range("a dirty run lies past the end of memory"));
            }
            // SAFETY: the caller guarantees `src..src + size` is readable and still; the run
            // lies inside it (checked above).
            let bytes =
                unsafe { std::slice::from_raw_parts(src.add(offset as usize), len as usize) };
            write_all_at(&file, bytes, offset).map_err(|source| CowError::CopyPages {
                pages: run.count,
                source,
            })?;
        }
        Ok(Self::from_file(file, runs))
    }

    /// The memfd.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The pages the layer holds.
    pub fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    /// Bytes of guest memory the layer holds.
    pub fn bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.count * PAGE_SIZE).sum()
    }
}

fn write_all_at(file: &File, mut bytes: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    while !bytes.is_empty() {
        let n = file.write_at(bytes, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
        offset += n as u64;
    }
    Ok(())
}

/// A sealable memfd of `size` bytes.
pub(crate) fn create_memfd(size: u64) -> Result<File, CowError> {
    let name = c"zygote-cow-layer";
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid for memfd_create.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(CowError::CreateLayer(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(CowError::CreateLayer)?;
    Ok(file)
}
