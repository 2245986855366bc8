//! A view: a base and a stack of layers, frozen; what one VM's memory looks like at a fork.

use std::sync::Arc;

use crate::layer::Layer;
use crate::runs::{PageRun, PAGE_SIZE};

/// Guest memory as a frozen base plus frozen layers, topmost last. Immutable: share it.
#[derive(Debug)]
pub struct View {
    size: u64,
    /// `layers[0]` is the base (every page); the rest hold some pages each.
    layers: Vec<Arc<Layer>>,
    /// Where each page comes from, for layers above the base.
    runs: Vec<(PageRun, usize)>,
}

/// Views with more mapped runs than this are squashed into one layer at the next fork, so a
/// long chain of forks keeps its number of mappings (VMAs) and its map time bounded.
pub const MAX_RUNS: usize = 512;

impl View {
    /// A view of `size` bytes that is just `base`.
    pub fn base(base: Arc<Layer>, size: u64) -> Arc<Self> {
        Arc::new(Self {
            size,
            layers: vec![base],
            runs: Vec::new(),
        })
    }

    /// This view with `layer` on top. Empty layers add nothing.
    pub fn with_layer(self: &Arc<Self>, layer: Layer) -> Arc<Self> {
        if layer.runs().is_empty() {
            return self.clone();
        }
        let mut layers = self.layers.clone();
        layers.push(Arc::new(layer));
        let mut paint = crate::runs::Paint::default();
        for (run, index) in &self.runs {
            paint.paint(*run, *index);
        }
        let top = layers.len() - 1;
        for run in layers[top].runs() {
            paint.paint(*run, top);
        }
        Arc::new(Self {
            size: self.size,
            runs: paint.runs(),
            layers,
        })
    }

    /// Bytes of guest memory.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The layers, base first.
    pub fn layers(&self) -> &[Arc<Layer>] {
        &self.layers
    }

    /// The runs that come from a layer above the base, with that layer's index.
    pub fn runs(&self) -> &[(PageRun, usize)] {
        &self.runs
    }

    /// Whether mapping this view would take more than [`MAX_RUNS`] mappings.
    pub fn needs_squash(&self) -> bool {
        self.runs.len() > MAX_RUNS
    }

    /// Bytes held by the layers above the base.
    pub fn layered_bytes(&self) -> u64 {
        self.runs.iter().map(|(r, _)| r.count * PAGE_SIZE).sum()
    }
}
