//! Snapshots on disk and restores from them.
//!
//! A snapshot is a directory: `state` (the state file of `zygote-snapshot`: sections for the
//! snapshot's description, the vCPUs, the irqchip/PIT/clock and the devices, each with a
//! length and a crc32) and `memory` (a raw sparse image or a zstd-compressed chunked image of
//! guest RAM). The memory file is written first and the state file last, each atomically, so a
//! directory with a `state` file holds a whole snapshot; a crash or a full disk leaves none.
//!
//! A restore reads and validates the state file, opens the memory as a `PageSource`, and asks
//! a [`MemoryEngine`] (eager, mmap, userfaultfd, prefetch, an external page server, or one the
//! program writes) for the restored VM's memory.

mod codec;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use zygote_snapshot::memory::{compressed, diff, merge, raw};
use zygote_snapshot::{
    EngineError, EngineStats, ImageError, MemoryEngine, MemoryLayout, PageBitmap, PageSource,
    RamRange, RestoredMemory, SectionId, SnapshotId, StateFile, StateFileError, StateFileWriter,
    WriteError,
};

use crate::arch::layout::ram_regions;
use crate::control::VmControl;
use crate::error::Error;
use crate::exit::ExitReason;
use crate::memory::{ExternalMemory, GuestRam};
use crate::state::{CaptureError, MachineState, VcpuState, VmArchState};
use crate::vm::{RestoreConfig, RestoreExtras, RunningVm, Vm};
use zygote_devices::virtio::block::OverlayState;

/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory image in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// The section holding each disk's overlay.
const BLOCK_OVERLAYS: SectionId = SectionId(7);
/// Version of every section this module writes.
const SECTION_VERSION: u8 = 1;
/// Most vCPUs a state file may describe (as [`crate::MAX_VCPUS`]).
const MAX_SAVED_VCPUS: usize = crate::MAX_VCPUS as usize;

/// How guest memory is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryFormat {
    /// A sparse byte-for-byte image; the mmap engine maps it directly.
    Raw,
    /// zstd chunks, each decodable alone, at this level (1-19; 1 is fastest).
    Compressed {
        /// zstd level.
        level: i32,
    },
    /// Only the pages written since this VM's previous snapshot (its parent, named in the
    /// file), tracked by the kernel (`zygote_cow::WriteTracker`) for guest and device writes
    /// alike. Restore it with [`Snapshot::load_chain`]; squash a chain with
    /// [`Snapshot::merge_chain`].
    Diff,
}

/// What the `VM_CONFIG` section says about the snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    id: SnapshotId,
    parent: Option<SnapshotId>,
    memory_bytes: u64,
    vcpus: u32,
    memory: MemoryFormat,
}

/// What a written snapshot is.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotInfo {
    /// Its id.
    pub id: SnapshotId,
    /// Pages of memory with data (the rest are zero).
    pub data_pages: u64,
    /// Bytes written for memory.
    pub memory_bytes_written: u64,
}

