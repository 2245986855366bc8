//! Errors of the copy-on-write memory operations.

/// A copy-on-write memory operation that failed; each names the system call.
#[derive(Debug, thiserror::Error)]
pub enum CowError {
    /// `memfd_create`, `ftruncate` or sealing a layer failed.
    #[error("cannot create a memory layer: {0}")]
    CreateLayer(#[source] std::io::Error),
    /// Copying pages into a layer failed.
    #[error("cannot copy {pages} pages into a memory layer: {source}")]
    CopyPages {
        /// Pages in the run being copied.
        pages: u64,
        /// Underlying error.
        source: std::io::Error,
    },
    /// `mmap` failed.
    #[error("cannot map {len} bytes of guest memory: {source}")]
    Map {
        /// Bytes asked for.
        len: u64,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Opening `/proc/self/pagemap` or its `PAGEMAP_SCAN` failed.
    #[error("cannot scan the page table (PAGEMAP_SCAN, Linux 6.7+): {0}")]
    Scan(#[source] std::io::Error),
    /// Write tracking (userfaultfd asynchronous write-protection, Linux 6.7+) could not start.
    #[error("cannot track writes to guest memory (userfaultfd WP_ASYNC): {0}")]
    Track(#[source] std::io::Error),
    /// A size or range is not page aligned or does not fit the layer.
    #[error("{0}")]
    Range(&'static str),
}
