//! Page tables built at link time: an identity map of 0..16 GiB in 2 MiB pages, present,
//! writable and user-accessible at every level (no SMEP/SMAP: CR4 stays PAE only), so user mode
//! can reach RAM, the 3–4 GiB MMIO gap (virtio-mmio at 0xd000_0000+) and the kernel's own
//! tables. Addresses from `IDENTITY_MAP_LIMIT` up are unmapped. 16 page directories = 64 KiB of
//! data in the image, and not one instruction at CPL0 to build them.

use core::arch::global_asm;

use zygote_guest_proto::IDENTITY_MAP_LIMIT;

/// Present | writable | user.
const TABLE_FLAGS: u64 = 0x7;
/// Present | writable | user | page size (2 MiB).
const LARGE_PAGE_FLAGS: u64 = 0x87;
/// How many page directories (1 GiB each) the map needs.
const DIRECTORIES: u64 = IDENTITY_MAP_LIMIT >> 30;
const _: () = assert!(DIRECTORIES <= 512);

global_asm!(
    ".section .data.zg_paging, \"aw\"",
    ".balign 4096",
    ".global zg_pml4",
    "zg_pml4:",
    "    .quad zg_pdpt + {table}",
    "    .fill 511, 8, 0",
    "zg_pdpt:",
    "    .set zg_pd_index, 0",
    "    .rept {directories}",
    "    .quad zg_pd + zg_pd_index * 4096 + {table}",
    "    .set zg_pd_index, zg_pd_index + 1",
    "    .endr",
    "    .fill 512 - {directories}, 8, 0",
    "zg_pd:",
    "    .set zg_page_index, 0",
    "    .rept {directories} * 512",
    "    .quad (zg_page_index << 21) | {large}",
    "    .set zg_page_index, zg_page_index + 1",
    "    .endr",
    table = const TABLE_FLAGS,
    large = const LARGE_PAGE_FLAGS,
    directories = const DIRECTORIES,
);
