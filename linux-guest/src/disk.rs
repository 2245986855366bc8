//! ext4 disk images for a Linux guest's root on virtio-blk.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::initramfs::Initramfs;
use crate::kernel::LinuxGuestError;

/// Writes an ext4 image of `size_mib` MiB at `image` (created or replaced) holding the tree
/// described by `tree`, with `mkfs.ext4 -d` (Debian package `e2fsprogs`). Boot it with
/// `root=/dev/vda rw init=<path>` appended to [`crate::CMDLINE`]; give the VMM an overlay so
/// the image stays as written. The tree is staged in `<image>.tree/`, removed afterwards.
///
/// ```no_run
/// use zygote_linux_guest::{busybox_initramfs, ext4_image};
///
/// let tree = busybox_initramfs("#!/bin/sh\necho hello from the disk\nreboot -f\n");
/// ext4_image(&tree, "/tmp/root.ext4".as_ref(), 32)?;
/// # Ok::<(), zygote_linux_guest::LinuxGuestError>(())
/// ```
///
/// # Errors
/// [`LinuxGuestError::Initramfs`] if the tree cannot be staged,
/// [`LinuxGuestError::RunMkfs`] / [`LinuxGuestError::Mkfs`] if `mkfs.ext4` cannot run or
/// fails (too small a size, for one).
pub fn ext4_image(tree: &Initramfs, image: &Path, size_mib: u32) -> Result<(), LinuxGuestError> {
    let staging = PathBuf::from(format!("{}.tree", image.display()));
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_file(image);
    let result = tree
        .write_dir(&staging)
        .map_err(LinuxGuestError::from)
        .and_then(|()| mkfs(&staging, image, size_mib));
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn mkfs(tree: &Path, image: &Path, size_mib: u32) -> Result<(), LinuxGuestError> {
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(tree)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output()
        .map_err(LinuxGuestError::RunMkfs)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(LinuxGuestError::Mkfs {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debugfs(image: &Path, request: &str) -> String {
        let output = Command::new("debugfs")
            .args(["-R", request])
            .arg(image)
            .output()
            .expect("debugfs (e2fsprogs) runs");
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn ext4_image_holds_the_tree() {
        let image = std::env::temp_dir().join(format!("zygote-ext4-{}.img", std::process::id()));
        let mut tree = Initramfs::new();
        tree.file("/init", "#!/bin/sh\necho disk\n", 0o750)
            .symlink("/bin/sh", "busybox")
            .dir("/proc", 0o555);
        ext4_image(&tree, &image, 8).unwrap();
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 8 << 20);
        assert_eq!(debugfs(&image, "cat /init"), "#!/bin/sh\necho disk\n");
        let stat = debugfs(&image, "stat /init");
        assert!(stat.contains("Mode:  0750"), "{stat}");
        assert!(debugfs(&image, "stat /bin/sh").contains("Fast link dest: \"busybox\""));
        assert!(!Path::new(&format!("{}.tree", image.display())).exists());
        let _ = std::fs::remove_file(&image);
    }

    #[test]
    fn mkfs_failure_is_a_typed_error() {
        let image =
            std::env::temp_dir().join(format!("zygote-ext4-tiny-{}.img", std::process::id()));
        let mut tree = Initramfs::new();
        tree.file("/big", vec![0xabu8; 2 << 20], 0o644);
        let error = ext4_image(&tree, &image, 1).unwrap_err();
        assert!(matches!(error, LinuxGuestError::Mkfs { .. }), "{error}");
        let _ = std::fs::remove_file(&image);
    }
}
