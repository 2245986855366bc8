//! Compressed full images: zstd chunks, each decodable on its own, found through an index.
//!
//! Layout: the chunks back to back from offset 0 (all-zero chunks are not stored), then a
//! state-file container holding [`SectionId::IMAGE_MANIFEST`] (a [`MemoryManifest`] of kind
//! `Compressed`) and [`SectionId::CHUNK_INDEX`] (a [`ChunkIndex`]), then a 16-byte trailer:
//! the container's offset (u64 LE) and [`TRAILER_MAGIC`]. The index is checked against the
//! file length before any chunk is read, so one page costs one `pread` of its chunk and one
//! decode.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::raw::{host_bases, pread_exact};
use super::source::PageStore;
use super::{
    is_zero, GuestRamReader, ImageError, ImageKind, MemoryLayout, MemoryManifest, PageBitmap,
    SnapshotId, WriteStats, PAGE_SIZE, PAGE_SIZE_U64,
};
use crate::format::{write_atomic, SectionId, StateFile, StateFileWriter};

/// Pages per chunk written by this build (64 pages = 256 KiB).
pub const CHUNK_PAGES: u32 = 64;
/// Largest chunk a reader accepts, in pages.
pub const MAX_CHUNK_PAGES: u32 = 1024;
/// zstd level used when writing (level 1: see DESIGN.md for the measurements).
pub const DEFAULT_LEVEL: i32 = 1;
/// Last 8 bytes of a compressed image.
pub const TRAILER_MAGIC: [u8; 8] = *b"ZYGZSTD1";
/// Version of the compressed image's sections.
pub const COMPRESSED_SECTION_VERSION: u8 = 1;

/// Where one chunk lives. `len == 0` means the chunk is all zero and not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// Byte offset of the compressed chunk in the file.
    pub offset: u64,
    /// Compressed length in bytes.
    pub len: u32,
}

/// The chunk index of a compressed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkIndex {
    /// Pages per chunk (the last chunk may be shorter).
    pub chunk_pages: u32,
    /// One entry per chunk, in page order.
    pub chunks: Vec<ChunkEntry>,
}

impl ChunkIndex {
    /// Checks the index against a layout of `pages` pages and a data area of `data_end` bytes
    /// (where the container begins). Returns the first bad chunk.
    pub fn validate(&self, pages: u64, data_end: u64) -> Result<(), u64> {
        if self.chunk_pages == 0 || self.chunk_pages > MAX_CHUNK_PAGES {
            return Err(0);
        }
        let count = pages.div_ceil(u64::from(self.chunk_pages));
        if self.chunks.len() as u64 != count {
            return Err(self.chunks.len().min(count as usize) as u64);
        }
        let max_len = zstd::zstd_safe::compress_bound(self.chunk_pages as usize * PAGE_SIZE) as u64;
        for (i, c) in self.chunks.iter().enumerate() {
            let end = c.offset.checked_add(u64::from(c.len));
            if u64::from(c.len) > max_len || end.is_none_or(|e| e > data_end) {
                return Err(i as u64);
            }
        }
        Ok(())
    }
}

