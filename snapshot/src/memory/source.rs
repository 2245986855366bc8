//! One way to read pages from any image: raw, compressed, or a chain of diffs on top of one.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{
    raw::pread_exact, reader::data_extents, ImageError, ImageKind, MemoryLayout, PageBitmap,
    SnapshotId, PAGE_SIZE, PAGE_SIZE_U64,
};

/// A readable store of pages laid out as a layout's page numbers.
pub(crate) trait PageStore: Send {
    /// Fills `buf` (a whole number of pages) with pages `first ..`.
    fn read_run(&mut self, first: u64, buf: &mut [u8]) -> Result<(), ImageError>;
    /// Pages that may hold non-zero data; all others read as zero.
    fn present(&mut self) -> Result<PageBitmap, ImageError>;
}

/// A raw full image opened for reading.
pub(crate) struct RawImage {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pages: u64,
}

impl RawImage {
    pub(crate) fn open(path: &Path, layout: &MemoryLayout) -> Result<Self, ImageError> {
        let io_err = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len < layout.size() {
            return Err(ImageError::TooShort {
                path: path.to_path_buf(),
                len,
                need: layout.size(),
            });
        }
        Ok(RawImage {
            file,
            path: path.to_path_buf(),
            pages: layout.pages(),
        })
    }
}

impl PageStore for RawImage {
    fn read_run(&mut self, first: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        pread_exact(&self.file, buf, first * PAGE_SIZE_U64).map_err(|source| ImageError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn present(&mut self) -> Result<PageBitmap, ImageError> {
        let mut b = PageBitmap::new(self.pages);
        let extents =
            data_extents(&self.file, 0, self.pages * PAGE_SIZE_U64).map_err(|source| {
                ImageError::Io {
                    path: self.path.clone(),
                    source,
                }
            })?;
        for (off, len) in extents {
            b.set_range(off / PAGE_SIZE_U64, len.div_ceil(PAGE_SIZE_U64));
        }
        Ok(b)
    }
}

/// Reads pages of a snapshot's memory, whatever its image kind.
///
/// Opening checks everything that can be checked up front: the file is at least as long as the
/// layout needs (so a mapping of it can never SIGBUS at open time), headers and chunk indexes
/// are valid, and every diff names the image before it as its parent.
/// Reads take `&mut self` (a decoded-chunk cache lives inside); a source is `Send` and is
/// normally owned by one engine thread.
pub struct PageSource {
    layout: MemoryLayout,
    kind: ImageKind,
    id: Option<SnapshotId>,
    base: Box<dyn PageStore>,
    raw: Option<(File, PathBuf)>,
    diffs: Vec<super::diff::DiffImage>,
}

impl std::fmt::Debug for PageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageSource")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("diffs", &self.diffs.len())
            .finish()
    }
}

impl PageSource {
    /// Opens a raw full image made for `layout`.
    ///
    /// # Errors
    /// [`ImageError::Io`], [`ImageError::TooShort`].
    pub fn open_raw(path: &Path, layout: &MemoryLayout) -> Result<Self, ImageError> {
        let image = RawImage::open(path, layout)?;
        let raw = Some((
            image.file.try_clone().map_err(|source| ImageError::Io {
                path: path.to_path_buf(),
                source,
            })?,
            path.to_path_buf(),
        ));
        Ok(PageSource {
            layout: layout.clone(),
            kind: ImageKind::Raw,
            id: None,
            base: Box::new(image),
            raw,
            diffs: Vec::new(),
        })
    }

    /// Opens a compressed full image made for `layout`.
    ///
    /// # Errors
    /// [`ImageError::Io`], [`ImageError::Header`], [`ImageError::WrongKind`],
    /// [`ImageError::LayoutMismatch`], [`ImageError::BadChunk`].
    pub fn open_compressed(path: &Path, layout: &MemoryLayout) -> Result<Self, ImageError> {
        Self::compressed(path, Some(layout))
    }

    /// Opens a compressed full image with the layout its own manifest records (for a page
    /// server, which knows image offsets, not the VM's layout).
    ///
    /// # Errors
    /// As [`PageSource::open_compressed`], but never `LayoutMismatch`.
    pub fn open_compressed_own_layout(path: &Path) -> Result<Self, ImageError> {
        Self::compressed(path, None)
    }

