//! Files in the guest: write and read (in chunks), stat, list, remove,
//! mkdir.

use zygote_guest_proto::agent::{FileKind, FileStat, Request, Response, MAX_FILE_CHUNK, MAX_PATH};

use super::{refused_at, Sandbox, SandboxError};

/// Bytes per `WriteFile` or `ReadFile` request: below the protocol's [`MAX_FILE_CHUNK`] so
/// each request answers well within the connection's timeout even where the guest kernel is
/// emulated; a round trip costs little beside the data.
const CHUNK: usize = 256 * 1024;
const _: () = assert!(CHUNK <= MAX_FILE_CHUNK);

/// Permission bits of files [`Sandbox::write_file`] creates.
const FILE_MODE: u32 = 0o644;

/// Permission bits of directories [`Sandbox::mkdir`] creates.
const DIR_MODE: u32 = 0o755;

/// One entry of a guest directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Its name (bytes that are not UTF-8 replaced by U+FFFD).
    pub name: String,
    /// Its kind (a symlink is not followed).
    pub kind: FileKind,
    /// Its size in bytes.
    pub size: u64,
}

fn checked(path: &str) -> Result<&[u8], SandboxError> {
    match path.is_empty() || path.len() > MAX_PATH || path.contains('\0') {
        true => Err(SandboxError::InvalidArgument(
            "path empty, too long or with NUL",
        )),
        false => Ok(path.as_bytes()),
    }
}

impl Sandbox {
    /// Writes `data` to the guest file `path` (created with mode 0644, or truncated), in
    /// chunks of 256 KiB (the protocol allows up to [`MAX_FILE_CHUNK`]).
    ///
    /// # Errors
    /// [`SandboxError::NotFound`] when its directory does not exist; [`SandboxError::Refused`]
    /// for other refusals (permission, a directory in the way).
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<(), SandboxError> {
        let bytes = checked(path)?;
        let mut offset = 0;
        loop {
            let chunk = &data[offset..data.len().min(offset + CHUNK)];
            let request = Request::WriteFile {
                path: bytes,
                offset: offset as u64,
                truncate: offset == 0,
                mode: FILE_MODE,
                data: chunk,
            };
            self.call(&request, |response| match response {
                Response::Written => Ok(()),
                other => Err(refused_at(path, &other)),
            })?;
            offset += chunk.len();
            if offset == data.len() {
                return Ok(());
            }
        }
    }

    /// The whole guest file `path`, read in chunks of 256 KiB.
    ///
    /// # Errors
    /// [`SandboxError::NotFound`] when it does not exist.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        let bytes = checked(path)?;
        let mut data = Vec::new();
        loop {
            let request = Request::ReadFile {
                path: bytes,
                offset: data.len() as u64,
                len: CHUNK as u32,
            };
            let got = self.call(&request, |response| match response {
                Response::FileData(chunk) => {
                    data.extend_from_slice(chunk);
                    Ok(chunk.len())
                }
                other => Err(refused_at(path, &other)),
            })?;
            if got < CHUNK {
                return Ok(data);
            }
        }
    }

    /// The metadata of `path` (a final symlink is not followed).
    ///
    /// # Errors
    /// [`SandboxError::NotFound`] when it does not exist.
    pub fn stat(&self, path: &str) -> Result<FileStat, SandboxError> {
        self.call(&Request::Stat(checked(path)?), |response| match response {
            Response::Stat(stat) => Ok(stat),
            other => Err(refused_at(path, &other)),
        })
    }

    /// The entries of directory `path`, sorted by name.
    ///
    /// # Errors
    /// [`SandboxError::NotFound`] when it does not exist.
    pub fn list(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        let bytes = checked(path)?;
        let mut entries = Vec::new();
        let mut start = 0;
        loop {
            let request = Request::List { path: bytes, start };
            let next = self.call(&request, |response| match response {
                Response::Entries {
                    next,
                    entries: packed,
                } => {
                    entries.extend(packed.iter().map(|entry| DirEntry {
                        name: String::from_utf8_lossy(entry.name).into_owned(),
                        kind: entry.kind,
                        size: entry.size,
                    }));
                    Ok(next)
                }
                other => Err(refused_at(path, &other)),
            })?;
            if next == 0 || next <= start {
                return Ok(entries);
            }
            start = next;
        }
    }

    /// Removes a file or an empty directory.
    ///
    /// # Errors
    /// [`SandboxError::NotFound`]; [`SandboxError::Refused`] with `AlreadyExists` for a
    /// directory that is not empty.
    pub fn remove(&self, path: &str) -> Result<(), SandboxError> {
        self.remove_with(path, false)
    }

    /// Removes a file, or a directory and everything in it.
    ///
    /// # Errors
    /// [`SandboxError::NotFound`] when it does not exist.
    pub fn remove_all(&self, path: &str) -> Result<(), SandboxError> {
        self.remove_with(path, true)
    }

    fn remove_with(&self, path: &str, recursive: bool) -> Result<(), SandboxError> {
        let request = Request::Remove {
            path: checked(path)?,
            recursive,
        };
        self.call(&request, |response| match response {
            Response::Removed => Ok(()),
            other => Err(refused_at(path, &other)),
        })
    }

    /// Creates directory `path` (mode 0755); its parent must exist.
    ///
    /// # Errors
    /// [`SandboxError::NotFound`] when the parent does not exist; [`SandboxError::Refused`]
    /// with `AlreadyExists` when `path` does.
    pub fn mkdir(&self, path: &str) -> Result<(), SandboxError> {
        self.mkdir_with(path, false)
    }

    /// Creates directory `path` and its missing parents; an existing directory is fine.
    pub fn mkdir_all(&self, path: &str) -> Result<(), SandboxError> {
        self.mkdir_with(path, true)
    }

    fn mkdir_with(&self, path: &str, parents: bool) -> Result<(), SandboxError> {
        let request = Request::Mkdir {
            path: checked(path)?,
            parents,
            mode: DIR_MODE,
        };
        self.call(&request, |response| match response {
            Response::MadeDir => Ok(()),
            other => Err(refused_at(path, &other)),
        })
    }
}
