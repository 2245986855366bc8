//! The drop to user mode: the static `iretq` frame `_start` returns through, the user stack,
//! and the CPL3 entry that zeroes `.bss` and calls the Rust side.

use core::arch::global_asm;

use super::gdt::{USER_CODE, USER_DATA};

/// RFLAGS in user mode: IOPL 3 (port I/O allowed), IF clear, bit 1 (reserved, always set).
const USER_RFLAGS: u64 = 0x3002;
/// Size of the one user-mode stack.
const USER_STACK_SIZE: usize = 64 * 1024;

global_asm!(
    // What `iretq` pops, in order: rip, cs, rflags, rsp, ss.
    ".section .data.zg_iret_frame, \"aw\"",
    ".balign 16",
    ".global zg_iret_frame",
    "zg_iret_frame:",
    "    .quad zg_user_entry",
    "    .quad {user_code}",
    "    .quad {rflags}",
    "    .quad zg_user_stack_top",
    "    .quad {user_data}",
    "",
    // Above the exception stack (link.ld), over an unmapped guard page (arch/paging.rs).
    ".section .stacks.user, \"aw\", @nobits",
    ".balign 4096",
    ".global zg_user_stack_guard",
    "zg_user_stack_guard:",
    "    .skip 4096",
    "    .skip {stack_size}",
    "zg_user_stack_top:",
    "",
    // CPL3 from here on. rdi = zero page address (set by _start).
    ".section .text.zg_user_entry, \"ax\"",
    "zg_user_entry:",
    "    mov r12, rdi",
    "    lea rdi, [rip + __bss_start]",
    "    lea rcx, [rip + __bss_end]",
    "    sub rcx, rdi",
    "    xor eax, eax",
    "    cld",
    "    rep stosb",
    "    mov rdi, r12",
    "    call {main}",
    "    ud2",
    user_code = const USER_CODE,
    user_data = const USER_DATA,
    rflags = const USER_RFLAGS,
    stack_size = const USER_STACK_SIZE,
    main = sym crate::user_main,
);