    fn compressed(path: &Path, layout: Option<&MemoryLayout>) -> Result<Self, ImageError> {
        let image = super::compressed::CompressedImage::open(path, layout)?;
        let id = Some(image.manifest().id);
        Ok(PageSource {
            layout: image.manifest().layout.clone(),
            kind: ImageKind::Compressed,
            id,
            base: Box::new(image),
            raw: None,
            diffs: Vec::new(),
        })
    }

    /// Stacks the diff images `diffs` (oldest first) on top of this source. `base_id` is the
    /// id of this source's snapshot (from its state file; a compressed image also carries it
    /// and must agree). Every diff must name the image before it as its parent.
    ///
    /// # Errors
    /// [`ImageError::WrongParent`] for a diff out of order or from another chain, plus the
    /// errors of opening each diff.
    pub fn with_diffs<P: AsRef<Path>>(
        mut self,
        base_id: SnapshotId,
        diffs: &[P],
    ) -> Result<Self, ImageError> {
        let mut expected = self.current_id().unwrap_or(base_id);
        if let Some(own) = self.current_id() {
            if own != base_id {
                return Err(ImageError::WrongParent {
                    path: PathBuf::new(),
                    found: own,
                    expected: base_id,
                });
            }
        }
        for path in diffs {
            let diff = super::diff::DiffImage::open(path.as_ref(), &self.layout)?;
            let m = diff.manifest();
            if m.parent != Some(expected) {
                return Err(ImageError::WrongParent {
                    path: path.as_ref().to_path_buf(),
                    found: m.parent.unwrap_or(SnapshotId(0)),
                    expected,
                });
            }
            expected = m.id;
            self.diffs.push(diff);
        }
        if !self.diffs.is_empty() {
            self.kind = ImageKind::Diff;
            self.raw = None;
        }
        Ok(self)
    }

    fn current_id(&self) -> Option<SnapshotId> {
        self.diffs.last().map(|d| d.manifest().id).or(self.id)
    }

    /// The layout the source was opened for.
    pub fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    /// Raw, Compressed, or Diff when diffs are stacked on the base.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// The id of the topmost image, when the images carry one (compressed and diff images do;
    /// a raw image's id lives in its state file).
    pub fn id(&self) -> Option<SnapshotId> {
        self.current_id()
    }

    /// The raw image file and its path, when the source is a single raw full image (what the
    /// mmap engine maps).
    pub fn raw_file(&self) -> Option<(&File, &Path)> {
        self.raw.as_ref().map(|(f, p)| (f, p.as_path()))
    }

    /// Fills `buf` with pages `first .. first + buf.len() / PAGE_SIZE`.
    ///
    /// # Errors
    /// [`ImageError::OutOfRange`] if `buf` is not whole pages inside the layout; an I/O or
    /// decoding error of the image (a file truncated under a running restore gives
    /// [`ImageError::Io`] with `UnexpectedEof`).
    pub fn read_pages(&mut self, first: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let count = (buf.len() / PAGE_SIZE) as u64;
        let end = first.saturating_add(count);
        if !buf.len().is_multiple_of(PAGE_SIZE) || end > self.layout.pages() {
            return Err(ImageError::OutOfRange {
                first,
                end,
                pages: self.layout.pages(),
            });
        }
        if self.diffs.is_empty() {
            return self.base.read_run(first, buf);
        }
        // Group consecutive pages served by the same image (the topmost diff holding the page,
        // else the base) into one read.
        let mut page = first;
        while page < end {
            let owner = self.owner(page);
            let mut stop = page + 1;
            while stop < end && self.owner(stop) == owner {
                stop += 1;
            }
            let slice = &mut buf
                [((page - first) as usize) * PAGE_SIZE..((stop - first) as usize) * PAGE_SIZE];
            match owner {
                Some(i) => self.diffs[i].read_run(page, slice)?,
                None => self.base.read_run(page, slice)?,
            }
            page = stop;
        }
        Ok(())
    }

    fn owner(&self, page: u64) -> Option<usize> {
        self.diffs.iter().rposition(|d| d.bitmap().get(page))
    }

    /// Pages that may hold non-zero data; every other page reads as zero. For a raw image this
    /// asks the file system for its data extents (`SEEK_DATA`).
    ///
    /// # Errors
    /// An I/O error of the image.
    pub fn present_pages(&mut self) -> Result<PageBitmap, ImageError> {
        let mut b = self.base.present()?;
        for d in &self.diffs {
            b.or(d.bitmap());
        }
        Ok(b)
    }
}
