//! Everything x86_64-specific: the CPL0 entry, the descriptor tables, the page tables, the drop
//! to user mode, port I/O and the exceptions raised on purpose.
//!
//! Only `entry` and the exception path run at CPL0 (emulated, ~1.2 µs per instruction on the
//! project's machines); everything else runs at CPL3. See DESIGN.md for the budget.

pub mod entry;
pub mod faults;
pub mod gdt;
pub mod idt;
pub mod paging;
pub mod port;
pub mod usermode;

/// Halts forever. CPL0 only (`hlt` at CPL3 raises #GP); interrupts are off, so it never wakes.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `hlt` touches no memory; the caller runs at CPL0 (the exception path).
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
    }
}
