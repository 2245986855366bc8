//! The fields of the file operations: paths, file metadata, directory entries.

use super::codec::{Reader, Writer};
use super::DecodeError;

/// Longest path a file operation takes, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;

/// Most bytes one `WriteFile` carries or one `ReadFile` returns: what fits a frame beside the
/// longest path. Larger files go in several chunks at increasing offsets.
pub const MAX_FILE_CHUNK: usize = super::MAX_FRAME - 2 * MAX_PATH;

/// Whether `path` is 1 to [`MAX_PATH`] bytes without NUL.
pub(super) fn valid_path(path: &[u8]) -> bool {
    !path.is_empty() && path.len() <= MAX_PATH && !path.contains(&0)
}

/// What kind of file a path names (`st_mode & S_IFMT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FileKind {
    /// A regular file.
    File = 1,
    /// A directory.
    Dir = 2,
    /// A symbolic link (not followed).
    Symlink = 3,
    /// Anything else: device, FIFO, socket.
    Other = 4,
}

impl FileKind {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::Other,
            _ => return Err(DecodeError::Invalid),
        })
    }
}

/// A file's metadata (`lstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStat {
    /// Its kind.
    pub kind: FileKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, seconds since the Unix epoch.
    pub mtime: i64,
}

impl FileStat {
    pub(super) const LEN: usize = 1 + 4 + 8 + 8;

    pub(super) fn write(&self, w: &mut Writer<'_>) {
        w.u8(self.kind as u8);
        w.u32(self.mode);
        w.u64(self.size);
        w.u64(self.mtime as u64);
    }

    pub(super) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(FileStat {
            kind: FileKind::read(r)?,
            mode: r.u32()?,
            size: r.u64()?,
            mtime: r.u64()? as i64,
        })
    }
}

/// One directory entry: `kind` (`u8`), `size` (`u64`), name length (`u16`), name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// Its kind.
    pub kind: FileKind,
    /// Size in bytes (0 when it could not be read).
    pub size: u64,
    /// Its name in the directory (no `/`, at most 65535 bytes).
    pub name: &'a [u8],
}

impl<'a> DirEntry<'a> {
    /// Bytes [`DirEntry::write_to`] writes.
    pub const fn encoded_len(&self) -> usize {
        1 + 8 + 2 + self.name.len()
    }

    /// Appends the entry's encoding to the start of `out`; returns its length, or `None` when
    /// `out` is too short or the name longer than 65535 bytes.
    pub fn write_to(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.encoded_len();
        let name_len = u16::try_from(self.name.len()).ok()?;
        let out = out.get_mut(..len)?;
        out[0] = self.kind as u8;
        out[1..9].copy_from_slice(&self.size.to_le_bytes());
        out[9..11].copy_from_slice(&name_len.to_le_bytes());
        out[11..].copy_from_slice(self.name);
        Some(len)
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let kind = FileKind::read(r)?;
        let size = r.u64()?;
        let name_len = r.u16()? as usize;
        Ok(DirEntry {
            kind,
            size,
            name: r.take(name_len)?,
        })
    }
}

/// Directory entries packed one after the other as [`DirEntry::write_to`] writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entries<'a>(&'a [u8]);

impl<'a> Entries<'a> {
    /// Wraps packed entries: `None` unless they parse to the last byte.
    pub fn new(packed: &'a [u8]) -> Option<Self> {
        let entries = Entries(packed);
        let mut r = Reader::new(packed);
        while !r.is_empty() {
            DirEntry::read(&mut r).ok()?;
        }
        Some(entries)
    }

    /// The packed bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The entries.
    pub fn iter(&self) -> impl Iterator<Item = DirEntry<'a>> + 'a {
        let mut r = Reader::new(self.0);
        core::iter::from_fn(move || DirEntry::read(&mut r).ok())
    }
}

/// TCP ports packed as little-endian `u16`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortList<'a>(&'a [u8]);

impl<'a> PortList<'a> {
    /// Wraps packed ports: `None` for an odd length.
    pub fn new(packed: &'a [u8]) -> Option<Self> {
        (packed.len() % 2 == 0).then_some(PortList(packed))
    }

    /// The packed bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The ports.
    pub fn iter(&self) -> impl Iterator<Item = u16> + 'a {
        self.0
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
    }
}
