//! Test doubles for block backends: loop devices over pattern files, and a base that records
//! (or refuses) the reads it is asked for.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use vmm_sys_util::tempfile::TempFile;

use super::BlockBackend;

/// Byte `i` of every pattern image.
pub(super) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A loop device (`losetup`, root only) over a temporary file of pattern bytes, detached and
/// removed when dropped.
pub(super) struct LoopDevice {
    pub path: PathBuf,
    _backing: TempFile,
}

impl LoopDevice {
    /// A loop device over `len` pattern bytes (`len` a multiple of 512: loop devices have
    /// whole sectors).
    pub fn over_pattern(name: &str, len: usize) -> Self {
        let backing = TempFile::new_with_prefix(format!("/tmp/zygote-loop-{name}-")).unwrap();
        backing.as_file().write_all_at(&pattern(len), 0).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing.as_path())
            .output()
            .expect("run losetup (the loop device tests need root)");
        assert!(
            out.status.success(),
            "losetup failed (root needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Self {
            path,
            _backing: backing,
        }
    }

    /// The device opened for reading and writing.
    pub fn open(&self) -> File {
        File::options()
            .read(true)
            .write(true)
            .open(&self.path)
            .unwrap()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A base disk of pattern bytes in memory that records every read and refuses reads that touch
/// `refused`, to show which bytes an overlay asks its base for.
pub(super) struct WatchedBase {
    pub bytes: Vec<u8>,
    pub refused: std::ops::Range<u64>,
    pub reads: Arc<Mutex<Vec<std::ops::Range<u64>>>>,
}

impl WatchedBase {
    pub fn new(len: usize, refused: std::ops::Range<u64>) -> Self {
        Self {
            bytes: pattern(len),
            refused,
            reads: Arc::default(),
        }
    }
}

impl BlockBackend for WatchedBase {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let range = offset..offset + buf.len() as u64;
        self.reads.lock().unwrap().push(range.clone());
        if range.start < self.refused.end && self.refused.start < range.end {
            return Err(io::Error::other("base read refused"));
        }
        let src = self
            .bytes
            .get(range.start as usize..range.end as usize)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, _: &[u8], _: u64) -> io::Result<()> {
        panic!("an overlay wrote its base");
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
