//! The eager engine: every page is read into a fresh memfd before the VM runs.

use std::sync::Arc;

use super::{
    EngineError, EngineService, FailureSink, Mapping, MemoryEngine, RestoredMemory, StatsCounters,
};
use crate::memory::{MemoryLayout, PageSource};

/// Reads every present page of the source into a new sealed memfd (mapped shared) before
/// returning. Slowest to restore, no cost afterwards, no service.
#[derive(Debug, Default, Clone)]
pub struct EagerEngine;

impl EagerEngine {
    /// The engine.
    pub fn new() -> Self {
        EagerEngine
    }
}

impl MemoryEngine for EagerEngine {
    fn name(&self) -> &str {
        "eager"
    }

    fn restore(
        &mut self,
        mut source: PageSource,
        layout: &MemoryLayout,
        _on_failure: FailureSink,
    ) -> Result<RestoredMemory, EngineError> {
        if source.layout() != layout {
            return Err(EngineError::LayoutMismatch);
        }
        let memfd = crate::sys::sealed_memfd("zygote-restore-eager", layout.size())
            .map_err(EngineError::os("memfd_create"))?;
        let mapping = Mapping::map_file(
            &memfd,
            layout.size(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
        )
        .map_err(EngineError::os("mmap memfd"))?;
        let counters = Arc::new(StatsCounters::default());
        let present = source.present_pages()?;
        // Written through the memfd, not the mapping: no page fault per page.
        super::uffd::bulk_load(&mut source, &present, &memfd, &counters)?;
        StatsCounters::add(&counters.pages_copied, present.count());
        let service = EngineService::new(counters, Box::new(|| {}));
        Ok(RestoredMemory {
            mapping,
            memfd: Some(memfd),
            service: Some(service),
        })
    }
}
