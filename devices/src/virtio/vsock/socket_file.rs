//! The vsock device's listening socket file: created without taking over a live socket, and
//! removed on drop only if it is still the one this device created.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A socket file this process bound, identified by device, inode and change time (an inode
/// number alone is reused as soon as a file is removed).
pub struct SocketFile {
    path: PathBuf,
    id: FileId,
}

type FileId = (u64, u64, i64, i64);

fn file_id(meta: &std::fs::Metadata) -> FileId {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

impl SocketFile {
    /// Binds a non-blocking listener at `path`. A stale socket file there (nobody listening)
    /// is replaced; a live one, or any other kind of file, is an error.
    pub fn bind(path: &Path) -> io::Result<(UnixListener, Self)> {
        remove_stale(path)?;
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(path)?;
        let file = Self {
            path: path.to_path_buf(),
            id: file_id(&meta),
        };
        Ok((listener, file))
    }
}

fn remove_stale(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another listener", path.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
            Err(e) => Err(e),
        },
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Only our own file: another device may have replaced it since (after ours went stale).
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|meta| file_id(&meta) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("zygote-sockfile-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_live_socket_is_not_taken_over_and_a_stale_one_is() {
        let path = path("live");
        let (_listener, first) = SocketFile::bind(&path).unwrap();
        let err = SocketFile::bind(&path).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(path.exists(), "the live socket is untouched");
        drop(_listener);
        // Nobody listens any more: the file is stale and may be replaced.
        let (_second_listener, second) = SocketFile::bind(&path).unwrap();
        // Dropping the first owner must not remove the second owner's file.
        drop(first);
        assert!(path.exists());
        drop(second);
        assert!(!path.exists());
    }

    #[test]
    fn other_files_are_refused() {
        let path = path("regular");
        std::fs::write(&path, b"x").unwrap();
        let err = SocketFile::bind(&path).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        let _ = std::fs::remove_file(path);
    }
}
