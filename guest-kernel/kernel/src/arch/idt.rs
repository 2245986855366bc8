//! The IDT: a zeroed table loaded by `_start`, whose gates for vectors 0–31 user mode fills in
//! (the table is user-writable like all memory), the per-vector entry stubs and the common
//! exception path, which runs at CPL0, prints an [`ExceptionReport`] line, reports the vector
//! on the fault port and halts.

use core::arch::global_asm;
use core::ptr::addr_of_mut;

use zygote_guest_proto::ExceptionReport;

use super::gdt::KERNEL_CODE;
use crate::{exit, println};

/// Gates in the IDT.
const IDT_GATES: usize = 256;
/// Exceptions the CPU defines: the vectors that get gates.
const EXCEPTION_VECTORS: usize = 32;
/// Gate attributes: present, DPL0, 64-bit interrupt gate (interrupts stay off in handlers).
const INTERRUPT_GATE: u64 = 0x8e;

extern "C" {
    /// 256 gates of 16 bytes, in `.bss` (zeroed by the CPL3 entry before any fill).
    static mut zg_idt: [[u64; 2]; IDT_GATES];
    /// Addresses of `zg_stub_0` .. `zg_stub_31`, in vector order.
    static zg_exception_stubs: [u64; EXCEPTION_VECTORS];
}

global_asm!(
    ".section .bss.zg_idt, \"aw\", @nobits",
    ".balign 4096",
    ".global zg_idt",
    "zg_idt:",
    "    .skip 256 * 16",
    "",
    ".section .rodata.zg_idt_ptr, \"a\"",
    ".balign 8",
    ".global zg_idt_ptr",
    "zg_idt_ptr:",
    "    .word 256 * 16 - 1",
    "    .quad zg_idt",
    "",
    // One stub per vector: push a dummy error code where the CPU pushes none, then the vector.
    // Stack then (from rsp): vector, error code, rip, cs, rflags, rsp, ss.
    ".section .text.zg_exceptions, \"ax\"",
    ".macro zg_stub vector, has_error",
    ".balign 16",
    "zg_stub_\\vector:",
    ".if \\has_error == 0",
    "    push 0",
    ".endif",
    "    push \\vector",
    "    jmp zg_exception_common",
    ".endm",
    ".irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31",
    "    zg_stub \\v, 0",
    ".endr",
    ".irp v, 8,10,11,12,13,14,17,21,29,30",
    "    zg_stub \\v, 1",
    ".endr",
    "",
    "zg_exception_common:",
    "    mov rdi, [rsp]",
    "    mov rsi, [rsp + 8]",
    "    mov rdx, [rsp + 16]",
    "    and rsp, -16",
    "    call {handler}",
    "    ud2",
    "",
    ".section .rodata.zg_exception_stubs, \"a\"",
    ".balign 8",
    ".global zg_exception_stubs",
    "zg_exception_stubs:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    .quad zg_stub_\\v",
    ".endr",
    handler = sym exception_handler,
);

/// Fills the gates for vectors 0–31. Runs at CPL3: the IDT is ordinary user-writable memory.
pub fn install_exception_gates() {
    // SAFETY: the stub table is initialized, read-only static data.
    let stubs = unsafe { &zg_exception_stubs };
    for (vector, &stub) in stubs.iter().enumerate() {
        write_gate(vector, gate(stub));
    }
}

/// Zeroes every gate, so the next exception escalates to a triple fault.
pub fn clear() {
    for vector in 0..IDT_GATES {
        write_gate(vector, [0, 0]);
    }
}

/// Writes gate `vector` (< 256) of the IDT.
fn write_gate(vector: usize, gate: [u64; 2]) {
    assert!(vector < IDT_GATES);
    let gates = addr_of_mut!(zg_idt).cast::<[u64; 2]>();
    // SAFETY: `zg_idt` is a static table of IDT_GATES gates that no Rust reference points into,
    // and `vector` is in bounds. Volatile: the CPU, not Rust, reads it.
    unsafe { gates.add(vector).write_volatile(gate) };
}

/// A 64-bit interrupt gate to `handler` in the kernel code segment, IST 0.
fn gate(handler: u64) -> [u64; 2] {
    let low = (handler & 0xffff)
        | (u64::from(KERNEL_CODE) << 16)
        | (INTERRUPT_GATE << 40)
        | (((handler >> 16) & 0xffff) << 48);
    [low, handler >> 32]
}

/// The common exception path, called by `zg_exception_common` at CPL0 on the exception stack.
extern "C" fn exception_handler(vector: u64, error: u64, rip: u64) -> ! {
    // Vectors come from the stubs: 0..32.
    let vector = vector as u8;
    println!("{}", ExceptionReport { vector, error, rip });
    exit::report_fault(u32::from(vector));
    super::halt_forever()
}
