//! Guest RAM as the snapshot sees it: the layout, page bitmaps, ids, and the memory images.
//!
//! Every image uses the same page numbering: page `i` is bytes `i * PAGE_SIZE ..` of the VM's
//! memfd, which holds the [`RamRange`]s of a [`MemoryLayout`] back to back from offset 0.
//!
//! - **Raw full image**: a sparse file of exactly `layout.size()` bytes, byte-for-byte the
//!   memfd; all-zero pages are holes. No header, so it can be mapped directly.
//! - **Compressed image**: zstd chunks of [`compressed::CHUNK_PAGES`] pages, each decodable on
//!   its own, then a state-file container (manifest + chunk index), then a 16-byte trailer.
//! - **Diff image**: a state-file container (manifest naming the parent + dirty-page bitmap),
//!   padded to a page, then a sparse data area laid out like a raw image holding only the
//!   dirtied pages.

mod bitmap;
pub mod compressed;
pub mod diff;
mod error;
mod id;
mod layout;
mod manifest;
pub mod merge;
pub mod raw;
mod reader;
mod source;

pub use bitmap::PageBitmap;
pub use error::ImageError;
pub use id::SnapshotId;
pub use layout::{LayoutError, MemoryLayout, RamRange, MAX_RANGES};
pub use manifest::{ImageKind, MemoryManifest};
pub use reader::{FdMemory, GuestRamReader};
pub use source::PageSource;

/// Bytes per page, the unit of every image, bitmap and engine.
pub const PAGE_SIZE: usize = 4096;
/// [`PAGE_SIZE`] as a u64.
pub const PAGE_SIZE_U64: u64 = PAGE_SIZE as u64;

/// Statistics of one image write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Pages written with data (non-zero).
    pub data_pages: u64,
    /// Bytes written to the file (payload, after compression).
    pub bytes_written: u64,
}

/// True when every byte of the page at `ptr` is zero.
///
/// # Safety
/// `ptr` must be valid for reads of [`PAGE_SIZE`] bytes and 8-byte aligned.
pub(crate) unsafe fn page_is_zero(ptr: *const u8) -> bool {
    let words = ptr.cast::<u64>();
    let mut i = 0;
    while i < PAGE_SIZE / 8 {
        // SAFETY: the caller guarantees `PAGE_SIZE` readable, aligned bytes; `i + 7 < 512`.
        let (a, b, c, d, e, f, g, h) = unsafe {
            (
                words.add(i).read_volatile(),
                words.add(i + 1).read_volatile(),
                words.add(i + 2).read_volatile(),
                words.add(i + 3).read_volatile(),
                words.add(i + 4).read_volatile(),
                words.add(i + 5).read_volatile(),
                words.add(i + 6).read_volatile(),
                words.add(i + 7).read_volatile(),
            )
        };
        if a | b | c | d | e | f | g | h != 0 {
            return false;
        }
        i += 8;
    }
    true
}

/// True when every byte of `buf` is zero.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let (head, mid, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to splits at the aligned middle.
        unsafe { buf.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}
