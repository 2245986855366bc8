//! The mmap engine: the raw image mapped privately.

use super::{EngineError, FailureSink, Mapping, MemoryEngine, RestoredMemory};
use crate::memory::{MemoryLayout, PageSource};

/// Maps the raw full image `MAP_PRIVATE | MAP_NORESERVE`: pages come from the page cache on
/// first touch, writes are copied on write, and many restores of one snapshot share the
/// pages they only read. Restore costs one `mmap`.
///
/// The image must be a single raw full image ([`EngineError::NeedsRawImage`] otherwise:
/// merge or decompress with [`crate::memory::merge::merge_to_raw`]). Its length was checked
/// at open; the image must not be truncated while a VM maps it (the VMM would get SIGBUS on
/// the next touch of a page past the new end, which no engine can turn into an error; write
/// snapshots to new files, never over a mapped one).
#[derive(Debug, Default, Clone)]
pub struct MmapEngine;

impl MmapEngine {
    /// The engine.
    pub fn new() -> Self {
        MmapEngine
    }
}

impl MemoryEngine for MmapEngine {
    fn name(&self) -> &str {
        "mmap"
    }

    fn restore(
        &mut self,
        source: PageSource,
        layout: &MemoryLayout,
        _on_failure: FailureSink,
    ) -> Result<RestoredMemory, EngineError> {
        if source.layout() != layout {
            return Err(EngineError::LayoutMismatch);
        }
        let (file, _) = source.raw_file().ok_or(EngineError::NeedsRawImage {
            engine: "mmap",
            kind: source.kind(),
        })?;
        let mapping = Mapping::map_file(
            file,
            layout.size(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(EngineError::os("mmap image"))?;
        Ok(RestoredMemory {
            mapping,
            memfd: None,
            service: None,
        })
    }
}
