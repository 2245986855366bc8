//! The prefetch engine (REAP, ASPLOS '21): record the working set on a first run, load it in
//! bulk on later runs, serve the rest lazily.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::uffd::{start_lazy, Lazy, DEFAULT_NEIGHBOURS};
use super::{EngineError, FailureSink, MemoryEngine, RestoredMemory, StatsCounters};
use crate::format::{SectionId, StateFile, StateFileError, StateFileWriter, WriteError};
use crate::memory::{MemoryLayout, PageBitmap, PageSource};

/// Version of the working-set section.
pub const WORKING_SET_VERSION: u8 = 1;

/// The pages a restored VM touched on its first run: a state file holding one
/// [`SectionId::WORKING_SET`] section (a [`PageBitmap`] over the layout's pages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingSet {
    pages: PageBitmap,
}

impl WorkingSet {
    /// A working set of `pages`.
    pub fn new(pages: PageBitmap) -> Self {
        WorkingSet { pages }
    }

    /// The pages.
    pub fn pages(&self) -> &PageBitmap {
        &self.pages
    }

    /// Reads the working set at `path`; `Ok(None)` when there is no file.
    ///
    /// # Errors
    /// [`EngineError::WorkingSetFile`] for a corrupt file or one made for another layout.
    pub fn load(path: &Path, layout: &MemoryLayout) -> Result<Option<Self>, EngineError> {
        let bad = |source| EngineError::WorkingSetFile {
            path: path.to_path_buf(),
            source,
        };
        let file = match StateFile::read(path) {
            Ok(f) => f,
            Err(StateFileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(bad(e)),
        };
        let (_, pages): (_, PageBitmap) = file
            .decode(SectionId::WORKING_SET, &[WORKING_SET_VERSION])
            .map_err(bad)?;
        if pages.pages() != layout.pages() {
            return Err(EngineError::LayoutMismatch);
        }
        Ok(Some(WorkingSet { pages }))
    }

    /// Writes the working set at `path`, atomically.
    ///
    /// # Errors
    /// [`WriteError`]; nothing is left at `path` on error.
    pub fn save(&self, path: &Path) -> Result<(), WriteError> {
        let mut w = StateFileWriter::new();
        w.encoded(SectionId::WORKING_SET, WORKING_SET_VERSION, &self.pages)
            .map_err(|e| WriteError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            })?;
        w.write_atomic(path)
    }
}

/// Userfaultfd serving with a working set (REAP): when no working-set file exists, the
/// restore serves lazily like [`super::UffdEngine`] and records every page it places; the set
/// is written (atomically) to the file when the service stops, or on
/// [`PrefetchEngine::save_working_set`]. When the file exists, the restore first loads those
/// pages into the memfd in bulk (sequential reads, before returning), then serves the rest
/// lazily without recording. Delete the file to record again.
#[derive(Debug, Clone)]
pub struct PrefetchEngine {
    path: PathBuf,
    neighbours: u64,
    recording: Arc<Mutex<Option<Arc<Mutex<PageBitmap>>>>>,
}

impl PrefetchEngine {
    /// An engine whose working set lives at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PrefetchEngine {
            path: path.into(),
            neighbours: DEFAULT_NEIGHBOURS,
            recording: Arc::default(),
        }
    }

    /// Serves `n` pages after the faulting one on each lazy fault.
    pub fn neighbours(mut self, n: u64) -> Self {
        self.neighbours = n;
        self
    }

    /// Writes the working set recorded so far by the last recording restore; `Ok(false)` when
    /// no restore of this engine is recording.
    ///
    /// # Errors
    /// [`EngineError::WorkingSet`] if the write fails.
    pub fn save_working_set(&self) -> Result<bool, EngineError> {
        let recording = self
            .recording
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(served) = recording else {
            return Ok(false);
        };
        let pages = served.lock().unwrap_or_else(|p| p.into_inner()).clone();
        WorkingSet::new(pages).save(&self.path)?;
        Ok(true)
    }
}

impl MemoryEngine for PrefetchEngine {
    fn name(&self) -> &str {
        "prefetch"
    }

    fn restore(
        &mut self,
        source: PageSource,
        layout: &MemoryLayout,
        on_failure: FailureSink,
    ) -> Result<RestoredMemory, EngineError> {
        let set = WorkingSet::load(&self.path, layout)?;
        let served = Arc::new(Mutex::new(PageBitmap::new(layout.pages())));
        let counters = Arc::new(StatsCounters::default());
        let after: Option<Box<dyn FnOnce() + Send>> = match &set {
            Some(_) => None,
            None => {
                let (served, path) = (served.clone(), self.path.clone());
                Some(Box::new(move || {
                    let pages = served.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    // Best effort at teardown: save_working_set() reports errors.
                    let _ = WorkingSet::new(pages).save(&path);
                }))
            }
        };
        *self.recording.lock().unwrap_or_else(|p| p.into_inner()) =
            set.is_none().then(|| served.clone());
        let lazy = Lazy {
            neighbours: self.neighbours,
            served,
            counters,
            prefill: set.as_ref().map(|s| s.pages()),
            after,
        };
        start_lazy(source, layout, on_failure, lazy)
    }
}
