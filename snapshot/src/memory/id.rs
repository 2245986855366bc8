//! Snapshot identity.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A random 128-bit id written into every snapshot; a diff names its parent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotId(pub u128);

impl SnapshotId {
    /// A fresh random id (from `getrandom(2)`).
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        crate::sys::fill_random(&mut b);
        SnapshotId(u128::from_le_bytes(b))
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}