/// Why a snapshot could not be written. The VM is unchanged and still paused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The VM's state could not be captured (it must be paused).
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The snapshot directory could not be created.
    #[error("cannot create the snapshot directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The memory image could not be written (a full disk is `ImageError::Write` whose
    /// `is_storage_full()` is true).
    #[error(transparent)]
    Memory(#[from] ImageError),
    /// The state file could not be encoded.
    #[error("cannot encode the snapshot state: {0}")]
    Encode(#[source] StateFileError),
    /// The state file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A disk's overlay could not be read for the snapshot.
    #[error("cannot save a disk's overlay: {0}")]
    Overlay(#[source] zygote_devices::virtio::block::OverlaySaveError),
    /// A diff snapshot needs a parent: a full snapshot of this VM taken since it was made,
    /// restored or forked, with write tracking available for its memory.
    #[error("a diff snapshot needs a previous full snapshot of this VM (since its last fork or lazy restore)")]
    NoParent,
    /// Reading which pages were written failed.
    #[error("cannot read which pages were written: {0}")]
    Track(#[source] zygote_cow::CowError),
    /// The VM's memory layout is not one a snapshot can describe.
    #[error("cannot describe the memory layout: {0}")]
    Layout(#[source] zygote_snapshot::LayoutError),
}

impl SnapshotError {
    /// Whether the write failed because the disk is full.
    pub fn is_storage_full(&self) -> bool {
        match self {
            Self::Write(e) => e.is_storage_full(),
            Self::Memory(ImageError::Write(e)) => e.is_storage_full(),
            _ => false,
        }
    }
}

/// Why a snapshot could not be loaded or restored. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The state file is missing, truncated, corrupt, of another version or oversized; the
    /// error names the section.
    #[error(transparent)]
    State(#[from] StateFileError),
    /// The state is well-formed but describes an impossible VM.
    #[error("invalid snapshot: {0}")]
    Invalid(&'static str),
    /// The memory image is missing, shorter than the state says, or corrupt.
    #[error(transparent)]
    Memory(#[from] ImageError),
    /// The memory size gives a layout a snapshot cannot describe.
    #[error("invalid snapshot memory layout: {0}")]
    Layout(#[from] zygote_snapshot::LayoutError),
    /// The memory engine could not provide the memory.
    #[error("memory engine: {0}")]
    Engine(#[from] EngineError),
    /// The VM could not be made from the state.
    #[error(transparent)]
    Restore(#[from] Box<Error>),
}

/// The guest RAM layout of a VM with `size` bytes, as the snapshot crate describes it.
pub(crate) fn memory_layout(size: u64) -> Result<MemoryLayout, zygote_snapshot::LayoutError> {
    MemoryLayout::new(
        ram_regions(size)
            .into_iter()
            .map(|r| RamRange {
                guest_addr: r.start.0,
                len: r.len,
                offset: r.file_offset,
            })
            .collect(),
    )
}

impl RunningVm {
    /// Writes a snapshot of this paused VM into `dir` (created if needed): its memory in
    /// `format`, then its state. The VM stays paused; resume it, or drop it to hibernate.
    ///
    /// # Errors
    /// [`SnapshotError`]; a failed write leaves no `state` file behind, and the VM keeps its
    /// state (it can be resumed).
    pub fn snapshot(
        &self,
        dir: &Path,
        format: MemoryFormat,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let state = self.capture()?;
        std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Directory {
            path: dir.to_path_buf(),
            source,
        })?;
        let layout = memory_layout(state.memory_bytes).map_err(SnapshotError::Layout)?;
        let id = SnapshotId::random();
        let memory = self.memory();
        let path = dir.join(MEMORY_FILE);
        let mut tracking = self.dirty_tracking();
        let mut parent = None;
        let stats = match format {
            MemoryFormat::Raw => raw::write_raw(memory, &layout, &path)?,
            MemoryFormat::Compressed { level } => {
                compressed::write_compressed(memory, &layout, id, level, &path)?
            }
            MemoryFormat::Diff => {
                let (tracker, last) = tracking.as_ref().ok_or(SnapshotError::NoParent)?;
                let written = tracker.take_written().map_err(SnapshotError::Track)?;
                let mut dirty = PageBitmap::new(layout.pages());
                for run in written {
                    dirty.set_range(run.start, run.count);
                }
                parent = Some(*last);
                match diff::write_diff(memory, &layout, &dirty, id, *last, &path) {
                    Ok(stats) => stats,
                    Err(e) => {
                        // The pages read above are no longer marked: only a full snapshot
                        // can be a parent now.
                        *tracking = None;
                        return Err(e.into());
                    }
                }
            }
        };
        let meta = Meta {
            id,
            parent,
            memory_bytes: state.memory_bytes,
            vcpus: state.vcpus.len() as u32,
            memory: format,
        };
        let overlays = self.save_overlays()?;
        state_file(&meta, &state, &overlays)
            .map_err(SnapshotError::Encode)?
            .write_atomic(&dir.join(STATE_FILE))?;
        match format {
            MemoryFormat::Diff => {
                if let Some((_, last)) = tracking.as_mut() {
                    *last = id;
                }
            }
            // Later diffs are taken against this one. Without write tracking (a lazily
            // restored VM's memory belongs to its engine's userfaultfd) there are none.
            _ => {
                let ram = self.ram();
                *tracking = zygote_cow::WriteTracker::start(ram.host_addr() as u64, ram.size())
                    .ok()
                    .map(|tracker| (tracker, id));
            }
        }
        drop(tracking);
        Ok(SnapshotInfo {
            id,
            data_pages: stats.data_pages,
            memory_bytes_written: stats.bytes_written,
        })
    }

    /// Each disk's overlay as plain data (the VM is paused).
    fn save_overlays(&self) -> Result<Vec<Option<OverlayState>>, SnapshotError> {
        self.core_devices()
            .blocks
            .iter()
            .map(|transport| {
                let transport = transport.lock().unwrap_or_else(|p| p.into_inner());
                transport
                    .device()
                    .save_overlay()
                    .map_err(SnapshotError::Overlay)
            })
            .collect()
    }

    /// Snapshots the VM into `dir` and stops it: the seed product's `hibernate()`. Resume with
    /// [`Vm::restore_snapshot`] and a lazy engine. The VM must be paused.
    ///
    /// # Errors
    /// As [`RunningVm::snapshot`]; the VM is left paused (not stopped) if writing failed.
    pub fn hibernate(
        mut self,
        dir: &Path,
        format: MemoryFormat,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let info = self.snapshot(dir, format)?;
        let _ = self.shutdown();
        Ok(info)
    }
}

fn state_file(
    meta: &Meta,
    state: &MachineState,
    overlays: &[Option<OverlayState>],
) -> Result<StateFileWriter, StateFileError> {
    let mut writer = StateFileWriter::new();
    writer
        .encoded(SectionId::VM_CONFIG, SECTION_VERSION, meta)?
        .encoded(SectionId::VCPUS, SECTION_VERSION, &state.vcpus)?
        .encoded(SectionId::VM, SECTION_VERSION, &state.vm)?
        .encoded(
            SectionId::DEVICES,
            SECTION_VERSION,
            &codec::Devices::from(&state.devices),
        )?
        .encoded(
            BLOCK_OVERLAYS,
            SECTION_VERSION,
            &codec::Overlays::from(overlays),
        )?;
    Ok(writer)
}

/// A snapshot read from disk and checked: its state, and where its memory is (one full
/// image, or a full image and the diffs on top of it, oldest first).
pub struct Snapshot {
    dir: PathBuf,
    meta: Meta,
    state: MachineState,
    /// For a diff chain: the full snapshot at its bottom and the diffs below `dir`.
    chain: Option<(PathBuf, Meta, Vec<PathBuf>)>,
    /// Each disk's overlay (its in-memory sectors, or its overlay file's block bitmap).
    overlays: Vec<Option<OverlayState>>,
}

impl Snapshot {
    /// Reads and checks the snapshot in `dir`: every section's length, crc32 and version, the
    /// decoded state's shape, and that the memory image is at least as long as the memory.
    ///
    /// # Errors
    /// [`LoadError`] naming what is wrong; nothing is mapped or allocated beyond the caps.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let snapshot = Self::read(dir)?;
        if snapshot.meta.parent.is_some() {
            return Err(LoadError::Invalid(
                "a diff snapshot needs its parents: use Snapshot::load_chain",
            ));
        }
        // Refuse a short or corrupt memory image now, before anything maps it.
        snapshot.page_source()?;
        Ok(snapshot)
    }

    /// Reads a chain: a full snapshot and the diff snapshots taken after it, oldest first.
    /// Each diff must name the snapshot before it as its parent; the state is the last one's.
    ///
    /// # Errors
    /// [`LoadError`]; [`ImageError::WrongParent`] for a diff out of order or from another VM.
    pub fn load_chain<P: AsRef<Path>>(dirs: &[P]) -> Result<Self, LoadError> {
        let (first, rest) = dirs
            .split_first()
            .ok_or(LoadError::Invalid("an empty snapshot chain"))?;
        let base = Self::read(first.as_ref())?;
        if base.meta.parent.is_some() {
            return Err(LoadError::Invalid(
                "a snapshot chain must start with a full snapshot",
            ));
        }
        let Some(last_dir) = rest.last() else {
            return Self::load(first.as_ref());
        };
        let mut last = Self::read(last_dir.as_ref())?;
        for dir in rest {
            let meta = Self::read(dir.as_ref())?.meta;
            if meta.memory != MemoryFormat::Diff || meta.memory_bytes != base.meta.memory_bytes {
                return Err(LoadError::Invalid(
                    "a chain's later snapshots must be diffs of the same VM",
                ));
            }
        }
        let diffs = rest.iter().map(|d| d.as_ref().join(MEMORY_FILE)).collect();
        last.chain = Some((base.dir, base.meta, diffs));
        last.page_source()?;
        Ok(last)
    }

    /// Squashes a chain (as [`Snapshot::load_chain`] takes it) into one full snapshot with a
    /// raw image in `out`: the last snapshot's state over the merged memory.
    ///
    /// # Errors
    /// [`LoadError`] for a bad chain; a write failure leaves no state file in `out`.
    pub fn merge_chain<P: AsRef<Path>>(dirs: &[P], out: &Path) -> Result<Self, LoadError> {
        let chain = Self::load_chain(dirs)?;
        std::fs::create_dir_all(out).map_err(|source| {
            LoadError::Memory(ImageError::Io {
                path: out.to_path_buf(),
                source,
            })
        })?;
        merge::merge_to_raw(&mut chain.page_source()?, &out.join(MEMORY_FILE))?;
        let meta = Meta {
            id: SnapshotId::random(),
            parent: None,
            memory: MemoryFormat::Raw,
            ..chain.meta.clone()
        };
        state_file(&meta, &chain.state, &chain.overlays)
            .map_err(LoadError::State)?
            .write_atomic(&out.join(STATE_FILE))
            .map_err(|e| LoadError::Memory(ImageError::Write(e)))?;
        Self::load(out)
    }

    fn read(dir: &Path) -> Result<Self, LoadError> {
        let file = StateFile::read(&dir.join(STATE_FILE))?;
        let versions = &[SECTION_VERSION];
        let (_, meta): (u8, Meta) = file.decode(SectionId::VM_CONFIG, versions)?;
        let (_, vcpus): (u8, Vec<VcpuState>) = file.decode(SectionId::VCPUS, versions)?;
        let (_, vm): (u8, VmArchState) = file.decode(SectionId::VM, versions)?;
        let (_, devices): (u8, codec::Devices) = file.decode(SectionId::DEVICES, versions)?;
        let (_, overlays): (u8, codec::Overlays) = file.decode(BLOCK_OVERLAYS, versions)?;
        let overlays: Vec<Option<OverlayState>> = overlays.into();
        if overlays.len() != devices.block_count() {
            return Err(LoadError::Invalid(
                "one saved overlay entry per disk is needed",
            ));
        }
        if vcpus.is_empty() || vcpus.len() > MAX_SAVED_VCPUS || vcpus.len() != meta.vcpus as usize {
            return Err(LoadError::Invalid(
                "the vCPU count is out of range or inconsistent",
            ));
        }
        let memory_mib = meta.memory_bytes >> 20;
        if meta.memory_bytes % (1 << 20) != 0
            || !(crate::MIN_MEMORY_MIB..=crate::MAX_MEMORY_MIB).contains(&memory_mib)
        {
            return Err(LoadError::Invalid("the memory size is out of range"));
        }
        if (meta.memory == MemoryFormat::Diff) != meta.parent.is_some() {
            return Err(LoadError::Invalid(
                "a diff snapshot must name its parent, and only a diff",
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            state: MachineState {
                memory_bytes: meta.memory_bytes,
                vcpus,
                vm,
                devices: devices.into(),
            },
            meta,
            chain: None,
            overlays,
        })
    }

    /// The captured state.
    pub fn state(&self) -> &MachineState {
        &self.state
    }

    /// The captured state, to edit before restoring (tools, tests). Restoring checks it again.
    pub fn state_mut(&mut self) -> &mut MachineState {
        &mut self.state
    }

    /// The snapshot's id.
    pub fn id(&self) -> SnapshotId {
        self.meta.id
    }

    /// The memory image, opened for reading pages.
    ///
    /// # Errors
    /// [`LoadError::Memory`] for a missing, short or corrupt image.
    pub fn page_source(&self) -> Result<PageSource, LoadError> {
        let layout = memory_layout(self.meta.memory_bytes)?;
        let (dir, meta, diffs) = match &self.chain {
            Some((dir, meta, diffs)) => (dir, meta, diffs.as_slice()),
            None => (&self.dir, &self.meta, &[][..]),
        };
        let path = dir.join(MEMORY_FILE);
        let source = match meta.memory {
            MemoryFormat::Raw => PageSource::open_raw(&path, &layout)?,
            MemoryFormat::Compressed { .. } => PageSource::open_compressed(&path, &layout)?,
            MemoryFormat::Diff => return Err(LoadError::Invalid("a diff needs its parents")),
        };
        if diffs.is_empty() {
            return Ok(source);
        }
        Ok(source.with_diffs(meta.id, diffs)?)
    }
}

/// Stops a restored VM when its memory engine fails, whether that happens before or after the
/// VM exists.
#[derive(Default)]
struct FailureRelay {
    control: Mutex<Option<Arc<VmControl>>>,
    failed: Mutex<Option<Arc<EngineError>>>,
}

impl FailureRelay {
    fn fail(&self, error: EngineError) {
        let error = Arc::new(error);
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
        if let Some(control) = self
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            control.finish(ExitReason::HostError(error));
        }
    }

    fn attach(&self, control: Arc<VmControl>) {
        if let Some(error) = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            control.finish(ExitReason::HostError(error));
        }
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = Some(control);
    }
}

impl Vm {
    /// Makes a VM from `snapshot` whose memory `engine` provides, with host resources from
    /// `config`. Start it with [`Vm::start`]. If the engine later fails (its file truncated,
    /// its page server gone), the VM stops with [`ExitReason::HostError`] holding the
    /// [`EngineError`], and no vCPU stays blocked on a fault.
    ///
    /// # Errors
    /// [`LoadError`]; nothing is left running.
    pub fn restore_snapshot(
        snapshot: &Snapshot,
        engine: &mut dyn MemoryEngine,
        config: RestoreConfig,
    ) -> Result<Vm, LoadError> {
        let layout = memory_layout(snapshot.meta.memory_bytes)?;
        let relay = Arc::new(FailureRelay::default());
        let sink = relay.clone();
        let restored = engine.restore(
            snapshot.page_source()?,
            &layout,
            Arc::new(move |error| sink.fail(error)),
        )?;
        let addr = restored.mapping.as_ptr();
        let shared = restored.memfd.is_some();
        let memfd = restored
            .memfd
            .as_ref()
            .and_then(|f| f.try_clone().ok())
            .map(|f| (Arc::new(f), shared));
        // SAFETY: the engine's mapping is `layout.size()` bytes, readable and writable, and
        // lives as long as `restored`, which the RAM keeps until it is dropped.
        let ram = unsafe {
            GuestRam::from_raw(addr, layout.size(), memfd, Box::new(Mutex::new(restored)))
        }
        .map_err(|e| LoadError::Restore(Box::new(e.into())))?;
        let extras = RestoreExtras {
            check_cpuid: true,
            overlays: snapshot.overlays.clone(),
            ..Default::default()
        };
        let vm = Vm::restore_into(&snapshot.state, ram, config, extras)
            .map_err(|e| LoadError::Restore(Box::new(e)))?;
        relay.attach(vm.control());
        Ok(vm)
    }
}

/// A restored VM's memory stays alive, and its engine's counters readable, through the RAM.
impl ExternalMemory for Mutex<RestoredMemory> {
    fn engine_stats(&self) -> Option<EngineStats> {
        let restored = self.lock().unwrap_or_else(|p| p.into_inner());
        restored.service.as_ref().map(|service| service.stats())
    }
}

// A state written by this module reads back: encoding is at this edge only.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_matches_the_vm_memory_layout() {
        let layout = memory_layout(0xc000_0000 + (64 << 20)).unwrap();
        assert_eq!(layout.ranges().len(), 2);
        assert_eq!(layout.ranges()[1].guest_addr, 0x1_0000_0000);
        assert_eq!(layout.ranges()[1].offset, 0xc000_0000);
        assert_eq!(layout.size(), 0xc000_0000 + (64 << 20));
    }

    #[test]
    fn a_missing_snapshot_is_a_typed_error() {
        let err = Snapshot::load(Path::new("/nonexistent/zygote-snapshot"))
            .err()
            .unwrap();
        assert!(matches!(err, LoadError::State(_)), "{err}");
    }
}
