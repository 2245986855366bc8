//! `_start`: the only code that runs at CPL0 on the way up (18 instructions, see DESIGN.md).
//!
//! Entered per the Linux x86_64 64-bit boot protocol: long mode, CPL0, interrupts off, the VMM's
//! identity map of the first GiB active, `rsi` = the zero page. Nothing here needs a stack: the
//! `iretq` frame is static data (`arch/usermode.rs`) that `rsp` points at just before `iretq`.

use core::arch::global_asm;

use super::gdt::{KERNEL_DATA, TSS};

global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    // Our page tables (static data, identity map of 0..16 GiB, user-accessible).
    "    lea rax, [rip + zg_pml4]",
    "    mov cr3, rax",
    // Our GDT. The TSS descriptor's base is a link-time address the assembler cannot split into
    // its bit fields, so fill bits 0..32 here (link.ld asserts the TSS is below 4 GiB).
    "    lgdt [rip + zg_gdt_ptr]",
    "    lea rax, [rip + zg_tss]",
    "    mov word ptr [rip + zg_gdt_tss + 2], ax",
    "    shr eax, 16",
    "    mov byte ptr [rip + zg_gdt_tss + 4], al",
    "    mov byte ptr [rip + zg_gdt_tss + 7], ah",
    // Data segments from our GDT (the selectors match the VMM's, but the caches came from it).
    "    mov eax, {kernel_data}",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    // TSS (rsp0 = the exception stack, set at link time) and IDT (gates filled later at CPL3).
    "    mov eax, {tss}",
    "    ltr ax",
    "    lidt [rip + zg_idt_ptr]",
    // To CPL3 with IOPL 3, the zero page address as the first argument.
    "    mov rdi, rsi",
    "    lea rsp, [rip + zg_iret_frame]",
    "    iretq",
    kernel_data = const KERNEL_DATA,
    tss = const TSS,
);
