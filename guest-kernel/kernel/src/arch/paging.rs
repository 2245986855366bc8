//! Page tables built at link time: an identity map of 0..16 GiB in 2 MiB pages, present,
//! writable and user-accessible at every level (no SMEP/SMAP: CR4 stays PAE only), so user mode
//! can reach RAM, the 3–4 GiB MMIO gap (virtio-mmio at 0xd000_0000+) and the kernel's own
//! tables. Addresses from `IDENTITY_MAP_LIMIT` up are unmapped. The first 2 MiB (the image) are
//! mapped in 4 KiB pages instead, all but one: the guard page under the user stack
//! ([`USER_STACK_GUARD`]), so a stack overflow raises #PF (reported like any exception) instead
//! of silently overwriting the exception stack, the IDT and the page tables below it.
//! 16 page directories and one page table = 68 KiB of data in the image, and not one
//! instruction at CPL0 to build them.

use core::arch::global_asm;

use zygote_guest_proto::IDENTITY_MAP_LIMIT;

/// Present | writable | user.
const TABLE_FLAGS: u64 = 0x7;
/// Present | writable | user | page size (2 MiB).
const LARGE_PAGE_FLAGS: u64 = 0x87;
/// Present | writable | user (a 4 KiB page).
const PAGE_FLAGS: u64 = 0x7;
/// The unmapped page under the user stack. link.ld places the stacks at a fixed address so that
/// `zg_user_stack_guard` lands here (and asserts it): the assembler needs a constant to leave
/// the page out of the table.
pub const USER_STACK_GUARD: u64 = 0x1e_4000;
const _: () = assert!(USER_STACK_GUARD < 1 << 21 && USER_STACK_GUARD % 4096 == 0);
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
    "    .if zg_page_index == 0",
    "    .quad zg_pt_low + {table}",
    "    .else",
    "    .quad (zg_page_index << 21) | {large}",
    "    .endif",
    "    .set zg_page_index, zg_page_index + 1",
    "    .endr",
    // 0..2 MiB in 4 KiB pages, without the guard page.
    "zg_pt_low:",
    "    .set zg_pt_index, 0",
    "    .rept 512",
    "    .if (zg_pt_index << 12) == {guard}",
    "    .quad 0",
    "    .else",
    "    .quad (zg_pt_index << 12) | {page}",
    "    .endif",
    "    .set zg_pt_index, zg_pt_index + 1",
    "    .endr",
    table = const TABLE_FLAGS,
    page = const PAGE_FLAGS,
    guard = const USER_STACK_GUARD,
    large = const LARGE_PAGE_FLAGS,
    directories = const DIRECTORIES,
);
