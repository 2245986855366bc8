//! The Linux test guest: a Linux 6.12 kernel the project builds itself, and the initramfs
//! archives that boot it.
//!
//! - [`kernel`] finds the cached `vmlinux` and `bzImage` that `linux-guest/build-kernel.sh`
//!   built from Debian's `linux-source-6.12` with the config fragment and patch in
//!   `linux-guest/kernel/` (`./dev` runs the script when the cache is missing).
//! - [`CMDLINE`] is the command line that kernel needs on a host whose KVM emulates CPL0.
//! - [`Initramfs`] writes an uncompressed `newc` cpio archive; [`busybox_initramfs`] starts one
//!   from Debian's static busybox with a given `/init` script; [`ext4_image`] puts the same
//!   tree on an ext4 disk image for a root on virtio-blk.
//!
//! ```no_run
//! use zygote_linux_guest::{busybox_initramfs, kernel, CMDLINE};
//!
//! let kernel = kernel()?;
//! let initrd = std::env::temp_dir().join("initramfs.cpio");
//! busybox_initramfs("#!/bin/sh\necho hello from /init\nreboot -f\n").write_to(&initrd)?;
//! println!("boot {} with {CMDLINE:?}", kernel.vmlinux.display());
//! # Ok::<(), zygote_linux_guest::LinuxGuestError>(())
//! ```
#![deny(missing_docs)]

mod busybox;
mod cmdline;
mod disk;
mod initramfs;
mod kernel;

pub use busybox::{busybox_initramfs, BUSYBOX_APPLETS, BUSYBOX_PATH};
pub use cmdline::CMDLINE;
pub use disk::ext4_image;
pub use initramfs::{Initramfs, InitramfsError};
pub use kernel::{
    build_script, kernel, kernel_cache_dir, KernelArtifacts, LinuxGuestError, CACHE_ENV,
};
