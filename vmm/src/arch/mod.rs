//! x86_64 specifics: memory layout, boot structures and the initial CPU state.

pub mod boot_params;
pub mod cpuid;
pub mod identity;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
