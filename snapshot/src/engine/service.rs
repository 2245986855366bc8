//! A running engine service and its statistics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters an engine updates as it serves memory (all monotonic).
#[derive(Debug, Default)]
pub struct StatsCounters {
    /// Faults handled.
    pub faults: AtomicU64,
    /// Pages placed with data (`UFFDIO_COPY`, or copied eagerly).
    pub pages_copied: AtomicU64,
    /// Pages placed as zero (`UFFDIO_ZEROPAGE`).
    pub zero_pages: AtomicU64,
    /// Pages loaded in bulk before the VM ran (prefetch, eager).
    pub prefetched_pages: AtomicU64,
}

impl StatsCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A snapshot of an engine's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Faults handled.
    pub faults: u64,
    /// Pages placed with data.
    pub pages_copied: u64,
    /// Pages placed as zero.
    pub zero_pages: u64,
    /// Pages loaded in bulk before the VM ran.
    pub prefetched_pages: u64,
}

/// A running engine service (a fault handler, a prefetcher). Dropping it stops it and joins
/// its threads; the VMM drops it after the vCPUs are gone.
pub struct EngineService {
    counters: Arc<StatsCounters>,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for EngineService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineService")
            .field("stats", &self.stats())
            .finish()
    }
}

impl EngineService {
    /// A service whose `stop` is run once on drop (it must stop and join the service's
    /// threads) and whose stats are read from `counters`. For engines written outside the
    /// crate too.
    pub fn new(counters: Arc<StatsCounters>, stop: Box<dyn FnOnce() + Send>) -> Self {
        EngineService {
            counters,
            stop: Some(stop),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> EngineStats {
        let c = &self.counters;
        EngineStats {
            faults: c.faults.load(Ordering::Relaxed),
            pages_copied: c.pages_copied.load(Ordering::Relaxed),
            zero_pages: c.zero_pages.load(Ordering::Relaxed),
            prefetched_pages: c.prefetched_pages.load(Ordering::Relaxed),
        }
    }
}

impl Drop for EngineService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}
