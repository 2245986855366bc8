//! Squashing any source (a diff chain, a compressed image) into one raw full image.

use std::path::Path;

use super::raw::{pwrite_all, MAX_RUN_PAGES};
use super::{is_zero, ImageError, PageSource, WriteStats, PAGE_SIZE, PAGE_SIZE_U64};
use crate::format::write_atomic;

/// Writes every page of `source` as a raw full image at `path`, atomically: merges a chain
/// (full + diffs, opened with [`PageSource::with_diffs`], which checked each parent) into one
/// full image, or decompresses a compressed image so the mmap engine can map it.
///
/// # Errors
/// A read error of the source, or [`ImageError::Write`] (nothing left at `path`).
pub fn merge_to_raw(source: &mut PageSource, path: &Path) -> Result<WriteStats, ImageError> {
    let present = source.present_pages()?;
    let size = source.layout().size();
    let mut buf = vec![0u8; MAX_RUN_PAGES as usize * PAGE_SIZE];
    let mut stats = WriteStats::default();
    let mut read_err = None;
    let written = write_atomic(path, |file| {
        file.set_len(size)?;
        for (first, count) in present.runs() {
            let mut page = first;
            while page < first + count {
                let n = (first + count - page).min(MAX_RUN_PAGES);
                let chunk = &mut buf[..n as usize * PAGE_SIZE];
                if let Err(e) = source.read_pages(page, chunk) {
                    read_err = Some(e);
                    return Err(std::io::Error::other("page source failed"));
                }
                let zero: Vec<bool> = chunk.chunks(PAGE_SIZE).map(is_zero).collect();
                let mut i = 0;
                while i < zero.len() {
                    let mut j = i;
                    while j < zero.len() && !zero[j] {
                        j += 1;
                    }
                    if j > i {
                        let bytes = &chunk[i * PAGE_SIZE..j * PAGE_SIZE];
                        let at = (page + i as u64) * PAGE_SIZE_U64;
                        pwrite_all(file, bytes.as_ptr(), bytes.len(), at)?;
                        stats.data_pages += (j - i) as u64;
                        stats.bytes_written += bytes.len() as u64;
                    }
                    i = j + 1;
                }
                page += n;
            }
        }
        Ok(())
    });
    match (written, read_err) {
        (_, Some(e)) => Err(e),
        (Err(e), None) => Err(e.into()),
        (Ok(()), None) => Ok(stats),
    }
}
