//! Zygote's own guest kernel, built for the host's tests and examples.
//!
//! The build script compiles the kernel in `guest-kernel/kernel` for `x86_64-unknown-none` as
//! part of the ordinary build, and [`kernel_path`] says where the ELF landed. The guest/host
//! contract (ports, console lines, workloads, the memory pattern) is re-exported from
//! [`proto`].
//!
//! ```
//! use zygote_guest::{kernel_path, Workload};
//!
//! let kernel = kernel_path();
//! assert!(kernel.is_file());
//! let cmdline = format!("console=ttyS0 {}", Workload::Exit(7).cmdline_arg());
//! assert_eq!(cmdline, "console=ttyS0 zygote.workload=exit:7");
//! ```
#![deny(missing_docs)]

use std::path::Path;

pub use zygote_guest_proto as proto;
pub use zygote_guest_proto::{
    exit_code, pattern_checksum, pattern_word, Checksum, ExceptionReport, FaultKind, TouchResult,
    UnknownWorkload, Workload, COM1_PORT, DEBUG_EXIT_PORT, FAULT_PORT, IDENTITY_MAP_LIMIT,
    KERNEL_LOAD_ADDR, READY_LINE, WORKLOAD_KEY,
};

/// Path of the guest kernel ELF (`ET_EXEC`, loaded at [`KERNEL_LOAD_ADDR`], entered through the
/// Linux x86_64 64-bit boot protocol), built by this crate's build script.
pub fn kernel_path() -> &'static Path {
    Path::new(env!("ZYGOTE_GUEST_KERNEL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a little-endian integer of `N` bytes at `offset`.
    fn field<const N: usize>(bytes: &[u8], offset: usize) -> u64 {
        let mut value = [0u8; 8];
        value[..N].copy_from_slice(&bytes[offset..offset + N]);
        u64::from_le_bytes(value)
    }

    #[test]
    fn kernel_is_an_x86_64_exec_elf_entered_above_1_mib() {
        let elf = std::fs::read(kernel_path()).expect("the build script built the kernel");
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "64-bit");
        assert_eq!(field::<2>(&elf, 0x10), 2, "ET_EXEC");
        assert_eq!(field::<2>(&elf, 0x12), 62, "x86_64");
        let entry = field::<8>(&elf, 0x18);
        assert!((KERNEL_LOAD_ADDR..KERNEL_LOAD_ADDR + 0x10_0000).contains(&entry));
    }

    #[test]
    fn every_load_segment_sits_at_or_above_1_mib() {
        let elf = std::fs::read(kernel_path()).unwrap();
        let phoff = field::<8>(&elf, 0x20) as usize;
        let phentsize = field::<2>(&elf, 0x36) as usize;
        let phnum = field::<2>(&elf, 0x38) as usize;
        let mut loads = 0;
        for index in 0..phnum {
            let header = phoff + index * phentsize;
            if field::<4>(&elf, header) == 1 {
                loads += 1;
                let paddr = field::<8>(&elf, header + 0x18);
                assert!(paddr >= KERNEL_LOAD_ADDR, "PT_LOAD at {paddr:#x}");
                assert!(paddr + field::<8>(&elf, header + 0x28) <= 1 << 30);
            }
        }
        assert!(loads > 0);
    }
}
