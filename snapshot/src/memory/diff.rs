//! Diff images: only the pages dirtied since the parent snapshot.
//!
//! Layout: a state-file container with [`SectionId::IMAGE_MANIFEST`] (a [`MemoryManifest`]
//! of kind `Diff` naming the parent) and [`SectionId::DIFF_BITMAP`] (the [`PageBitmap`] of
//! pages the diff holds), zero-padded to a page boundary, then a data area laid out like a raw
//! image (page `i` at `data_offset + i * PAGE_SIZE`) holding the dirtied pages. A dirtied page
//! that is zero now is in the bitmap and is a hole in the data area.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::raw::{for_each_data_run, host_bases, pread_exact, pwrite_all};
use super::source::PageStore;
use super::{
    GuestRamReader, ImageError, ImageKind, MemoryLayout, MemoryManifest, PageBitmap, SnapshotId,
    WriteStats, PAGE_SIZE_U64,
};
use crate::format::{write_atomic, SectionId, StateFile, StateFileWriter};

/// Version of the diff image's sections.
pub const DIFF_SECTION_VERSION: u8 = 1;

/// Writes a diff image of the pages of `dirty` (one bit per page of `layout`), naming
/// `parent`, at `path`, atomically.
///
/// The VM must be paused for the duration (see [`GuestRamReader`]).
///
/// # Errors
/// [`ImageError::OutOfRange`] if `dirty` does not cover the layout's pages exactly;
/// [`ImageError::MemoryNotCovered`]; [`ImageError::Write`] (nothing left at `path`).
pub fn write_diff<R: GuestRamReader + ?Sized>(
    mem: &R,
    layout: &MemoryLayout,
    dirty: &PageBitmap,
    id: SnapshotId,
    parent: SnapshotId,
    path: &Path,
) -> Result<WriteStats, ImageError> {
    if dirty.pages() != layout.pages() {
        return Err(ImageError::OutOfRange {
            first: 0,
            end: dirty.pages(),
            pages: layout.pages(),
        });
    }
    let bases = host_bases(mem, layout)?;
    let manifest = MemoryManifest {
        id,
        parent: Some(parent),
        kind: ImageKind::Diff,
        layout: layout.clone(),
    };
    let mut header = StateFileWriter::new();
    header
        .encoded(SectionId::IMAGE_MANIFEST, DIFF_SECTION_VERSION, &manifest)
        .and_then(|w| w.encoded(SectionId::DIFF_BITMAP, DIFF_SECTION_VERSION, dirty))
        .map_err(|source| ImageError::Header {
            path: path.to_path_buf(),
            source,
        })?;
    let header = header.to_bytes();
    let data_offset = (header.len() as u64).div_ceil(PAGE_SIZE_U64) * PAGE_SIZE_U64;
    let mut stats = WriteStats::default();
    write_atomic(path, |file| {
        file.write_all(&header)?;
        file.set_len(data_offset + layout.size())?;
        for_each_data_run(mem, layout, &bases, Some(dirty), |offset, ptr, len| {
            pwrite_all(file, ptr, len, data_offset + offset)?;
            stats.data_pages += len as u64 / PAGE_SIZE_U64;
            stats.bytes_written += len as u64;
            Ok(())
        })
    })?;
    Ok(stats)
}

/// A diff image opened and checked.
pub(crate) struct DiffImage {
    file: File,
    path: PathBuf,
    manifest: MemoryManifest,
    bitmap: PageBitmap,
    data_offset: u64,
}

impl DiffImage {
    pub(crate) fn open(path: &Path, layout: &MemoryLayout) -> Result<Self, ImageError> {
        let io_err = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let header_err = |source| ImageError::Header {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let mut reader = BufReader::new(&file);
        reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let (container, consumed) = StateFile::read_prefix(&mut reader, len).map_err(header_err)?;
        let (_, manifest): (_, MemoryManifest) = container
            .decode(SectionId::IMAGE_MANIFEST, &[DIFF_SECTION_VERSION])
            .map_err(header_err)?;
        if manifest.kind != ImageKind::Diff || manifest.parent.is_none() {
            return Err(ImageError::WrongKind {
                path: path.to_path_buf(),
                expected: "diff",
            });
        }
        if &manifest.layout != layout {
            return Err(ImageError::LayoutMismatch {
                path: path.to_path_buf(),
            });
        }
        let (_, bitmap): (_, PageBitmap) = container
            .decode(SectionId::DIFF_BITMAP, &[DIFF_SECTION_VERSION])
            .map_err(header_err)?;
        if bitmap.pages() != layout.pages() {
            return Err(ImageError::LayoutMismatch {
                path: path.to_path_buf(),
            });
        }
        let data_offset = consumed.div_ceil(PAGE_SIZE_U64) * PAGE_SIZE_U64;
        if len < data_offset + layout.size() {
            return Err(ImageError::TooShort {
                path: path.to_path_buf(),
                len,
                need: data_offset + layout.size(),
            });
        }
        Ok(DiffImage {
            file,
            path: path.to_path_buf(),
            manifest,
            bitmap,
            data_offset,
        })
    }

    pub(crate) fn manifest(&self) -> &MemoryManifest {
        &self.manifest
    }

    pub(crate) fn bitmap(&self) -> &PageBitmap {
        &self.bitmap
    }
}

impl PageStore for DiffImage {
    fn read_run(&mut self, first: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        pread_exact(&self.file, buf, self.data_offset + first * PAGE_SIZE_U64).map_err(|source| {
            ImageError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }

    fn present(&mut self) -> Result<PageBitmap, ImageError> {
        Ok(self.bitmap.clone())
    }
}
