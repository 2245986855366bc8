//! Guest physical memory layout (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT (5 entries)        0x0000_9000  PML4
//! 0x0000_0530  IDT (empty)            0x0000_a000  PDPT
//! 0x0000_6000  VM identity page       0x0000_b000  PD (first 1 GiB, 2 MiB pages)
//! 0x0000_7000  zero page              0x0002_0000  kernel command line
//! 0x0000_8000  boot stack, top 0x8ff0
//! 0x0009_fc00  EBDA (reserved up to 1 MiB)
//! 0x0010_0000  kernel (ELF physical addresses), then free RAM
//! 0xc000_0000  MMIO gap up to 4 GiB: virtio-mmio devices from 0xd000_0000, TSS and
//!              identity-map pages for KVM just below 4 GiB
//! 0x1_0000_0000  RAM beyond the first 3 GiB
//! ```

use vm_memory::GuestAddress;

/// Where the boot GDT is written.
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// Where the (empty) boot IDT is written: after the GDT's five entries (0x500..0x528).
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x530);
/// The VM identity page ([`super::identity`]), reserved in the e820 map.
pub const VM_IDENTITY_START: GuestAddress = GuestAddress(zygote_guest_proto::VM_IDENTITY_ADDR);
/// Its size: one page.
pub const VM_IDENTITY_SIZE: u64 = 4096;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Lowest address of the stack the boot vCPU enters the kernel with.
pub const BOOT_STACK_START: GuestAddress = GuestAddress(0x8000);
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Top-level page table.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// Page-directory-pointer table.
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
/// Page directory mapping the first GiB with 2 MiB pages.
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
/// The kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Longest command line accepted, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area; usable low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory: the lowest address a kernel is loaded at.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First address of the window virtio-mmio devices are placed in.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Three pages KVM needs for the real-mode TSS (`KVM_SET_TSS_ADDR`), inside the MMIO gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// One page KVM needs for its real-mode identity map, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// One region of guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest physical start.
    pub start: GuestAddress,
    /// Length in bytes.
    pub len: u64,
    /// Offset of the region in the memory file.
    pub file_offset: u64,
}

/// Splits `mem_size` bytes of RAM around the MMIO gap: up to two regions, laid one after the
/// other in the backing file.
pub fn ram_regions(mem_size: u64) -> Vec<RamRegion> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut regions = vec![RamRegion {
        start: GuestAddress(0),
        len: low,
        file_offset: 0,
    }];
    if mem_size > low {
        regions.push(RamRegion {
            start: GuestAddress(MMIO_GAP_END),
            len: mem_size - low,
            file_offset: low,
        });
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        let regions = ram_regions(128 << 20);
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].len, 128 << 20);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let regions = ram_regions(4 << 30);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].len, MMIO_GAP_START);
        assert_eq!(regions[1].start, GuestAddress(MMIO_GAP_END));
        assert_eq!(regions[1].len, (4 << 30) - MMIO_GAP_START);
        assert_eq!(regions[1].file_offset, MMIO_GAP_START);
    }
}
