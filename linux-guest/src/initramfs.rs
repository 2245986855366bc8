//! An initramfs writer: the uncompressed `newc` cpio format Linux unpacks into its rootfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Uncompressed on purpose: on a host that emulates the guest's CPL0 code, inflating a 1 MB
//! gzip archive took 78 s (LINUX-GUEST.md §5, run F).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

const NEWC_MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
/// Mode of a directory the writer adds because an entry below it needs it.
const PARENT_DIR_MODE: u32 = 0o755;

/// Errors from writing an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A path is empty, or has a `.`, `..` or empty component.
    #[error("invalid initramfs path {0:?}: use /a/b/c without . or .. components")]
    InvalidPath(String),
    /// A path names an entry below something that is not a directory.
    #[error("initramfs path {path:?} is below {parent:?}, which is not a directory")]
    ParentNotDirectory {
        /// The entry's path.
        path: String,
        /// The ancestor that is a file or symlink.
        parent: String,
    },
    /// A file or symlink target is larger than newc's 32-bit size field.
    #[error("initramfs entry {path:?} is {size} bytes; newc holds at most 4 GiB - 1")]
    TooLarge {
        /// The entry's path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A host file to copy in could not be read.
    #[error("cannot read {host} for initramfs entry {path:?}: {source}")]
    ReadHostFile {
        /// The host file.
        host: PathBuf,
        /// The entry's path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The archive could not be written.
    #[error("cannot write the initramfs to {path}: {source}")]
    Write {
        /// Where it was being written.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What one archive entry holds.
#[derive(Clone, Debug)]
enum Content {
    Dir,
    Bytes(Vec<u8>),
    HostFile(PathBuf),
    Symlink(String),
}

#[derive(Clone, Debug)]
struct Entry {
    /// Permission bits (`0o7777` at most); the file type comes from `content`.
    mode: u32,
    content: Content,
}

/// An initramfs being put together: directories, regular files and symbolic links, owned by
/// root, with modification time 0 so the same inputs give the same bytes.
///
/// Paths are absolute in the guest (`/bin/sh`; a missing leading `/` is accepted). Adding a
/// path again replaces the earlier entry. Missing parent directories are added with mode
/// `0755` when the archive is written. No device nodes: the guest kernel's `devtmpfs`
/// provides them. Host files are read when the archive is written.
///
/// ```
/// use zygote_linux_guest::Initramfs;
///
/// let mut initramfs = Initramfs::new();
/// initramfs
///     .file("/init", "#!/bin/sh\necho hi\n", 0o755)
///     .dir("/proc", 0o555)
///     .symlink("/bin/sh", "busybox");
/// let mut bytes = Vec::new();
/// initramfs.write(&mut bytes).unwrap();
/// assert!(bytes.starts_with(b"070701"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Initramfs {
    /// Entries by normalized path (no leading `/`); sorted, so parents come before children.
    entries: BTreeMap<String, Result<Entry, String>>,
}

impl Initramfs {
    /// An empty archive (it will hold only the trailer, and the parents of what is added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory with permission bits `mode` (e.g. `0o755`).
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.add(path, mode, Content::Dir)
    }

    /// Adds a regular file holding `bytes`, with permission bits `mode`.
    pub fn file(&mut self, path: &str, bytes: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.add(path, mode, Content::Bytes(bytes.into()))
    }

    /// Adds a regular file copied from the host file `host` when the archive is written, with
    /// permission bits `mode`.
    pub fn host_file(&mut self, path: &str, host: impl Into<PathBuf>, mode: u32) -> &mut Self {
        self.add(path, mode, Content::HostFile(host.into()))
    }

    /// Adds a symbolic link at `path` pointing to `target` (relative or absolute in the guest).
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.add(path, 0o777, Content::Symlink(target.to_owned()))
    }

    /// The guest paths in the archive (normalized, without the leading `/`), sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn add(&mut self, path: &str, mode: u32, content: Content) -> &mut Self {
        let entry = Entry {
            mode: mode & 0o7777,
            content,
        };
        match normalize(path) {
            Some(key) => self.entries.insert(key, Ok(entry)),
            // Kept and reported by `write`, so the builder methods stay chainable.
            None => self.entries.insert(path.to_owned(), Err(path.to_owned())),
        };
        self
    }

    /// Writes the archive to the host file `path` (created or truncated).
    ///
    /// # Errors
    /// [`InitramfsError`] for an invalid path, an unreadable host file, an entry over 4 GiB,
    /// or a failed write.
    pub fn write_to(&self, path: &Path) -> Result<(), InitramfsError> {
        let write_error = |source| InitramfsError::Write {
            path: path.to_owned(),
            source,
        };
        let file = File::create(path).map_err(write_error)?;
        let mut out = BufWriter::new(file);
        self.write_entries(&mut out, &write_error)?;
        out.flush().map_err(write_error)
    }

    /// Writes the archive to `out`.
    ///
    /// # Errors
    /// As [`Initramfs::write_to`]; a failed write names the path `-`.
    pub fn write(&self, mut out: impl Write) -> Result<(), InitramfsError> {
        let write_error = |source| InitramfsError::Write {
            path: PathBuf::from("-"),
            source,
        };
        self.write_entries(&mut out, &write_error)
    }

    /// Writes the same tree into the host directory `root` (created if missing): directories,
    /// files and symlinks with their modes, for tools that take a directory, like
    /// `mkfs.ext4 -d`. Existing files are overwritten; an existing symlink path is an error.
    ///
    /// # Errors
    /// As [`Initramfs::write_to`], the failed write naming the host path.
    pub fn write_dir(&self, root: &Path) -> Result<(), InitramfsError> {
        let entries = self.with_parents()?;
        create_dir(root)?;
        for (path, entry) in &entries {
            let host = root.join(path);
            match &entry.content {
                Content::Dir => create_dir(&host)?,
                Content::Symlink(target) => std::os::unix::fs::symlink(target, &host)
                    .map_err(|source| host_write_error(&host, source))?,
                Content::Bytes(_) | Content::HostFile(_) => {
                    let data = entry_data(path, entry)?;
                    std::fs::write(&host, &data)
                        .map_err(|source| host_write_error(&host, source))?;
                    set_mode(&host, entry.mode)?;
                }
            }
        }
        // Directory modes last, so a read-only directory (`/proc`, 0555) was still writable
        // while its entries were added.
        for (path, entry) in entries.iter().rev() {
            if matches!(entry.content, Content::Dir) {
                set_mode(&root.join(path), entry.mode)?;
            }
        }
        Ok(())
    }

    fn write_entries(
        &self,
        out: &mut dyn Write,
        write_error: &dyn Fn(io::Error) -> InitramfsError,
    ) -> Result<(), InitramfsError> {
        let entries = self.with_parents()?;
        for (ino, (path, entry)) in (1..).zip(&entries) {
            let data = entry_data(path, entry)?;
            let header = Header::for_entry(ino, entry, path, data.len())?;
            header.write(out, path, &data).map_err(write_error)?;
        }
        Header::trailer()
            .write(out, TRAILER, &[])
            .map_err(write_error)
    }

    /// The entries with every missing parent directory added, checked.
    fn with_parents(&self) -> Result<BTreeMap<&str, Entry>, InitramfsError> {
        let mut all = BTreeMap::new();
        for (path, entry) in &self.entries {
            let entry = entry.clone().map_err(InitramfsError::InvalidPath)?;
            all.insert(path.as_str(), entry);
        }
        let dir = Entry {
            mode: PARENT_DIR_MODE,
            content: Content::Dir,
        };
        for path in self.entries.keys() {
            for parent in ancestors(path) {
                let existing = all.entry(parent).or_insert_with(|| dir.clone());
                if !matches!(existing.content, Content::Dir) {
                    return Err(InitramfsError::ParentNotDirectory {
                        path: path.clone(),
                        parent: parent.to_owned(),
                    });
                }
            }
        }
        Ok(all)
    }
}

