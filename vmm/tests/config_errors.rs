//! Every invalid configuration is a typed error naming the field; nothing is created.

mod common;

use std::fs;

use zygote::boot::{PlanError, RegionName};
use zygote::{BootError, ConfigError, Error, VmBuilder};
use zygote_guest::kernel_path;

fn build_err(builder: VmBuilder) -> Error {
    builder
        .build()
        .err()
        .expect("configuration must be rejected")
}

fn config_err(builder: VmBuilder) -> ConfigError {
    match build_err(builder) {
        Error::Config(e) => e,
        other => panic!("expected a configuration error, got {other}"),
    }
}

fn valid() -> VmBuilder {
    VmBuilder::new().kernel(kernel_path())
}

#[test]
fn vcpu_count() {
    assert!(matches!(config_err(valid().vcpus(0)), ConfigError::NoVcpus));
    assert!(matches!(
        config_err(valid().vcpus(1000)),
        ConfigError::TooManyVcpus {
            requested: 1000,
            ..
        }
    ));
}

#[test]
fn memory_size() {
    assert!(matches!(
        config_err(valid().memory_mib(0)),
        ConfigError::MemoryTooSmall { .. }
    ));
    assert!(matches!(
        config_err(valid().memory_mib(u64::MAX / 2)),
        ConfigError::MemoryTooLarge { .. }
    ));
}

#[test]
fn kernel_missing_unreadable_or_not_elf() {
    assert!(matches!(
        config_err(VmBuilder::new()),
        ConfigError::NoKernel
    ));
    let missing = common::temp_path("no-such-kernel");
    let err = config_err(valid().kernel(&missing));
    assert!(matches!(err, ConfigError::KernelUnreadable { ref path, .. } if *path == missing));
    assert!(err.to_string().starts_with("kernel:"), "{err}");

    let text = common::temp_path("not-elf");
    fs::write(&text, b"#!/bin/sh\necho not a kernel\n").unwrap();
    assert!(matches!(
        config_err(valid().kernel(&text)),
        ConfigError::UnknownKernelFormat { .. }
    ));
    let empty = common::temp_path("empty-kernel");
    fs::write(&empty, b"").unwrap();
    assert!(matches!(
        config_err(valid().kernel(&empty)),
        ConfigError::UnknownKernelFormat { .. }
    ));
    let _ = fs::remove_file(text);
    let _ = fs::remove_file(empty);
}

#[test]
fn a_corrupt_elf_is_a_boot_error_not_a_panic() {
    let mut image = fs::read(kernel_path()).unwrap();
    // Keep the magic, corrupt the class and the program header table offset.
    image[4] = 9;
    image[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
    let path = common::temp_path("corrupt-elf");
    fs::write(&path, &image).unwrap();
    let err = build_err(valid().kernel(&path));
    assert!(
        matches!(err, Error::Boot(BootError::LoadKernel(_))),
        "{err}"
    );
    let truncated = &fs::read(kernel_path()).unwrap()[..100];
    fs::write(&path, truncated).unwrap();
    let err = build_err(valid().kernel(&path));
    assert!(
        matches!(err, Error::Boot(BootError::LoadKernel(_))),
        "{err}"
    );
    let _ = fs::remove_file(path);
}

/// The guest kernel with the physical address of its first `PT_LOAD` moved to `paddr`.
fn kernel_with_first_segment_at(paddr: u64) -> Vec<u8> {
    let mut image = fs::read(kernel_path()).unwrap();
    let u64_at =
        |image: &[u8], at: usize| u64::from_le_bytes(image[at..at + 8].try_into().unwrap());
    let phoff = u64_at(&image, 0x20) as usize;
    let phnum = u16::from_le_bytes([image[0x38], image[0x39]]) as usize;
    let first_load = (0..phnum)
        .map(|i| phoff + i * 56)
        .find(|&at| image[at..at + 4] == 1u32.to_le_bytes())
        .expect("a PT_LOAD");
    image[first_load + 0x18..first_load + 0x20].copy_from_slice(&paddr.to_le_bytes());
    image
}

#[test]
fn a_kernel_segment_over_the_zero_page_is_refused_before_anything_is_written() {
    let path = common::temp_path("segment-over-zero-page");
    fs::write(&path, kernel_with_first_segment_at(0x7000)).unwrap();
    let err = build_err(valid().kernel(&path));
    let Error::Boot(BootError::MemoryPlan(PlanError::Overlap { region, other })) = &err else {
        panic!("expected an overlap, got {err:?}");
    };
    let mut names = [region.name, other.name];
    names.sort_by_key(|name| name.to_string());
    assert_eq!(names, [RegionName::KernelSegment(0), RegionName::ZeroPage]);
    let text = err.to_string();
    assert!(text.contains("kernel segment 0 [0x7000,"), "{text}");
    assert!(text.contains("the zero page [0x7000, 0x8000)"), "{text}");
    let _ = fs::remove_file(path);
}

#[test]
fn a_corrupt_bzimage_is_a_boot_error_not_a_panic() {
    // boot_flag and HdrS make it a bzImage; loadflags without LOADED_HIGH, then a setup size
    // past the end of the file, then no 64-bit entry, are each refused by the loader.
    let mut image = vec![0u8; 0x1000];
    image[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    let path = common::temp_path("corrupt-bzimage");
    let mut variants = Vec::new();
    variants.push(image.clone());
    image[0x211] = 1; // LOADED_HIGH
    image[0x1f1] = 200; // setup_sects: 100 KiB of setup in a 4 KiB file
    variants.push(image.clone());
    image[0x1f1] = 4; // xloadflags stays 0: no 64-bit entry
    variants.push(image);
    for bytes in variants {
        fs::write(&path, &bytes).unwrap();
        let err = build_err(valid().kernel(&path));
        assert!(matches!(err, Error::Boot(BootError::BzImage(_))), "{err}");
    }
    let _ = fs::remove_file(path);
}

#[test]
fn command_line_too_long_or_invalid() {
    let err = config_err(valid().cmdline("a".repeat(5000)));
    assert!(matches!(err, ConfigError::CmdlineTooLong { len: 5000, .. }));
    assert!(err.to_string().starts_with("cmdline:"));
    assert!(matches!(
        config_err(valid().cmdline("a\0b")),
        ConfigError::CmdlineInvalid
    ));
}

#[test]
fn initrd_missing_or_too_large() {
    let missing = common::temp_path("no-such-initrd");
    assert!(matches!(
        config_err(valid().initrd(&missing)),
        ConfigError::InitrdUnreadable { .. }
    ));
    let big = common::temp_path("big-initrd");
    let file = fs::File::create(&big).unwrap();
    file.set_len(64 << 20).unwrap();
    let err = build_err(valid().memory_mib(16).initrd(&big));
    assert!(
        matches!(err, Error::Boot(BootError::InitrdTooLarge { .. })),
        "{err}"
    );
    let _ = fs::remove_file(big);
}

#[test]
fn a_fifo_as_kernel_or_disk_is_refused_not_waited_on() {
    let fifo = common::temp_path("fifo");
    let _ = fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let err = config_err(valid().kernel(&fifo));
    assert!(matches!(err, ConfigError::KernelUnreadable { .. }), "{err}");
    let err = build_err(valid().block(zygote::BlockConfig::new(&fifo).read_only()));
    assert!(
        matches!(err, Error::Device(zygote::DeviceError::BlockOpen { .. })),
        "{err}"
    );
    let _ = fs::remove_file(fifo);
}
