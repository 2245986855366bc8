//! Engine errors.

use crate::memory::{ImageError, ImageKind};

/// Why an engine could not restore memory, or stopped serving it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Reading the page source failed.
    #[error("page source failed")]
    Source(#[from] ImageError),
    /// The engine needs a single raw full image.
    #[error("the {engine} engine needs a raw full image, not {kind:?}: merge or decompress first (memory::merge::merge_to_raw)")]
    NeedsRawImage {
        /// The engine.
        engine: &'static str,
        /// The kind offered.
        kind: ImageKind,
    },
    /// The source was opened for another layout than the one restoring.
    #[error("the page source was opened for another layout")]
    LayoutMismatch,
    /// A system call failed.
    #[error("{op} failed")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A userfaultfd operation failed.
    #[error("userfaultfd: {op}")]
    Userfaultfd {
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: userfaultfd::Error,
    },
    /// A working-set file is corrupt.
    #[error("working-set file {path}")]
    WorkingSetFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        #[source]
        source: crate::format::StateFileError,
    },
    /// The external page server misbehaved or went away.
    #[error("page server")]
    PageServer(#[from] super::firecracker::PageServerError),
    /// Writing the working-set file failed.
    #[error("writing the working set")]
    WorkingSet(#[from] crate::format::WriteError),
}

impl EngineError {
    pub(crate) fn os(op: &'static str) -> impl FnOnce(std::io::Error) -> EngineError {
        move |source| EngineError::Os { op, source }
    }

    pub(crate) fn uffd(op: &'static str) -> impl FnOnce(userfaultfd::Error) -> EngineError {
        move |source| EngineError::Userfaultfd { op, source }
    }
}
