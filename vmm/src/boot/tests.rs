//! Loading crafted ELF images: layouts that collide with what the VMM writes are refused
//! before anything is written; layouts that fit load exactly.

use std::io::{Cursor, Write};

use vm_memory::{Bytes, GuestMemoryMmap};

use super::*;
use crate::arch::layout::{BOOT_GDT_START, PML4_START};

const MIB: u64 = 1 << 20;
const ENTRY: u64 = 0x10_0000;

/// A `PT_LOAD` segment to craft: its bytes in the file are `filesz` copies of `fill`.
#[derive(Clone, Copy)]
struct Seg {
    paddr: u64,
    filesz: u64,
    memsz: u64,
    fill: u8,
}

fn seg(paddr: u64, filesz: u64, memsz: u64) -> Seg {
    Seg {
        paddr,
        filesz,
        memsz,
        fill: 0xcc,
    }
}

/// An x86_64 `ET_EXEC` image entered at `ENTRY` with these segments, their bytes after the
/// program header table.
fn elf(segments: &[Seg]) -> Vec<u8> {
    let mut image = vec![0u8; 64];
    image[..4].copy_from_slice(b"\x7fELF");
    image[4] = 2; // ELFCLASS64
    image[5] = 1; // little-endian
    image[6] = 1; // EV_CURRENT
    image[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    image[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    image[0x18..0x20].copy_from_slice(&ENTRY.to_le_bytes());
    image[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    image[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    image[0x38..0x3a].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    let mut offset = 64 + 56 * segments.len() as u64;
    for s in segments {
        let mut phdr = [0u8; 56];
        phdr[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        phdr[4..8].copy_from_slice(&7u32.to_le_bytes()); // RWX
        phdr[0x08..0x10].copy_from_slice(&offset.to_le_bytes());
        phdr[0x10..0x18].copy_from_slice(&s.paddr.to_le_bytes());
        phdr[0x18..0x20].copy_from_slice(&s.paddr.to_le_bytes());
        phdr[0x20..0x28].copy_from_slice(&s.filesz.to_le_bytes());
        phdr[0x28..0x30].copy_from_slice(&s.memsz.to_le_bytes());
        image.extend_from_slice(&phdr);
        offset += s.filesz;
    }
    for s in segments {
        image.resize(image.len() + s.filesz as usize, s.fill);
    }
    image
}

fn memory(mem_size: u64) -> GuestMemoryMmap {
    let ranges: Vec<_> = ram_regions(mem_size)
        .iter()
        .map(|r| (r.start, r.len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

/// A temporary initrd of `len` bytes of 0x1d.
struct Initrd {
    file: File,
    path: std::path::PathBuf,
}

impl Initrd {
    fn new(name: &str, len: usize) -> Self {
        let path =
            std::env::temp_dir().join(format!("zygote-boot-test-{}-{name}", std::process::id()));
        File::create(&path)
            .unwrap()
            .write_all(&vec![0x1d; len])
            .unwrap();
        let file = File::open(&path).unwrap();
        Self { file, path }
    }
}

impl Drop for Initrd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn load_image(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    image: &[u8],
    initrd: Option<&mut File>,
) -> Result<GuestAddress, BootError> {
    load(
        mem,
        mem_size,
        1,
        &mut Cursor::new(image),
        "console=ttyS0",
        initrd,
    )
}

/// The two regions of an overlap error, in either order.
fn collision(err: BootError) -> (RegionName, RegionName) {
    match err {
        BootError::MemoryPlan(PlanError::Overlap { region, other }) => (region.name, other.name),
        other => panic!("expected an overlap, got {other:?}"),
    }
}

fn assert_collides(err: BootError, a: RegionName, b: RegionName) {
    let (x, y) = collision(err);
    assert!(
        (x, y) == (a, b) || (x, y) == (b, a),
        "expected {a} and {b}, got {x} and {y}"
    );
}

fn is_zero(mem: &GuestMemoryMmap, addr: u64, len: usize) -> bool {
    let mut bytes = vec![0xffu8; len];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    bytes.iter().all(|&b| b == 0)
}

/// Nothing the boot writes is in guest memory: no zero page, no command line, no segment.
fn nothing_written(mem: &GuestMemoryMmap, segment_at: u64) -> bool {
    is_zero(mem, ZERO_PAGE_START.0, 4096)
        && is_zero(mem, CMDLINE_START.0, 16)
        && is_zero(mem, segment_at, 16)
}

#[test]
fn a_segment_with_more_file_bytes_than_memory_bytes_is_refused() {
    // Issue 8 (a): 8 MiB of RAM, p_filesz 0x680000 over p_memsz 0x1000 at 1 MiB, a 1 MiB
    // initrd placed at 7 MiB over the bytes the segment's file size would load.
    let mem = memory(8 * MIB);
    let image = elf(&[seg(MIB, 0x68_0000, 0x1000)]);
    let mut initrd = Initrd::new("filesz", MIB as usize);
    let err = load_image(&mem, 8 * MIB, &image, Some(&mut initrd.file)).unwrap_err();
    assert!(
        matches!(
            err,
            BootError::LoadKernel(ElfError::FileSizeOverMemSize {
                index: 0,
                filesz: 0x68_0000,
                memsz: 0x1000
            })
        ),
        "{err:?}"
    );
    assert!(nothing_written(&mem, MIB));
    assert!(is_zero(&mem, 7 * MIB, 16), "no initrd byte written");
}

#[test]
fn an_initrd_over_a_kernel_segment_is_refused() {
    // The segment's memory size is honest this time and still reaches the initrd.
    let mem = memory(8 * MIB);
    let image = elf(&[seg(MIB, 0x68_0000, 0x68_0000)]);
    let mut initrd = Initrd::new("over-segment", MIB as usize);
    let err = load_image(&mem, 8 * MIB, &image, Some(&mut initrd.file)).unwrap_err();
    assert_collides(err, RegionName::KernelSegment(0), RegionName::Initrd);
    assert!(nothing_written(&mem, MIB));
}

#[test]
fn an_initrd_over_a_bss_only_segment_is_refused() {
    // A segment with no file bytes (all .bss) still takes its memory size.
    let mem = memory(8 * MIB);
    let image = elf(&[seg(MIB, 0x1000, 0x1000), seg(2 * MIB, 0, 6 * MIB)]);
    let mut initrd = Initrd::new("over-bss", 0x1000);
    let err = load_image(&mem, 8 * MIB, &image, Some(&mut initrd.file)).unwrap_err();
    assert_collides(err, RegionName::KernelSegment(1), RegionName::Initrd);
}

#[test]
fn segments_over_the_zero_page_and_the_mp_table_are_refused() {
    // Issue 8 (b): PT_LOADs at 0x7000 and 0x9f000 beside the one holding the entry point.
    let mem = memory(8 * MIB);
    let image = elf(&[
        seg(MIB, 0x1000, 0x1000),
        seg(0x7000, 0x1000, 0x1000),
        seg(0x9_f000, 0x1000, 0x1000),
    ]);
    let err = load_image(&mem, 8 * MIB, &image, None).unwrap_err();
    assert_collides(err, RegionName::ZeroPage, RegionName::KernelSegment(1));
    assert!(nothing_written(&mem, 0x7000));

    let image = elf(&[seg(MIB, 0x1000, 0x1000), seg(0x9_f000, 0x1000, 0x1000)]);
    let err = load_image(&mem, 8 * MIB, &image, None).unwrap_err();
    assert_collides(err, RegionName::KernelSegment(1), RegionName::MpTable);
    assert!(nothing_written(&mem, 0x9_f000));
}

#[test]
fn a_segment_over_any_boot_structure_is_refused() {
    let cases = [
        (BOOT_GDT_START.0, RegionName::BootGdt),
        (0x530, RegionName::BootIdt),
        (BOOT_STACK_START.0, RegionName::BootStack),
        (PML4_START.0, RegionName::PageTables),
        (0xb800, RegionName::PageTables),
        (CMDLINE_START.0, RegionName::Cmdline),
        (0x6000, RegionName::VmIdentity),
    ];
    for (at, name) in cases {
        let mem = memory(8 * MIB);
        let image = elf(&[seg(MIB, 0x10, 0x10), seg(at, 0x10, 0x10)]);
        let err = load_image(&mem, 8 * MIB, &image, None).unwrap_err();
        assert_collides(err, RegionName::KernelSegment(1), name);
        assert!(nothing_written(&mem, at), "{name}");
    }
}

#[test]
fn overlapping_segments_are_refused() {
    let mem = memory(8 * MIB);
    let image = elf(&[seg(MIB, 0x2000, 0x2000), seg(MIB + 0x1fff, 0x10, 0x10)]);
    let err = load_image(&mem, 8 * MIB, &image, None).unwrap_err();
    assert_collides(
        err,
        RegionName::KernelSegment(0),
        RegionName::KernelSegment(1),
    );
    // The .bss of the first reaching into the second counts too.
    let image = elf(&[seg(MIB, 0x10, 0x3000), seg(MIB + 0x2000, 0x10, 0x10)]);
    let err = load_image(&mem, 8 * MIB, &image, None).unwrap_err();
    assert_collides(
        err,
        RegionName::KernelSegment(0),
        RegionName::KernelSegment(1),
    );
    assert!(nothing_written(&mem, MIB));
}

#[test]
fn segments_outside_ram_are_refused() {
    // Past the end of RAM, across it, and in the MMIO gap of a VM with RAM above 4 GiB.
    for (mem_size, at, len) in [
        (8 * MIB, 8 * MIB, 0x1000),
        (8 * MIB, 8 * MIB - 0x800, 0x1000),
        (5 << 30, 0xd000_0000, 0x1000),
        (5 << 30, MMIO_GAP_START - 0x1000, 0x2000),
    ] {
        let mem = memory(mem_size);
        let image = elf(&[seg(MIB, 0x10, 0x10), seg(at, 0, len)]);
        let err = load_image(&mem, mem_size, &image, None).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::MemoryPlan(PlanError::OutsideRam {
                    region: Region {
                        name: RegionName::KernelSegment(1),
                        ..
                    }
                })
            ),
            "{at:#x}: {err:?}"
        );
        assert!(nothing_written(&mem, MIB));
    }
}

#[test]
fn a_segment_ending_past_the_address_space_is_refused() {
    let mem = memory(8 * MIB);
    let image = elf(&[seg(MIB, 0x10, 0x10), seg(u64::MAX - 0x10, 0, 0x100)]);
    let err = load_image(&mem, 8 * MIB, &image, None).unwrap_err();
    assert!(
        matches!(err, BootError::MemoryPlan(PlanError::Overflow { .. })),
        "{err:?}"
    );
}

#[test]
fn a_layout_that_fits_loads_every_region() {
    let mem = memory(8 * MIB);
    let mut text = seg(MIB, 0x1800, 0x1800);
    text.fill = 0x90;
    let mut data = seg(MIB + 0x2000, 0x100, 0x3000);
    data.fill = 0x42;
    let image = elf(&[text, data]);
    let mut initrd = Initrd::new("fits", 0x1800);
    let entry = load_image(&mem, 8 * MIB, &image, Some(&mut initrd.file)).unwrap();
    assert_eq!(entry, GuestAddress(ENTRY));
    let byte = |addr: u64| mem.read_obj::<u8>(GuestAddress(addr)).unwrap();
    assert_eq!(byte(MIB), 0x90);
    assert_eq!(byte(MIB + 0x17ff), 0x90);
    assert_eq!(byte(MIB + 0x2000), 0x42);
    assert_eq!(byte(MIB + 0x20ff), 0x42);
    assert!(is_zero(&mem, MIB + 0x2100, 0x100), ".bss is not loaded");
    // The initrd sits page-aligned at the top of RAM, the zero page says where.
    let initrd_at = 8 * MIB - 0x2000;
    assert_eq!(byte(initrd_at), 0x1d);
    assert_eq!(byte(initrd_at + 0x17ff), 0x1d);
    let params: boot_params = mem.read_obj(ZERO_PAGE_START).unwrap();
    assert_eq!({ params.hdr.ramdisk_image }, initrd_at as u32);
    assert_eq!({ params.hdr.ramdisk_size }, 0x1800);
    assert_eq!({ params.hdr.cmdline_size }, 14);
    let mut line = [0u8; 14];
    mem.read_slice(&mut line, CMDLINE_START).unwrap();
    assert_eq!(&line, b"console=ttyS0\0");
    assert_eq!(
        &mem.read_obj::<[u8; 4]>(GuestAddress(EBDA_START)).unwrap(),
        b"_MP_"
    );
    let (_, gdt) = regs::boot_gdt();
    let mut written = vec![0u8; gdt.len()];
    mem.read_slice(&mut written, BOOT_GDT_START).unwrap();
    assert_eq!(written, gdt, "the TSS descriptor survives the IDT");
    assert_eq!(mem.read_obj::<u64>(PML4_START).unwrap(), 0xa003);
}

#[test]
fn every_boot_region_is_disjoint_for_the_largest_command_line_and_mp_table() {
    let image = KernelImage {
        entry: ENTRY,
        segments: vec![],
    };
    let line = "x".repeat(CMDLINE_MAX_SIZE - 1);
    let plan = plan(
        8 * MIB,
        crate::config::MAX_VCPUS,
        &image,
        None,
        &line,
        Some(MIB),
    )
    .unwrap();
    let names: Vec<_> = plan.regions().map(|r| r.name).collect();
    for name in [
        RegionName::ZeroPage,
        RegionName::Cmdline,
        RegionName::BootGdt,
        RegionName::BootIdt,
        RegionName::PageTables,
        RegionName::BootStack,
        RegionName::MpTable,
        RegionName::Initrd,
        RegionName::VmIdentity,
    ] {
        assert!(names.contains(&name), "{name} is planned");
    }
    plan.check(&ram_regions(8 * MIB)).unwrap();
}

#[test]
fn the_boot_time_command_line_limit_counts_the_final_line() {
    let mem = memory(8 * MIB);
    let image = elf(&[seg(MIB, 0x10, 0x10)]);
    let longest = "x".repeat(CMDLINE_MAX_SIZE - 1);
    load(&mem, 8 * MIB, 1, &mut Cursor::new(&image), &longest, None).unwrap();
    let params: boot_params = mem.read_obj(ZERO_PAGE_START).unwrap();
    assert_eq!({ params.hdr.cmdline_size }, CMDLINE_MAX_SIZE as u32);
    let too_long = "x".repeat(CMDLINE_MAX_SIZE);
    let err = load(&mem, 8 * MIB, 1, &mut Cursor::new(&image), &too_long, None).unwrap_err();
    assert!(
        matches!(
            err,
            BootError::CmdlineTooLong {
                len: 4096,
                max: 4095
            }
        ),
        "{err:?}"
    );
    let err = load(&mem, 8 * MIB, 1, &mut Cursor::new(&image), "a\0b", None).unwrap_err();
    assert!(matches!(err, BootError::CmdlineInvalid), "{err:?}");
}

#[test]
fn a_bad_header_is_a_load_error() {
    let mem = memory(8 * MIB);
    let good = elf(&[seg(MIB, 0x10, 0x10)]);
    let mut bad_class = good.clone();
    bad_class[4] = 1;
    let mut bad_phentsize = good.clone();
    bad_phentsize[0x36] = 32;
    let mut low_entry = good.clone();
    low_entry[0x18..0x20].copy_from_slice(&0x7000u64.to_le_bytes());
    let mut phoff_past_end = good.clone();
    phoff_past_end[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
    for (image, what) in [
        (&good[..40], "truncated"),
        (&bad_class[..], "class"),
        (&bad_phentsize[..], "phentsize"),
        (&low_entry[..], "entry"),
        (&phoff_past_end[..], "phoff"),
    ] {
        let err = load_image(&mem, 8 * MIB, image, None).unwrap_err();
        assert!(matches!(err, BootError::LoadKernel(_)), "{what}: {err:?}");
    }
    // A segment whose file bytes are missing: the plan passes, the copy fails.
    let mut short = good.clone();
    short.truncate(good.len() - 1);
    let err = load_image(&mem, 8 * MIB, &short, None).unwrap_err();
    assert!(
        matches!(err, BootError::MemoryPlan(PlanError::Write { .. })),
        "{err:?}"
    );
}
