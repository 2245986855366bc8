//! The project's Linux guest (linux-guest/) boots in Zygote: the ELF `vmlinux` and the
//! `bzImage` from a busybox initramfs, and the `vmlinux` from an ext4 root on virtio-blk. Each
//! guest's `/init` prints a marker and runs `reboot -f`, which ends the VM with
//! `ExitReason::Reset` (`reboot=k`: the i8042 reset line).
//!
//! One boot per test (20-35 s each here, where guest kernel code is emulated); cargo runs them
//! in parallel. The kernel comes from the cache `./dev` fills: a missing build fails the test
//! and says what to run.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zygote::{BlockConfig, ExitReason, RunningVm, VmBuilder};
use zygote_linux_guest::{busybox_initramfs, ext4_image, kernel, KernelArtifacts, CMDLINE};

/// Bound on reaching the marker, only there to end a hung test: a boot takes 20-35 s here on
/// an idle machine, but the tests boot in parallel on two cores that other work shares (the
/// three took 155-215 s each at a load average of about 20).
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// Bound on the VM stopping after the marker (`reboot -f` takes a few seconds when idle).
const REBOOT_TIMEOUT: Duration = Duration::from_secs(300);
const MEMORY_MIB: u64 = 128;

/// What `/init` prints: computed by the shell, so the script's own text cannot match it.
fn init_script(marker: &str) -> String {
    format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\n\
         root_fs=$(grep ' / ' /proc/mounts | cut -d' ' -f3)\n\
         echo \"{marker}-$((6 * 7)) root=$root_fs\"\n\
         echo written > /written-by-init\n\
         reboot -f\n"
    )
}

fn kernel_artifacts() -> KernelArtifacts {
    kernel().unwrap_or_else(|e| panic!("the Linux test guest is not available: {e}"))
}

/// Boots `builder`, waits for `expected` on the console and then for the VM to stop; returns
/// the exit reason and the time from start to the marker.
fn boot_until(builder: VmBuilder, expected: &str) -> (ExitReason, Duration) {
    let started = Instant::now();
    let (mut vm, console) = common::start_with(builder.memory_mib(MEMORY_MIB));
    if !console.wait_for(expected, BOOT_TIMEOUT) {
        stop(&mut vm);
        panic!(
            "no {expected:?} within {BOOT_TIMEOUT:?}; console:\n{}",
            console.text()
        );
    }
    let to_marker = started.elapsed();
    let Some(_) = vm.wait_timeout(REBOOT_TIMEOUT) else {
        stop(&mut vm);
        panic!(
            "the guest did not stop after its marker; console:\n{}",
            console.text()
        );
    };
    let reason = vm.wait().expect("join the VM");
    (reason, to_marker)
}

fn stop(vm: &mut RunningVm) {
    let _ = vm.shutdown();
}

/// Boots `kernel_image` with a busybox initramfs and checks `/init` runs and resets the VM.
fn boot_from_initramfs(kernel_image: &Path, name: &str) {
    let initrd = common::temp_path(&format!("{name}.cpio"));
    busybox_initramfs(&init_script("zygote-linux-initramfs"))
        .write_to(&initrd)
        .expect("write the initramfs");
    let builder = VmBuilder::new()
        .kernel(kernel_image)
        .cmdline(CMDLINE)
        .initrd(&initrd);
    let (reason, to_init) = boot_until(builder, "zygote-linux-initramfs-42 root=rootfs");
    let _ = std::fs::remove_file(&initrd);
    eprintln!("{name}: /init printed its marker {to_init:?} after start");
    assert!(matches!(reason, ExitReason::Reset), "{reason:?}");
}

#[test]
fn vmlinux_boots_from_initramfs_and_reboot_resets() {
    boot_from_initramfs(&kernel_artifacts().vmlinux, "vmlinux");
}

#[test]
fn bzimage_boots_from_initramfs_and_reboot_resets() {
    boot_from_initramfs(&kernel_artifacts().bz_image, "bzImage");
}

#[test]
fn vmlinux_boots_from_ext4_root_on_virtio_blk_without_touching_the_image() {
    let image: PathBuf = common::temp_path("linux-root.ext4");
    let tree = busybox_initramfs(&init_script("zygote-linux-disk"));
    ext4_image(&tree, &image, 32).expect("build the ext4 image");
    let before = std::fs::read(&image).unwrap();
    let builder = VmBuilder::new()
        .kernel(kernel_artifacts().vmlinux)
        .cmdline(format!("{CMDLINE} root=/dev/vda rw init=/init"))
        .block(BlockConfig::new(&image).overlay());
    let (reason, to_init) = boot_until(builder, "zygote-linux-disk-42 root=ext4");
    eprintln!("ext4 root: /init printed its marker {to_init:?} after start");
    assert!(matches!(reason, ExitReason::Reset), "{reason:?}");
    let after = std::fs::read(&image).unwrap();
    let _ = std::fs::remove_file(&image);
    assert!(
        before == after,
        "the guest's writes reached the image despite the overlay"
    );
}
