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
use zygote_snapshot::memory::{compressed, raw};
use zygote_snapshot::{
    EngineError, EngineStats, ImageError, MemoryEngine, MemoryLayout, PageSource, RamRange,
    RestoredMemory, SectionId, SnapshotId, StateFile, StateFileError, StateFileWriter, WriteError,
};

use crate::arch::layout::ram_regions;
use crate::control::VmControl;
use crate::error::Error;
use crate::exit::ExitReason;
use crate::memory::{ExternalMemory, GuestRam};
use crate::state::{CaptureError, MachineState, VcpuState, VmArchState};
use crate::vm::{RestoreConfig, RunningVm, Vm};

/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory image in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
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
}

/// What the `VM_CONFIG` section says about the snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    id: SnapshotId,
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
        let stats = match format {
            MemoryFormat::Raw => raw::write_raw(memory, &layout, &path)?,
            MemoryFormat::Compressed { level } => {
                compressed::write_compressed(memory, &layout, id, level, &path)?
            }
        };
        let meta = Meta {
            id,
            memory_bytes: state.memory_bytes,
            vcpus: state.vcpus.len() as u32,
            memory: format,
        };
        state_file(&meta, &state)
            .map_err(SnapshotError::Encode)?
            .write_atomic(&dir.join(STATE_FILE))?;
        Ok(SnapshotInfo {
            id,
            data_pages: stats.data_pages,
            memory_bytes_written: stats.bytes_written,
        })
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

fn state_file(meta: &Meta, state: &MachineState) -> Result<StateFileWriter, StateFileError> {
    let mut writer = StateFileWriter::new();
    writer
        .encoded(SectionId::VM_CONFIG, SECTION_VERSION, meta)?
        .encoded(SectionId::VCPUS, SECTION_VERSION, &state.vcpus)?
        .encoded(SectionId::VM, SECTION_VERSION, &state.vm)?
        .encoded(
            SectionId::DEVICES,
            SECTION_VERSION,
            &codec::Devices::from(&state.devices),
        )?;
    Ok(writer)
}

/// A snapshot read from disk and checked: its state, and where its memory is.
pub struct Snapshot {
    dir: PathBuf,
    meta: Meta,
    state: MachineState,
}

impl Snapshot {
    /// Reads and checks the snapshot in `dir`: every section's length, crc32 and version, the
    /// decoded state's shape, and that the memory image is at least as long as the memory.
    ///
    /// # Errors
    /// [`LoadError`] naming what is wrong; nothing is mapped or allocated beyond the caps.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let file = StateFile::read(&dir.join(STATE_FILE))?;
        let versions = &[SECTION_VERSION];
        let (_, meta): (u8, Meta) = file.decode(SectionId::VM_CONFIG, versions)?;
        let (_, vcpus): (u8, Vec<VcpuState>) = file.decode(SectionId::VCPUS, versions)?;
        let (_, vm): (u8, VmArchState) = file.decode(SectionId::VM, versions)?;
        let (_, devices): (u8, codec::Devices) = file.decode(SectionId::DEVICES, versions)?;
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
        let snapshot = Self {
            dir: dir.to_path_buf(),
            state: MachineState {
                memory_bytes: meta.memory_bytes,
                vcpus,
                vm,
                devices: devices.into(),
            },
            meta,
        };
        // Refuse a short or corrupt memory image now, before anything maps it.
        snapshot.page_source()?;
        Ok(snapshot)
    }

    /// The captured state.
    pub fn state(&self) -> &MachineState {
        &self.state
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
        let path = self.dir.join(MEMORY_FILE);
        Ok(match self.meta.memory {
            MemoryFormat::Raw => PageSource::open_raw(&path, &layout)?,
            MemoryFormat::Compressed { .. } => PageSource::open_compressed(&path, &layout)?,
        })
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
        let vm = Vm::restore(&snapshot.state, ram, config)
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
