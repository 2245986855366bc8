//! Register state for entering a 64-bit kernel: boot GDT, identity page tables, sregs, regs, FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Selector of the 64-bit code segment (GDT entry 2), as Linux's boot protocol wants.
pub const BOOT_CODE_SELECTOR: u16 = 0x10;
/// Selector of the data segment (GDT entry 3).
pub const BOOT_DATA_SELECTOR: u16 = 0x18;
/// Selector of the TSS (GDT entry 4).
const BOOT_TSS_SELECTOR: u16 = 0x20;

/// The boot GDT: null, null, code64, data, TSS.
const BOOT_GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Encodes a segment descriptor from flags, base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Decodes a descriptor back into the form `KVM_SET_SREGS` takes.
fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granular = (entry >> 55) & 1 == 1;
    kvm_segment {
        base,
        limit: if granular {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes the boot GDT and an empty IDT.
fn write_gdt_idt(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, BOOT_GDT_START.unchecked_add(i as u64 * 8))?;
    }
    mem.write_obj(0u64, BOOT_IDT_START)
}

/// Writes identity page tables covering the first GiB with 2 MiB pages.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    const PRESENT_RW: u64 = 0x03;
    const PAGE_SIZE_2M: u64 = 0x80;
    mem.write_obj(PDPTE_START.0 | PRESENT_RW, PML4_START)?;
    mem.write_obj(PDE_START.0 | PRESENT_RW, PDPTE_START)?;
    let entries: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | PAGE_SIZE_2M | PRESENT_RW).to_le_bytes())
        .collect();
    mem.write_slice(&entries, PDE_START)
}

/// Writes the GDT, IDT and page tables into guest memory and returns the special registers
/// for 64-bit long mode with them loaded.
pub fn setup_long_mode(
    mem: &GuestMemoryMmap,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, GuestMemoryError> {
    write_gdt_idt(mem)?;
    write_page_tables(mem)?;
    sregs.gdt.base = BOOT_GDT_START.0;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START.0;
    sregs.idt.limit = 7;
    let code = kvm_segment_from_gdt(BOOT_GDT[2], 2);
    let data = kvm_segment_from_gdt(BOOT_GDT[3], 3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(BOOT_GDT[4], 4);
    debug_assert_eq!(sregs.tr.selector, BOOT_TSS_SELECTOR);
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    sregs.cr3 = PML4_START.0;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(sregs)
}

/// General registers at the kernel entry: rip at the entry, rsi at the zero page.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START.0,
        ..Default::default()
    }
}

/// FPU state after reset: x87 control word and MXCSR defaults.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = memory();
        write_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(PML4_START).unwrap();
        assert_eq!(pml4, 0xa003);
        let pdpte: u64 = mem.read_obj(PDPTE_START).unwrap();
        assert_eq!(pdpte, 0xb003);
        for i in [0u64, 1, 255, 511] {
            let pde: u64 = mem.read_obj(PDE_START.unchecked_add(i * 8)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83, "PDE {i}");
        }
    }

    #[test]
    fn long_mode_sregs_and_gdt() {
        let mem = memory();
        let sregs = setup_long_mode(&mem, kvm_sregs::default()).unwrap();
        assert_eq!(sregs.cs.selector, BOOT_CODE_SELECTOR);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.cs.type_, 0xb);
        assert_eq!(sregs.ds.selector, BOOT_DATA_SELECTOR);
        assert_eq!(sregs.ds.limit, 0xffff_ffff);
        assert_eq!(sregs.cr3, PML4_START.0);
        assert_eq!(sregs.cr0 & 0x8000_0001, 0x8000_0001);
        assert_eq!(sregs.efer & 0x500, 0x500);
        let code: u64 = mem.read_obj(BOOT_GDT_START.unchecked_add(16)).unwrap();
        assert_eq!(code, 0x00af_9b00_0000_ffff);
        let regs = boot_regs(GuestAddress(0x10_0000));
        assert_eq!(regs.rsi, ZERO_PAGE_START.0);
        assert_eq!(regs.rip, 0x10_0000);
    }
}
