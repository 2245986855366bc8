use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use super::*;

/// One entry parsed back from a newc archive.
#[derive(Debug, PartialEq)]
struct Parsed {
    name: String,
    ino: u32,
    mode: u32,
    nlink: u32,
    data: Vec<u8>,
}

/// Parses a newc archive strictly (magic, hex fields, 4-byte padding, trailer last).
fn parse(mut bytes: &[u8]) -> Vec<Parsed> {
    let mut entries = Vec::new();
    loop {
        assert_eq!(&bytes[..6], NEWC_MAGIC.as_bytes());
        let field = |i: usize| {
            let hex = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap();
            u32::from_str_radix(hex, 16).unwrap()
        };
        let (ino, mode, nlink, filesize, namesize) =
            (field(0), field(1), field(4), field(6), field(11));
        assert_eq!(
            (field(2), field(3), field(5), field(12)),
            (0, 0, 0, 0),
            "uid gid mtime check"
        );
        let name_end = 110 + namesize as usize;
        assert_eq!(bytes[name_end - 1], 0, "name is NUL-terminated");
        let name = std::str::from_utf8(&bytes[110..name_end - 1])
            .unwrap()
            .to_owned();
        let data_start = name_end + pad4(name_end);
        let data_end = data_start + filesize as usize;
        let data = bytes[data_start..data_end].to_vec();
        let next = data_end + pad4(data_end);
        assert!(bytes[name_end..data_start].iter().all(|&b| b == 0));
        assert!(bytes[data_end..next].iter().all(|&b| b == 0));
        bytes = &bytes[next..];
        if name == TRAILER {
            assert!(bytes.is_empty(), "nothing after the trailer");
            return entries;
        }
        entries.push(Parsed {
            name,
            ino,
            mode,
            nlink,
            data,
        });
    }
}

fn archive(initramfs: &Initramfs) -> Vec<u8> {
    let mut bytes = Vec::new();
    initramfs.write(&mut bytes).unwrap();
    bytes
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("zygote-initramfs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sample() -> Initramfs {
    let mut initramfs = Initramfs::new();
    initramfs
        .file("/init", "#!/bin/sh\necho hi\n", 0o755)
        .dir("/proc", 0o555)
        .file("/etc/motd", vec![7u8; 5], 0o644)
        .symlink("/bin/sh", "busybox");
    initramfs
}

#[test]
fn archive_parses_back_with_types_modes_data_and_added_parents() {
    let entries = parse(&archive(&sample()));
    let summary: Vec<_> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.mode, e.nlink, e.data.as_slice()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("bin", S_IFDIR | 0o755, 2, &b""[..]),
            ("bin/sh", S_IFLNK | 0o777, 1, b"busybox"),
            ("etc", S_IFDIR | 0o755, 2, b""),
            ("etc/motd", S_IFREG | 0o644, 1, &[7u8; 5][..]),
            ("init", S_IFREG | 0o755, 1, b"#!/bin/sh\necho hi\n"),
            ("proc", S_IFDIR | 0o555, 2, b""),
        ]
    );
    let inos: Vec<_> = entries.iter().map(|e| e.ino).collect();
    assert_eq!(inos, vec![1, 2, 3, 4, 5, 6], "distinct inode numbers");
}

#[test]
fn empty_archive_is_only_the_trailer() {
    let bytes = archive(&Initramfs::new());
    assert!(parse(&bytes).is_empty());
    assert_eq!(bytes.len() % 4, 0);
}

#[test]
fn same_inputs_give_the_same_bytes() {
    assert_eq!(archive(&sample()), archive(&sample()));
}

#[test]
fn adding_a_path_again_replaces_it_and_leading_slash_is_optional() {
    let mut initramfs = sample();
    initramfs.file("init", "new", 0o700);
    let entries = parse(&archive(&initramfs));
    let init = entries.iter().find(|e| e.name == "init").unwrap();
    assert_eq!(
        (init.mode, init.data.as_slice()),
        (S_IFREG | 0o700, &b"new"[..])
    );
    assert_eq!(entries.iter().filter(|e| e.name == "init").count(), 1);
}

#[test]
fn mode_keeps_only_permission_bits() {
    let mut initramfs = Initramfs::new();
    initramfs.file("/x", "", S_IFDIR | 0o4755);
    assert_eq!(parse(&archive(&initramfs))[0].mode, S_IFREG | 0o4755);
}

#[test]
fn invalid_paths_are_refused_when_written() {
    for path in ["", "/", "/a/../b", "/a/./b", "//a", "/a//b"] {
        let mut initramfs = Initramfs::new();
        initramfs.file(path, "", 0o644);
        let error = initramfs.write(Vec::new()).unwrap_err();
        assert!(
            matches!(error, InitramfsError::InvalidPath(ref p) if p == path),
            "{path:?}: {error}"
        );
    }
}

#[test]
fn entry_below_a_file_is_refused() {
    let mut initramfs = Initramfs::new();
    initramfs
        .file("/init", "", 0o755)
        .file("/init/x", "", 0o644);
    let error = initramfs.write(Vec::new()).unwrap_err();
    assert!(
        matches!(error, InitramfsError::ParentNotDirectory { ref parent, .. } if parent == "init"),
        "{error}"
    );
}

#[test]
fn missing_host_file_is_a_typed_error() {
    let mut initramfs = Initramfs::new();
    initramfs.host_file("/bin/agent", "/nonexistent/zygote-agent", 0o755);
    let error = initramfs.write(Vec::new()).unwrap_err();
    assert!(
        matches!(error, InitramfsError::ReadHostFile { ref path, .. } if path == "/bin/agent"),
        "{error}"
    );
}

#[test]
fn gnu_cpio_extracts_what_was_written() {
    let dir = TempDir::new("extract");
    let host = dir.0.join("host-file");
    std::fs::write(&host, b"from the host").unwrap();
    let mut initramfs = sample();
    initramfs.host_file("/usr/bin/tool", &host, 0o750);
    let archive_path = dir.0.join("initramfs.cpio");
    initramfs.write_to(&archive_path).unwrap();

    let root = dir.0.join("root");
    std::fs::create_dir(&root).unwrap();
    let status = Command::new("cpio")
        .args(["-idm", "--quiet", "-F"])
        .arg(&archive_path)
        .current_dir(&root)
        .status()
        .expect("cpio (Debian package cpio) runs");
    assert!(status.success());

    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    let mode = |p: &str| {
        std::fs::symlink_metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(read("init"), b"#!/bin/sh\necho hi\n");
    assert_eq!(mode("init"), S_IFREG | 0o755);
    assert_eq!(read("etc/motd"), [7u8; 5]);
    assert_eq!(read("usr/bin/tool"), b"from the host");
    assert_eq!(mode("usr/bin/tool"), S_IFREG | 0o750);
    assert_eq!(mode("proc"), S_IFDIR | 0o555);
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
}
