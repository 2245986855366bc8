//! An initramfs with Debian's static busybox as its userland.

use crate::initramfs::Initramfs;

/// Where Debian's `busybox-static` package installs its statically linked busybox.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// The applets [`busybox_initramfs`] links into `/bin` (each a symlink to `busybox`), so an
/// `/init` script can call them by name. Every one is in Debian's `busybox-static` build.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "[",
    "ash",
    "awk",
    "cat",
    "chmod",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dmesg",
    "echo",
    "env",
    "false",
    "find",
    "free",
    "grep",
    "halt",
    "head",
    "hostname",
    "httpd",
    "id",
    "ifconfig",
    "ip",
    "kill",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mknod",
    "mount",
    "mv",
    "nc",
    "netstat",
    "pivot_root",
    "poweroff",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "reboot",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "setsid",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "switch_root",
    "sync",
    "tail",
    "tar",
    "tee",
    "test",
    "timeout",
    "touch",
    "tr",
    "true",
    "umount",
    "uname",
    "uptime",
    "wc",
    "wget",
    "xargs",
    "yes",
];

/// The usual top-level directories and their modes.
const DIRS: &[(&str, u32)] = &[
    ("/bin", 0o755),
    ("/dev", 0o755),
    ("/etc", 0o755),
    ("/mnt", 0o755),
    ("/proc", 0o555),
    ("/root", 0o700),
    ("/run", 0o755),
    ("/sbin", 0o755),
    ("/sys", 0o555),
    ("/tmp", 0o1777),
    ("/usr/bin", 0o755),
    ("/usr/sbin", 0o755),
    ("/var", 0o755),
];

/// An initramfs with Debian's static busybox at `/bin/busybox` (copied from
/// [`BUSYBOX_PATH`] when the archive is written; package `busybox-static`), the usual
/// directories, a symlink in `/bin` for each of [`BUSYBOX_APPLETS`], and `/init` = `init_script`
/// (mode `0755`; start it with `#!/bin/sh`).
///
/// No device nodes: `/dev/console` comes from the kernel's built-in initramfs (unpacked
/// before this one), and a script that needs others runs `mount -t devtmpfs dev /dev` (the
/// kernel mounts `devtmpfs` by itself only on a disk root).
/// Add more files (an agent binary, test programs) with the [`Initramfs`] methods.
pub fn busybox_initramfs(init_script: &str) -> Initramfs {
    let mut initramfs = Initramfs::new();
    for (dir, mode) in DIRS {
        initramfs.dir(dir, *mode);
    }
    initramfs.host_file(BUSYBOX_PATH, BUSYBOX_PATH, 0o755);
    for applet in BUSYBOX_APPLETS {
        initramfs.symlink(&format!("/bin/{applet}"), "busybox");
    }
    initramfs.file("/init", init_script, 0o755);
    initramfs
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn every_linked_applet_is_in_debians_busybox() {
        let output = Command::new(BUSYBOX_PATH)
            .arg("--list")
            .output()
            .expect("Debian's busybox-static is installed (./dev installs it)");
        let list = String::from_utf8(output.stdout).unwrap();
        let available: Vec<&str> = list.lines().collect();
        for applet in BUSYBOX_APPLETS {
            assert!(
                available.contains(applet),
                "{applet} is not in {BUSYBOX_PATH}"
            );
        }
    }

    #[test]
    fn busybox_initramfs_has_init_busybox_and_applets() {
        let initramfs = busybox_initramfs("#!/bin/sh\n");
        let paths: Vec<&str> = initramfs.paths().collect();
        for path in [
            "init",
            "bin/busybox",
            "bin/sh",
            "bin/reboot",
            "proc",
            "sys",
            "dev",
            "tmp",
        ] {
            assert!(paths.contains(&path), "{path} missing");
        }
        let mut bytes = Vec::new();
        initramfs.write(&mut bytes).unwrap();
        let busybox_size = std::fs::metadata(BUSYBOX_PATH).unwrap().len();
        assert!(bytes.len() as u64 > busybox_size);
    }
}