/// Writes a compressed full image of `mem` at `path`, atomically, with zstd `level`.
///
/// The VM must be paused for the duration (see [`GuestRamReader`]).
///
/// # Errors
/// [`ImageError::MemoryNotCovered`], [`ImageError::Write`] (nothing left at `path`).
pub fn write_compressed<R: GuestRamReader + ?Sized>(
    mem: &R,
    layout: &MemoryLayout,
    id: SnapshotId,
    level: i32,
    path: &Path,
) -> Result<WriteStats, ImageError> {
    let bases = host_bases(mem, layout)?;
    let mut present = PageBitmap::new(layout.pages());
    for r in layout.ranges() {
        let extents = mem
            .data_extents(r.offset, r.len)
            .map_err(|e| ImageError::Write(io_write_error(path, e)))?;
        for (off, len) in extents {
            present.set_range(off / PAGE_SIZE_U64, len.div_ceil(PAGE_SIZE_U64));
        }
    }
    let manifest = MemoryManifest {
        id,
        parent: None,
        kind: ImageKind::Compressed,
        layout: layout.clone(),
    };
    let mut stats = WriteStats::default();
    let mut header_err = None;
    let written = write_atomic(path, |file| {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &*file);
        let mut compressor = zstd::bulk::Compressor::new(level)?;
        let chunk_bytes = CHUNK_PAGES as usize * PAGE_SIZE;
        let mut buf = vec![0u8; chunk_bytes];
        let mut packed = Vec::with_capacity(zstd::zstd_safe::compress_bound(chunk_bytes));
        let mut chunks = Vec::new();
        let mut offset = 0u64;
        let pages = layout.pages();
        let mut first = 0u64;
        while first < pages {
            let n = (pages - first).min(u64::from(CHUNK_PAGES));
            let bytes = &mut buf[..n as usize * PAGE_SIZE];
            let any = (first..first + n).any(|p| present.get(p));
            if !any || {
                copy_pages(layout, &bases, first, bytes);
                is_zero(bytes)
            } {
                chunks.push(ChunkEntry { offset, len: 0 });
            } else {
                packed.clear();
                compressor.compress_to_buffer(bytes, &mut packed)?;
                out.write_all(&packed)?;
                chunks.push(ChunkEntry {
                    offset,
                    len: packed.len() as u32,
                });
                offset += packed.len() as u64;
                stats.data_pages += n;
                stats.bytes_written += packed.len() as u64;
            }
            first += n;
        }
        let index = ChunkIndex {
            chunk_pages: CHUNK_PAGES,
            chunks,
        };
        let mut container = StateFileWriter::new();
        if let Err(e) = container
            .encoded(
                SectionId::IMAGE_MANIFEST,
                COMPRESSED_SECTION_VERSION,
                &manifest,
            )
            .and_then(|w| w.encoded(SectionId::CHUNK_INDEX, COMPRESSED_SECTION_VERSION, &index))
        {
            header_err = Some(e);
            return Err(std::io::Error::other(
                "chunk index over the state-file caps",
            ));
        }
        out.write_all(&container.to_bytes())?;
        out.write_all(&offset.to_le_bytes())?;
        out.write_all(&TRAILER_MAGIC)?;
        out.flush()
    });
    match (written, header_err) {
        (_, Some(source)) => Err(ImageError::Header {
            path: path.to_path_buf(),
            source,
        }),
        (Err(e), None) => Err(e.into()),
        (Ok(()), None) => Ok(stats),
    }
}

fn io_write_error(path: &Path, source: std::io::Error) -> crate::format::WriteError {
    crate::format::WriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Copies pages `first ..` of the layout (which may span ranges) into `buf`.
fn copy_pages(layout: &MemoryLayout, bases: &[*const u8], first: u64, buf: &mut [u8]) {
    let mut done = 0usize;
    let mut offset = first * PAGE_SIZE_U64;
    for (r, &base) in layout.ranges().iter().zip(bases) {
        if done == buf.len() {
            break;
        }
        if offset < r.offset || offset >= r.offset + r.len {
            continue;
        }
        let n = ((r.offset + r.len - offset) as usize).min(buf.len() - done);
        // SAFETY: `base` is valid for `r.len` bytes (GuestRamReader contract) and
        // `offset - r.offset + n <= r.len`; `buf[done..done + n]` is ours.
        unsafe {
            std::ptr::copy_nonoverlapping(
                base.add((offset - r.offset) as usize),
                buf[done..].as_mut_ptr(),
                n,
            )
        };
        done += n;
        offset += n as u64;
    }
}

/// Reads and checks the header of a compressed image: trailer, container, manifest, index.
/// Returns the manifest and the validated index. With `layout`, the image must have been made
/// for it; without, the manifest's own (validated) layout is used, as a page server does.
///
/// # Errors
/// [`ImageError::Io`], [`ImageError::Header`], [`ImageError::WrongKind`],
/// [`ImageError::LayoutMismatch`], [`ImageError::BadChunk`].
pub fn read_header(
    file: &File,
    path: &Path,
    layout: Option<&MemoryLayout>,
) -> Result<(MemoryManifest, ChunkIndex), ImageError> {
    let io_err = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let header_err = |source| ImageError::Header {
        path: path.to_path_buf(),
        source,
    };
    let wrong = || ImageError::WrongKind {
        path: path.to_path_buf(),
        expected: "compressed",
    };
    let len = file.metadata().map_err(io_err)?.len();
    if len < 16 {
        return Err(wrong());
    }
    let mut trailer = [0u8; 16];
    pread_exact(file, &mut trailer, len - 16).map_err(io_err)?;
    if trailer[8..] != TRAILER_MAGIC {
        return Err(wrong());
    }
    let container_at = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
    if container_at > len - 16 {
        return Err(ImageError::BadChunk {
            path: path.to_path_buf(),
            chunk: 0,
        });
    }
    let container_len = len - 16 - container_at;
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(container_at)).map_err(io_err)?;
    let (container, consumed) =
        StateFile::read_prefix(&mut reader, container_len).map_err(header_err)?;
    if consumed != container_len {
        return Err(header_err(crate::format::StateFileError::TrailingBytes {
            extra: container_len - consumed,
        }));
    }
    let (_, manifest): (_, MemoryManifest) = container
        .decode(SectionId::IMAGE_MANIFEST, &[COMPRESSED_SECTION_VERSION])
        .map_err(header_err)?;
    if manifest.kind != ImageKind::Compressed || manifest.parent.is_some() {
        return Err(wrong());
    }
    if layout.is_some_and(|l| l != &manifest.layout) {
        return Err(ImageError::LayoutMismatch {
            path: path.to_path_buf(),
        });
    }
    let (_, index): (_, ChunkIndex) = container
        .decode(SectionId::CHUNK_INDEX, &[COMPRESSED_SECTION_VERSION])
        .map_err(header_err)?;
    index
        .validate(manifest.layout.pages(), container_at)
        .map_err(|chunk| ImageError::BadChunk {
            path: path.to_path_buf(),
            chunk,
        })?;
    Ok((manifest, index))
}

