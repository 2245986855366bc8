//! The userfaultfd engine: memory served lazily by a handler thread.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::fault::{direct_map, new_uffd, register, Exit, Handler, Region};
use super::{
    EngineError, EngineService, FailureSink, Mapping, MemoryEngine, RestoredMemory, StatsCounters,
};
use std::os::unix::fs::FileExt;

use crate::memory::{
    raw::MAX_RUN_PAGES, MemoryLayout, PageBitmap, PageSource, PAGE_SIZE, PAGE_SIZE_U64,
};

/// Default number of pages served after the faulting one.
pub const DEFAULT_NEIGHBOURS: u64 = 7;

/// Serves the restored memory lazily: a sealed memfd mapped shared and registered with
/// userfaultfd (MISSING mode); a handler thread serves each missing page from the source
/// (raw, compressed or a diff chain) with `UFFDIO_COPY`, zero pages with `UFFDIO_ZEROPAGE`,
/// plus up to [`UffdEngine::neighbours`] following pages per fault. Restore costs a memfd, a
/// mapping and a registration; the thread is stopped and joined when the service is dropped.
///
/// On a source failure (image truncated, read error, corrupt chunk) the handler calls the
/// failure sink and unregisters the memory: every blocked thread wakes and later faults read
/// zeros, so the VMM must stop the VM.
#[derive(Debug, Clone)]
pub struct UffdEngine {
    neighbours: u64,
}

impl Default for UffdEngine {
    fn default() -> Self {
        UffdEngine {
            neighbours: DEFAULT_NEIGHBOURS,
        }
    }
}

impl UffdEngine {
    /// The engine with [`DEFAULT_NEIGHBOURS`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `n` pages after the faulting one on each fault (those not served yet).
    pub fn neighbours(mut self, n: u64) -> Self {
        self.neighbours = n;
        self
    }
}

impl MemoryEngine for UffdEngine {
    fn name(&self) -> &str {
        "uffd"
    }

    fn restore(
        &mut self,
        source: PageSource,
        layout: &MemoryLayout,
        on_failure: FailureSink,
    ) -> Result<RestoredMemory, EngineError> {
        let served = Arc::new(Mutex::new(PageBitmap::new(layout.pages())));
        let counters = Arc::new(StatsCounters::default());
        let lazy = Lazy {
            neighbours: self.neighbours,
            served,
            counters,
            prefill: None,
            after: None,
        };
        start_lazy(source, layout, on_failure, lazy)
    }
}

/// How [`start_lazy`] serves: neighbours per fault, the shared set of placed pages (a
/// working-set recorder reads it), counters, pages to load in bulk first, and what to run
/// after the service stopped.
pub(crate) struct Lazy<'a> {
    pub neighbours: u64,
    pub served: Arc<Mutex<PageBitmap>>,
    pub counters: Arc<StatsCounters>,
    pub prefill: Option<&'a PageBitmap>,
    pub after: Option<Box<dyn FnOnce() + Send>>,
}

/// Builds a memfd-backed mapping, loads the pages of `lazy.prefill` into it in bulk,
/// registers it and starts a handler thread that serves every other page on demand.
pub(crate) fn start_lazy(
    mut source: PageSource,
    layout: &MemoryLayout,
    on_failure: FailureSink,
    lazy: Lazy<'_>,
) -> Result<RestoredMemory, EngineError> {
    if source.layout() != layout {
        return Err(EngineError::LayoutMismatch);
    }
    let memfd = crate::sys::sealed_memfd("zygote-restore-uffd", layout.size())
        .map_err(EngineError::os("memfd_create"))?;
    if let Some(pages) = lazy.prefill {
        bulk_load(&mut source, pages, &memfd, &lazy.counters)?;
        lazy.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .or(pages);
    }
    let mapping = Mapping::map_file(
        &memfd,
        layout.size(),
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED | libc::MAP_NORESERVE,
    )
    .map_err(EngineError::os("mmap memfd"))?;
    let uffd = new_uffd(false)?;
    let zeropage = register(&uffd, mapping.as_ptr(), mapping.len())?;
    let stop_page = Mapping::map_anonymous(PAGE_SIZE_U64, libc::PROT_READ, libc::MAP_PRIVATE)
        .map_err(EngineError::os("mmap stop page"))?;
    register(&uffd, stop_page.as_ptr(), PAGE_SIZE)?;
    let direct = direct_map(&source);
    let handler = Handler {
        uffd,
        regions: vec![Region {
            host: mapping.as_ptr() as usize,
            size: layout.size(),
            offset: 0,
        }],
        source,
        served: lazy.served,
        neighbours: lazy.neighbours,
        counters: lazy.counters.clone(),
        on_failure: Some(on_failure),
        zeropage,
        buf: Vec::new(),
        direct,
        stop_page: Some(stop_page.as_ptr() as usize),
    };
    let service = spawn(handler, stop_page, lazy.counters, lazy.after)?;
    Ok(RestoredMemory {
        mapping,
        memfd: Some(memfd),
        service: Some(service),
    })
}

/// Reads the pages of `pages` from `source` and writes them into `memfd` at their offsets
/// (before the memory is registered, so they never fault).
pub(crate) fn bulk_load(
    source: &mut PageSource,
    pages: &PageBitmap,
    memfd: &std::fs::File,
    counters: &StatsCounters,
) -> Result<(), EngineError> {
    let mut buf = vec![0u8; MAX_RUN_PAGES as usize * PAGE_SIZE];
    for (first, count) in pages.runs() {
        let mut page = first;
        while page < first + count {
            let n = (first + count - page).min(MAX_RUN_PAGES);
            let chunk = &mut buf[..n as usize * PAGE_SIZE];
            source.read_pages(page, chunk)?;
            memfd
                .write_all_at(chunk, page * PAGE_SIZE_U64)
                .map_err(EngineError::os("write memfd"))?;
            page += n;
        }
        StatsCounters::add(&counters.prefetched_pages, count);
    }
    Ok(())
}

/// Runs `handler` on a new thread with blocking reads; the service's drop stops it through
/// `stop_page`, joins it, then runs `after`.
pub(crate) fn spawn(
    handler: Handler,
    stop_page: Mapping,
    counters: Arc<StatsCounters>,
    after: Option<Box<dyn FnOnce() + Send>>,
) -> Result<EngineService, EngineError> {
    let thread: JoinHandle<Exit> = std::thread::Builder::new()
        .name("zygote-uffd".into())
        .spawn(move || handler.run_blocking())
        .map_err(EngineError::os("spawn handler thread"))?;
    Ok(EngineService::new(
        counters,
        Box::new(move || {
            // Reading the stop page faults into the handler, which answers and returns. If the
            // handler is gone (failed: it unregistered the page; panicked: its uffd closed,
            // which unregisters everything) the read does not block.
            if !thread.is_finished() {
                // SAFETY: the stop page is a live one-page mapping owned by this closure.
                unsafe { stop_page.as_ptr().read_volatile() };
            }
            let _ = thread.join();
            drop(stop_page);
            if let Some(after) = after {
                after();
            }
        }),
    ))
}