fn host_write_error(path: &Path, source: io::Error) -> InitramfsError {
    InitramfsError::Write {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and its parents) unless it exists.
fn create_dir(dir: &Path) -> Result<(), InitramfsError> {
    std::fs::create_dir_all(dir).map_err(|source| host_write_error(dir, source))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), InitramfsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| host_write_error(path, source))
}

/// `a/b/c` for `/a/b/c` or `a/b/c`; `None` for an empty path or one with `.`, `..` or empty
/// components.
fn normalize(path: &str) -> Option<String> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let valid = !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    valid.then(|| path.to_owned())
}

/// `a` and `a/b` for `a/b/c`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(at, _)| &path[..at])
}

/// The bytes an entry's data section holds.
fn entry_data<'a>(
    path: &str,
    entry: &'a Entry,
) -> Result<std::borrow::Cow<'a, [u8]>, InitramfsError> {
    Ok(match &entry.content {
        Content::Dir => (&[][..]).into(),
        Content::Bytes(bytes) => bytes.as_slice().into(),
        Content::Symlink(target) => target.as_bytes().into(),
        Content::HostFile(host) => std::fs::read(host)
            .map_err(|source| InitramfsError::ReadHostFile {
                host: host.clone(),
                path: format!("/{path}"),
                source,
            })?
            .into(),
    })
}

/// The fields of a `newc` header that this writer sets; the rest are 0.
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
}

impl Header {
    fn for_entry(ino: u32, entry: &Entry, path: &str, size: usize) -> Result<Self, InitramfsError> {
        let (kind, nlink) = match entry.content {
            Content::Dir => (S_IFDIR, 2),
            Content::Bytes(_) | Content::HostFile(_) => (S_IFREG, 1),
            Content::Symlink(_) => (S_IFLNK, 1),
        };
        let filesize = u32::try_from(size).map_err(|_| InitramfsError::TooLarge {
            path: format!("/{path}"),
            size: size as u64,
        })?;
        Ok(Self {
            ino,
            mode: kind | entry.mode,
            nlink,
            filesize,
        })
    }

    fn trailer() -> Self {
        Self {
            ino: 0,
            mode: 0,
            nlink: 1,
            filesize: 0,
        }
    }

    /// Writes the header, `name` and `data`, each padded to 4 bytes as newc requires.
    fn write(&self, out: &mut dyn Write, name: &str, data: &[u8]) -> io::Result<()> {
        let namesize = name.len() + 1;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let fields = [
            self.ino,
            self.mode,
            0,
            0,
            self.nlink,
            0,
            self.filesize,
            0,
            0,
            0,
            0,
            namesize as u32,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str(NEWC_MAGIC);
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        out.write_all(header.as_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&[0])?;
        out.write_all(&[0; 3][..pad4(header.len() + namesize)])?;
        out.write_all(data)?;
        out.write_all(&[0; 3][..pad4(data.len())])
    }
}

/// Bytes of padding that bring `len` to a multiple of 4.
fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests;