/// A compressed image opened and checked, with a one-chunk decode cache.
pub(crate) struct CompressedImage {
    file: File,
    path: PathBuf,
    manifest: MemoryManifest,
    index: ChunkIndex,
    pages: u64,
    decompressor: zstd::bulk::Decompressor<'static>,
    packed: Vec<u8>,
    cache: Vec<u8>,
    cached: Option<u64>,
}

impl CompressedImage {
    pub(crate) fn open(path: &Path, layout: Option<&MemoryLayout>) -> Result<Self, ImageError> {
        let file = File::open(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (manifest, index) = read_header(&file, path, layout)?;
        let pages = manifest.layout.pages();
        let decompressor = zstd::bulk::Decompressor::new().map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let chunk_bytes = index.chunk_pages as usize * PAGE_SIZE;
        Ok(CompressedImage {
            file,
            path: path.to_path_buf(),
            manifest,
            pages,
            packed: Vec::new(),
            cache: vec![0; chunk_bytes],
            cached: None,
            index,
            decompressor,
        })
    }

    pub(crate) fn manifest(&self) -> &MemoryManifest {
        &self.manifest
    }

    fn load(&mut self, chunk: u64) -> Result<(), ImageError> {
        if self.cached == Some(chunk) {
            return Ok(());
        }
        self.cached = None;
        let cp = u64::from(self.index.chunk_pages);
        let pages = (self.pages - chunk * cp).min(cp) as usize;
        let want = pages * PAGE_SIZE;
        let entry = self.index.chunks[chunk as usize];
        if entry.len == 0 {
            self.cache[..want].fill(0);
        } else {
            self.packed.resize(entry.len as usize, 0);
            pread_exact(&self.file, &mut self.packed, entry.offset).map_err(|source| {
                ImageError::Io {
                    path: self.path.clone(),
                    source,
                }
            })?;
            let bad = || ImageError::Decompress {
                path: self.path.clone(),
                chunk,
            };
            let n = self
                .decompressor
                .decompress_to_buffer(&self.packed, &mut self.cache[..want])
                .map_err(|_| bad())?;
            if n != want {
                return Err(bad());
            }
        }
        self.cached = Some(chunk);
        Ok(())
    }
}

impl PageStore for CompressedImage {
    fn read_run(&mut self, first: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let cp = u64::from(self.index.chunk_pages);
        let mut page = first;
        let mut done = 0usize;
        while done < buf.len() {
            let chunk = page / cp;
            self.load(chunk)?;
            let within = ((page - chunk * cp) as usize) * PAGE_SIZE;
            let avail = ((self.pages - chunk * cp).min(cp) as usize) * PAGE_SIZE - within;
            let n = avail.min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.cache[within..within + n]);
            done += n;
            page += (n / PAGE_SIZE) as u64;
        }
        Ok(())
    }

    fn present(&mut self) -> Result<PageBitmap, ImageError> {
        let cp = u64::from(self.index.chunk_pages);
        let mut b = PageBitmap::new(self.pages);
        for (i, c) in self.index.chunks.iter().enumerate() {
            if c.len != 0 {
                b.set_range(i as u64 * cp, cp);
            }
        }
        Ok(b)
    }
}
