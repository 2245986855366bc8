//! Exceptions raised on purpose by the `fault:<kind>` workload (from CPL3).

use core::arch::asm;

use zygote_guest_proto::{FaultKind, UNMAPPED_ADDR};

use super::idt;

/// An address that is not canonical (bits 63..47 differ), so reading it raises #GP.
const NON_CANONICAL_ADDR: u64 = 0x8000_0000_0000_0000;

/// Raises the exception `kind` names; never returns (the handler ends the VM).
pub fn raise(kind: FaultKind) -> ! {
    match kind {
        // SAFETY: `ud2` raises #UD; the handler never returns here.
        FaultKind::InvalidOpcode => unsafe { asm!("ud2", options(noreturn, nostack)) },
        // SAFETY: the read faults (#GP) before touching memory; the handler never returns.
        FaultKind::GeneralProtection => unsafe {
            asm!("mov rax, [rax]", in("rax") NON_CANONICAL_ADDR, options(noreturn, nostack))
        },
        // SAFETY: the address is past the identity map, so the read faults (#PF) without
        // touching memory; the handler never returns.
        FaultKind::PageFault => unsafe {
            asm!("mov rax, [rax]", in("rax") UNMAPPED_ADDR, options(noreturn, nostack))
        },
        // SAFETY: 1 / 0 raises #DE; the handler never returns.
        FaultKind::DivideError => unsafe {
            asm!(
                "xor edx, edx",
                "div ecx",
                in("eax") 1u32,
                in("ecx") 0u32,
                options(noreturn, nomem, nostack)
            )
        },
        FaultKind::TripleFault => {
            idt::clear();
            // SAFETY: with no gates, #UD escalates to #NP, #DF, then a triple fault (shutdown).
            unsafe { asm!("ud2", options(noreturn, nostack)) }
        }
    }
}
