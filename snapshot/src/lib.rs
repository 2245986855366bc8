//! Zygote's snapshot format and memory engines.
//!
//! - [`format`]: the state file container (magic, format version, sections with length and
//!   crc32, size caps checked before allocation), the postcard codec for section payloads, and
//!   the atomic file writer every file of a snapshot goes through.
//! - [`memory`]: the guest RAM layout, page bitmaps, snapshot ids, and the memory images (raw
//!   sparse full image, zstd-compressed chunked image, diff image, merge), read back through one
//!   [`PageSource`].
//! - [`engine`]: the [`MemoryEngine`] trait through which a restore obtains the restored VM's
//!   guest memory, and the engines this crate ships (eager, mmap, userfaultfd, prefetch and
//!   Firecracker's external page-server protocol).
//!
//! The crate never imports the VMM: the VMM hands it plain data and file descriptors.

#![deny(missing_docs)]

pub mod engine;
pub mod format;
pub mod memory;
mod sys;

pub use engine::{
    EagerEngine, EngineError, EngineService, EngineStats, FailureSink, FirecrackerUffdEngine,
    Mapping, MemoryEngine, MmapEngine, PrefetchEngine, RestoredMemory, StatsCounters, UffdEngine,
    WorkingSet,
};
pub use format::{SectionId, StateFile, StateFileError, StateFileWriter, WriteError};
pub use memory::{
    ImageError, LayoutError, MemoryLayout, PageBitmap, PageSource, RamRange, SnapshotId, PAGE_SIZE,
};
