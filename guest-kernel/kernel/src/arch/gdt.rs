//! The GDT, the TSS and the exception stack, all static data.
//!
//! Layout follows the Linux boot protocol's selectors so the VMM's CS (0x10) and DS/SS (0x18)
//! stay valid, and the user pair is ordered for a future `sysret` (STAR base 0x18).

use core::arch::global_asm;

/// 64-bit kernel code (DPL0), the selector the VMM enters with.
pub const KERNEL_CODE: u16 = 0x10;
/// Kernel data (DPL0).
pub const KERNEL_DATA: u16 = 0x18;
/// User data (DPL3), with RPL 3.
pub const USER_DATA: u16 = 0x20 | 3;
/// 64-bit user code (DPL3), with RPL 3.
pub const USER_CODE: u16 = 0x28 | 3;
/// The 64-bit TSS (a 16-byte descriptor).
pub const TSS: u16 = 0x30;

/// User mode may use the I/O ports below this (COM1, the exit ports, the i8042); others fault.
const IO_BITMAP_PORTS: usize = 0x400;

/// Size of the stack exceptions from CPL3 switch to (TSS.rsp0).
const EXCEPTION_STACK_SIZE: usize = 16 * 1024;

global_asm!(
    ".section .data.zg_gdt, \"aw\"",
    ".balign 16",
    ".global zg_gdt",
    "zg_gdt:",
    "    .quad 0",                  // 0x00 null
    "    .quad 0",                  // 0x08 unused
    "    .quad 0x00af9b000000ffff", // 0x10 kernel code: present, DPL0, L=1
    "    .quad 0x00cf93000000ffff", // 0x18 kernel data: present, DPL0, writable
    "    .quad 0x00cff3000000ffff", // 0x20 user data: present, DPL3, writable
    "    .quad 0x00affb000000ffff", // 0x28 user code: present, DPL3, L=1
    ".global zg_gdt_tss",
    "zg_gdt_tss:",                  // 0x30 TSS: type 9 (available), present
    "    .word zg_tss_end - zg_tss - 1, 0", // limit 15:0, base 15:0 (filled by _start)
    "    .byte 0, 0x89, 0, 0",      // base 23:16 (filled), access, limit 19:16, base 31:24 (filled)
    "    .long 0, 0",               // base 63:32, reserved
    "zg_gdt_end:",
    "",
    ".balign 8",
    ".global zg_gdt_ptr",
    "zg_gdt_ptr:",
    "    .word zg_gdt_end - zg_gdt - 1",
    "    .quad zg_gdt",
    "",
    // The 64-bit TSS: rsp0 (offset 4) and an I/O permission bitmap allowing ports
    // 0..IO_BITMAP_PORTS. The bitmap is what lets user mode reach the ports under PVM, whose
    // emulated `iretq` drops IOPL (see DESIGN.md); on other hosts IOPL 3 already allows them.
    ".balign 16",
    ".global zg_tss",
    "zg_tss:",
    "    .long 0",
    "    .quad zg_exception_stack_top", // rsp0
    "    .fill 11, 8, 0",               // rsp1, rsp2, reserved, ist1..7, reserved
    "    .word 0",
    "    .word zg_tss_io_bitmap - zg_tss", // I/O map base
    "zg_tss_io_bitmap:",
    "    .fill {io_bitmap_bytes}, 1, 0", // 0 = allowed
    "    .byte 0xff",                     // the terminator the CPU requires
    "zg_tss_end:",
    "",
    ".section .stacks.exception, \"aw\", @nobits",
    ".balign 4096",
    "    .skip {stack_size}",
    "zg_exception_stack_top:",
    stack_size = const EXCEPTION_STACK_SIZE,
    io_bitmap_bytes = const IO_BITMAP_PORTS / 8,
);
