//! Atomic file writes: a temporary name in the same directory, fsync, rename, fsync the
//! directory. A crash or a full disk never leaves something that looks like the target.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// A file could not be written. Nothing was left at the target path or beside it.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// An I/O error on `path` (the temporary file, the target or its directory).
    #[error("writing {path}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl WriteError {
    /// True when the write failed because the file system is full (`ENOSPC`, `EDQUOT`): the
    /// caller can free space and retry; the VM it was saving is untouched.
    pub fn is_storage_full(&self) -> bool {
        let WriteError::Io { source, .. } = self;
        matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ) || matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        )
    }

    /// The underlying OS error.
    pub fn io_error(&self) -> &io::Error {
        let WriteError::Io { source, .. } = self;
        source
    }
}

/// Writes `path` atomically: `fill` writes the content into a new temporary file beside
/// `path`, which is then fsynced and renamed over `path`, and the directory is fsynced.
///
/// # Errors
/// [`WriteError::Io`] from `fill` or any step; the temporary file is removed first.
pub fn write_atomic<F>(path: &Path, fill: F) -> Result<(), WriteError>
where
    F: FnOnce(&mut File) -> io::Result<()>,
{
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| WriteError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:x}",
        name.to_string_lossy(),
        std::process::id(),
        crate::sys::random_u64()
    ));
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| WriteError::Io { path: p, source }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    let result = fill(&mut file)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp));
    drop(file);
    let result = result.and_then(|()| std::fs::rename(&tmp, path).map_err(io_err(path)));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&dir))
}
