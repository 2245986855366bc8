//! Errors of writing and reading memory images.

use std::path::PathBuf;

use crate::format::{StateFileError, WriteError};
use crate::memory::SnapshotId;

/// A memory image could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Writing the image failed; nothing was left at its path ([`WriteError::is_storage_full`]
    /// tells a full disk).
    #[error("writing memory image")]
    Write(#[from] WriteError),
    /// Reading the image failed.
    #[error("reading memory image {path}")]
    Io {
        /// The image.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The image is shorter than the layout needs: refused before it is mapped or read.
    #[error("memory image {path} is {len} bytes, the layout needs {need}")]
    TooShort {
        /// The image.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// Bytes the layout needs.
        need: u64,
    },
    /// The image's header (a state-file container) is corrupt.
    #[error("memory image {path} header")]
    Header {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: StateFileError,
    },
    /// The image describes another layout than the one restoring.
    #[error("memory image {path} was made for another memory layout")]
    LayoutMismatch {
        /// The image.
        path: PathBuf,
    },
    /// The image is not of the kind expected.
    #[error("memory image {path} is not a {expected} image")]
    WrongKind {
        /// The image.
        path: PathBuf,
        /// The kind expected.
        expected: &'static str,
    },
    /// A diff does not apply on top of the image before it in the chain.
    #[error("diff {path} has parent {found}, the chain before it is {expected}")]
    WrongParent {
        /// The diff.
        path: PathBuf,
        /// Its parent id.
        found: SnapshotId,
        /// The id of the image before it.
        expected: SnapshotId,
    },
    /// A chunk index entry points outside the file, or is malformed.
    #[error("memory image {path}: chunk {chunk} is out of bounds or malformed")]
    BadChunk {
        /// The image.
        path: PathBuf,
        /// Chunk number.
        chunk: u64,
    },
    /// A chunk does not decompress to its size.
    #[error("memory image {path}: chunk {chunk} does not decompress")]
    Decompress {
        /// The image.
        path: PathBuf,
        /// Chunk number.
        chunk: u64,
    },
    /// A page number past the layout was asked for.
    #[error("pages {first}..{end} are outside the layout of {pages} pages")]
    OutOfRange {
        /// First page asked.
        first: u64,
        /// One past the last page asked.
        end: u64,
        /// Pages in the layout.
        pages: u64,
    },
    /// The guest memory handed to a writer does not cover the layout.
    #[error("guest memory does not cover range {index} of the layout")]
    MemoryNotCovered {
        /// Index of the range.
        index: usize,
    },
}
