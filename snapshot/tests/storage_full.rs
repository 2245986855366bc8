//! A full disk while writing a snapshot file is a typed error and leaves nothing behind.

mod common;

use std::ffi::CString;
use std::path::Path;

use zygote_snapshot::memory::raw;
use zygote_snapshot::{SectionId, StateFileWriter};

/// A 512 KiB tmpfs mounted on a fresh directory; unmounted on drop.
struct SmallFs {
    dir: std::path::PathBuf,
}

impl SmallFs {
    fn mount() -> SmallFs {
        let dir = common::temp_dir("enospc");
        let target = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let fstype = CString::new("tmpfs").unwrap();
        let data = CString::new("size=512k").unwrap();
        // SAFETY: valid C strings; mounting a tmpfs on our own empty directory (tests run
        // as root on this project's machines).
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mounting a tmpfs needs root: {}",
            std::io::Error::last_os_error()
        );
        SmallFs { dir }
    }

    fn entries(&self) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: unmounting the tmpfs this value mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn assert_storage_full(err: &dyn std::fmt::Debug, full: bool) {
    assert!(full, "expected a storage-full error, got {err:?}");
}

#[test]
fn a_full_disk_during_a_memory_image_write_is_storage_full_and_leaves_no_file() {
    let fs = SmallFs::mount();
    let layout = common::layout(); // 3 MiB, a third of it data: more than the 512 KiB fs holds
    let mem = common::patterned_guest_memory(&layout, 1);
    let err = raw::write_raw(&mem, &layout, &fs.dir.join("mem.raw")).unwrap_err();
    let zygote_snapshot::ImageError::Write(w) = &err else {
        panic!("{err:?}")
    };
    assert_storage_full(&err, w.is_storage_full());
    assert!(fs.entries().is_empty(), "left behind: {:?}", fs.entries());
}

#[test]
fn a_full_disk_during_a_state_file_write_is_storage_full_and_leaves_no_file() {
    let fs = SmallFs::mount();
    let mut w = StateFileWriter::new();
    w.section(SectionId::DEVICES, 1, vec![0x5a; 2 << 20])
        .unwrap();
    let path: &Path = &fs.dir.join("vm.zsn");
    let err = w.write_atomic(path).unwrap_err();
    assert_storage_full(&err, err.is_storage_full());
    assert!(fs.entries().is_empty(), "left behind: {:?}", fs.entries());
}
