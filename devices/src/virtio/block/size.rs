//! The size of what holds a disk's bytes: a regular file or a block device.
//!
//! `metadata().len()` is the size of a regular file only; for a block device it is 0, so every
//! place that sizes a disk, an overlay file or any other image goes through here.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;

// `BLKGETSIZE64` from <linux/fs.h>: `_IOR(0x12, 114, size_t)`, the device's size in bytes.
vmm_sys_util::ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);

/// What a file that holds a disk's bytes is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// A regular file: its size is its length, and it can be resized.
    Regular,
    /// A block device: its size is fixed and comes from `BLKGETSIZE64`.
    BlockDevice,
}

/// Whether `file` is a regular file or a block device; anything else (a FIFO, a character
/// device, a directory) is `ErrorKind::InvalidInput`, since it cannot hold sectors.
pub fn storage_kind(file: &File) -> io::Result<StorageKind> {
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        Ok(StorageKind::Regular)
    } else if kind.is_block_device() {
        Ok(StorageKind::BlockDevice)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ))
    }
}

/// The size of `file` in bytes, right for regular files (their length) and block devices alike
/// (`BLKGETSIZE64`, which does not move the file position). Anything else is an error, as in
/// [`storage_kind`].
pub fn file_size(file: &File) -> io::Result<u64> {
    match storage_kind(file)? {
        StorageKind::Regular => Ok(file.metadata()?.len()),
        StorageKind::BlockDevice => block_device_size(file),
    }
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: `file` is an open block device; BLKGETSIZE64 writes one u64 (`size_t` on the
    // 64-bit targets this crate builds for) into `size`, which lives across the call, and
    // nothing else. The return value is checked.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(file, BLKGETSIZE64(), &mut size) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Makes `file` ready to hold an overlay of `size` bytes: a regular file is resized to `size`
/// (kept sparse); a block device cannot be resized, so it must already hold at least `size`
/// bytes (what it held before stays where it is not written, and is never read through the
/// overlay). Anything else is refused.
pub fn fit_to(file: &File, size: u64) -> io::Result<()> {
    match storage_kind(file)? {
        StorageKind::Regular => file.set_len(size),
        StorageKind::BlockDevice => {
            let have = block_device_size(file)?;
            if have < size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the overlay device holds {have} bytes, the disk needs {size}"),
                ));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::testing::LoopDevice;
    use std::os::unix::fs::FileExt;
    use vmm_sys_util::tempfile::TempFile;

    #[test]
    fn a_regular_file_is_sized_by_its_length() {
        let tmp = TempFile::new().unwrap();
        tmp.as_file().write_all_at(&[1; 1000], 0).unwrap();
        assert_eq!(file_size(tmp.as_file()).unwrap(), 1000);
        assert_eq!(storage_kind(tmp.as_file()).unwrap(), StorageKind::Regular);
        fit_to(tmp.as_file(), 4096).unwrap();
        assert_eq!(file_size(tmp.as_file()).unwrap(), 4096);
    }

    #[test]
    fn a_block_device_is_sized_by_blkgetsize64_not_its_zero_length() {
        let dev = LoopDevice::over_pattern("size", 1 << 20);
        let file = dev.open();
        assert_eq!(file.metadata().unwrap().len(), 0, "what used to size it");
        assert_eq!(storage_kind(&file).unwrap(), StorageKind::BlockDevice);
        assert_eq!(file_size(&file).unwrap(), 1 << 20);
        // The file position is left where it was.
        use std::io::Seek;
        assert_eq!((&file).stream_position().unwrap(), 0);
        // A device is never resized: large enough is fine, too small is refused.
        fit_to(&file, 1 << 19).unwrap();
        fit_to(&file, 1 << 20).unwrap();
        let err = fit_to(&file, (1 << 20) + 512).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(file_size(&file).unwrap(), 1 << 20);
    }

    #[test]
    fn what_cannot_hold_sectors_has_no_size() {
        let null = File::open("/dev/null").unwrap();
        assert_eq!(
            file_size(&null).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let dir = File::open(std::env::temp_dir()).unwrap();
        assert!(file_size(&dir).is_err());
        assert!(fit_to(&null, 512).is_err());
    }
}
