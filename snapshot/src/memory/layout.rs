//! The guest RAM layout shared by the VM, its memfd and every memory image.

use serde::{Deserialize, Serialize};

use super::PAGE_SIZE_U64;

/// Most RAM ranges a layout may have.
pub const MAX_RANGES: usize = 64;
/// Largest guest RAM a layout may describe (1 TiB).
pub const MAX_SIZE: u64 = 1 << 40;

/// One contiguous range of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamRange {
    /// Guest physical address of the first byte.
    pub guest_addr: u64,
    /// Length in bytes, a multiple of the page size, non-zero.
    pub len: u64,
    /// Byte offset of the range in the memfd and in every memory image.
    pub offset: u64,
}

/// A layout that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// No ranges.
    #[error("a memory layout needs at least one range")]
    Empty,
    /// Too many ranges.
    #[error("{count} ranges, over the cap of {MAX_RANGES}")]
    TooManyRanges {
        /// Ranges given.
        count: usize,
    },
    /// A field is not page-aligned, or a length is zero.
    #[error("range {index} is not page-aligned or is empty")]
    Unaligned {
        /// Index of the range.
        index: usize,
    },
    /// Offsets are not contiguous from 0 in order.
    #[error("range {index} has offset {offset:#x}, expected {expected:#x}")]
    Offset {
        /// Index of the range.
        index: usize,
        /// Offset given.
        offset: u64,
        /// Offset the previous ranges imply.
        expected: u64,
    },
    /// Guest ranges overlap, are not in ascending order, or overflow.
    #[error("range {index} overlaps or precedes the previous one, or overflows")]
    Overlap {
        /// Index of the range.
        index: usize,
    },
    /// The layout is larger than [`MAX_SIZE`].
    #[error("layout of {size} bytes is over the cap of {MAX_SIZE}")]
    TooLarge {
        /// Total bytes.
        size: u64,
    },
}

/// The validated guest RAM layout: ranges in ascending guest order, page-aligned,
/// non-overlapping, with image offsets contiguous from 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<RamRange>", into = "Vec<RamRange>")]
pub struct MemoryLayout {
    ranges: Vec<RamRange>,
    size: u64,
}

impl MemoryLayout {
    /// Checks `ranges` and builds the layout.
    ///
    /// # Errors
    /// A [`LayoutError`] naming the first range that breaks a rule.
    pub fn new(ranges: Vec<RamRange>) -> Result<Self, LayoutError> {
        if ranges.is_empty() {
            return Err(LayoutError::Empty);
        }
        if ranges.len() > MAX_RANGES {
            return Err(LayoutError::TooManyRanges {
                count: ranges.len(),
            });
        }
        let mut expected = 0u64;
        let mut guest_end = 0u64;
        for (index, r) in ranges.iter().enumerate() {
            let aligned = [r.guest_addr, r.len, r.offset]
                .iter()
                .all(|v| v % PAGE_SIZE_U64 == 0);
            if !aligned || r.len == 0 {
                return Err(LayoutError::Unaligned { index });
            }
            if r.offset != expected {
                return Err(LayoutError::Offset {
                    index,
                    offset: r.offset,
                    expected,
                });
            }
            let end = r
                .guest_addr
                .checked_add(r.len)
                .ok_or(LayoutError::Overlap { index })?;
            if index > 0 && r.guest_addr < guest_end {
                return Err(LayoutError::Overlap { index });
            }
            guest_end = end;
            expected = expected
                .checked_add(r.len)
                .ok_or(LayoutError::TooLarge { size: u64::MAX })?;
            if expected > MAX_SIZE {
                return Err(LayoutError::TooLarge { size: expected });
            }
        }
        Ok(MemoryLayout {
            ranges,
            size: expected,
        })
    }

    /// A layout of one range at guest address 0.
    ///
    /// # Errors
    /// As [`MemoryLayout::new`].
    pub fn single(len: u64) -> Result<Self, LayoutError> {
        Self::new(vec![RamRange {
            guest_addr: 0,
            len,
            offset: 0,
        }])
    }

    /// The ranges, in ascending guest address order.
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges
    }

    /// Total bytes of RAM (the memfd and raw image length).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Total pages.
    pub fn pages(&self) -> u64 {
        self.size / PAGE_SIZE_U64
    }

    /// The image offset of guest physical address `gpa`, if it is RAM.
    pub fn offset_of(&self, gpa: u64) -> Option<u64> {
        self.ranges
            .iter()
            .find(|r| gpa >= r.guest_addr && gpa - r.guest_addr < r.len)
            .map(|r| r.offset + (gpa - r.guest_addr))
    }
}

impl TryFrom<Vec<RamRange>> for MemoryLayout {
    type Error = LayoutError;
    fn try_from(ranges: Vec<RamRange>) -> Result<Self, LayoutError> {
        Self::new(ranges)
    }
}

impl From<MemoryLayout> for Vec<RamRange> {
    fn from(layout: MemoryLayout) -> Self {
        layout.ranges
    }
}
