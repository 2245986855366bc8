//! The eager engine: every page is read into a fresh memfd before the VM runs.

use std::sync::Arc;

use super::{
    EngineError, EngineService, FailureSink, Mapping, MemoryEngine, RestoredMemory, StatsCounters,
};
use crate::memory::{raw::MAX_RUN_PAGES, MemoryLayout, PageSource, PAGE_SIZE};

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
        for (first, count) in present.runs() {
            let mut page = first;
            while page < first + count {
                let n = (first + count - page).min(MAX_RUN_PAGES);
                // SAFETY: pages `page .. page + n` lie inside the mapping (the bitmap covers the
                // layout) and nothing else references the fresh mapping yet.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        mapping.as_ptr().add(page as usize * PAGE_SIZE),
                        n as usize * PAGE_SIZE,
                    )
                };
                source.read_pages(page, dst)?;
                page += n;
            }
            StatsCounters::add(&counters.prefetched_pages, count);
            StatsCounters::add(&counters.pages_copied, count);
        }
        let service = EngineService::new(counters, Box::new(|| {}));
        Ok(RestoredMemory {
            mapping,
            memfd: Some(memfd),
            service: Some(service),
        })
    }
}
