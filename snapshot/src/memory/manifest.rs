//! What the state file records about a snapshot's memory.

use serde::{Deserialize, Serialize};

use super::{MemoryLayout, SnapshotId};

/// How a memory image is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageKind {
    /// Raw sparse full image.
    Raw,
    /// zstd-compressed chunked full image.
    Compressed,
    /// Diff image over a parent.
    Diff,
}

/// The memory description a snapshot's state file carries (section
/// [`crate::SectionId::MEMORY`]) and compressed and diff images carry in their own header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryManifest {
    /// This snapshot's id.
    pub id: SnapshotId,
    /// The snapshot a diff applies on top of; `None` for a full image.
    pub parent: Option<SnapshotId>,
    /// How the image is stored.
    pub kind: ImageKind,
    /// Guest RAM layout; the restoring VMM compares it with its own.
    pub layout: MemoryLayout,
}
