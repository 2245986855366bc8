//! The memory engine: how a restored VM's guest memory comes back.
//!
//! A restore asks an engine for the VM's memory once, on the restoring thread, before any
//! vCPU exists ([`MemoryEngine::restore`]). The engine returns a host mapping of
//! `layout.size()` bytes laid out like the memfd (range `r` at `mapping.as_ptr() + r.offset`)
//! and, when pages are served lazily, a running service. The VMM builds its guest memory and
//! KVM memory slots over the mapping.
//!
//! Engines in this crate: [`EagerEngine`] (read everything first), [`MmapEngine`] (map the
//! raw image privately), [`UffdEngine`] (serve missing pages from a handler thread),
//! [`PrefetchEngine`] (record the working set on a first run, load it in bulk on later runs)
//! and [`FirecrackerUffdEngine`] (hand the userfaultfd to an external page server speaking
//! Firecracker's protocol). A program can write its own engine against this trait only.

mod eager;
mod error;
mod fault;
mod firecracker;
mod mapping;
mod mmap;
mod prefetch;
mod service;
mod uffd;

use std::sync::Arc;

pub use eager::EagerEngine;
pub use error::EngineError;
pub use firecracker::{
    parse_handshake, raw_image_layout, serve_connection, serve_firecracker_handler,
    FirecrackerUffdEngine, GuestRegionUffdMapping, PageServerError, DEFAULT_RESPONSE_BOUND,
};
pub use mapping::Mapping;
pub use mmap::MmapEngine;
pub use prefetch::{PrefetchEngine, WorkingSet, WORKING_SET_VERSION};
pub use service::{EngineService, EngineStats, StatsCounters};
pub use uffd::{UffdEngine, DEFAULT_NEIGHBOURS};

use crate::memory::{MemoryLayout, PageSource};

/// Called when an engine can no longer serve pages (its source failed, its page server died).
///
/// Contract: an engine calls it at most once, from any thread (usually its service thread),
/// within a second of noticing the failure. The VMM's sink stops the VM with a host error;
/// it must not block. After calling it the engine unblocks every thread waiting on a fault
/// (a uffd engine unregisters its range, so blocked and later faults get zero pages), so no
/// vCPU thread is left blocked: the guest may then see zeros, which is why the VM is stopped.
pub type FailureSink = Arc<dyn Fn(EngineError) + Send + Sync>;

/// What an engine hands back: the restored VM's guest memory and the services behind it.
#[derive(Debug)]
pub struct RestoredMemory {
    /// A running service (fault handler, prefetch); stopped and joined when dropped, which the
    /// VMM does after the vCPUs are gone. Declared first so that dropping the whole value stops
    /// the service before the mapping goes away.
    pub service: Option<EngineService>,
    /// RAII host mapping of `layout.size()` bytes; range `r` lives at
    /// `mapping.as_ptr() + r.offset`. Unmapped on drop, so it must outlive the VM's memory
    /// slots and every user of the memory.
    pub mapping: Mapping,
    /// The memfd behind the mapping when it is a `MAP_SHARED` memfd mapping (eager, uffd,
    /// prefetch, Firecracker protocol), so the VM can later be snapshotted by fd and forked;
    /// `None` for a private file mapping (mmap).
    pub memfd: Option<std::fs::File>,
}

/// A way to bring back a snapshot's guest memory.
///
/// Threads: `restore` is called once per restore on the restoring thread, before the VM's
/// vCPUs exist. The returned [`EngineService`] runs on the engine's own threads; the VMM only
/// reads its stats and drops it (after the vCPUs stopped). `on_failure` may be called from any
/// engine thread, at most once per restore.
///
/// Units: pages are [`crate::PAGE_SIZE`] bytes; every offset is a byte offset in the memfd
/// laid out by `layout`.
pub trait MemoryEngine: Send {
    /// A short name for logs and reports ("eager", "mmap", "uffd", ...).
    fn name(&self) -> &str;

    /// Builds the memory of a restored VM from `source` (opened for `layout`).
    ///
    /// # Errors
    /// An [`EngineError`] if the memory cannot be made; nothing is left running then. Errors
    /// after a successful return go to `on_failure` instead.
    fn restore(
        &mut self,
        source: PageSource,
        layout: &MemoryLayout,
        on_failure: FailureSink,
    ) -> Result<RestoredMemory, EngineError>;
}
