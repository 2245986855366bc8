//! Register state for entering a 64-bit kernel: boot GDT, identity page tables, sregs, regs, FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::GuestAddress;

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
/// Bytes in one page-table page (512 entries).
const PAGE_TABLE_SIZE: usize = 4096;

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

/// The boot GDT and where it goes.
pub fn boot_gdt() -> (GuestAddress, Vec<u8>) {
    let bytes = BOOT_GDT
        .iter()
        .flat_map(|entry| entry.to_le_bytes())
        .collect();
    (BOOT_GDT_START, bytes)
}

/// The (empty, one null gate) boot IDT and where it goes.
pub fn boot_idt() -> (GuestAddress, Vec<u8>) {
    (BOOT_IDT_START, vec![0; 8])
}

/// The identity page tables covering the first GiB with 2 MiB pages: one whole page each for
/// the PML4, the PDPT and the PD, with where each goes.
pub fn page_tables() -> [(GuestAddress, Vec<u8>); 3] {
    const PRESENT_RW: u64 = 0x03;
    const PAGE_SIZE_2M: u64 = 0x80;
    let table = |entries: &mut dyn Iterator<Item = u64>| {
        let mut page: Vec<u8> = entries.flat_map(u64::to_le_bytes).collect();
        page.resize(PAGE_TABLE_SIZE, 0);
        page
    };
    [
        (
            PML4_START,
            table(&mut std::iter::once(PDPTE_START.0 | PRESENT_RW)),
        ),
        (
            PDPTE_START,
            table(&mut std::iter::once(PDE_START.0 | PRESENT_RW)),
        ),
        (
            PDE_START,
            table(&mut (0..512u64).map(|i| (i << 21) | PAGE_SIZE_2M | PRESENT_RW)),
        ),
    ]
}

/// The special registers for 64-bit long mode with the boot GDT, IDT and page tables loaded
/// (which the boot's memory plan writes, `crate::boot::load`).
pub fn setup_long_mode(mut sregs: kvm_sregs) -> kvm_sregs {
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
    sregs
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

    fn entry(table: &[u8], index: usize) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&table[index * 8..index * 8 + 8]);
        u64::from_le_bytes(bytes)
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let [(pml4_at, pml4), (pdpt_at, pdpt), (pd_at, pd)] = page_tables();
        assert_eq!(
            (pml4_at, pdpt_at, pd_at),
            (PML4_START, PDPTE_START, PDE_START)
        );
        assert!([&pml4, &pdpt, &pd].iter().all(|t| t.len() == 4096));
        assert_eq!(entry(&pml4, 0), 0xa003);
        assert_eq!(entry(&pml4, 1), 0, "the rest of each table is not present");
        assert_eq!(entry(&pdpt, 0), 0xb003);
        assert_eq!(entry(&pdpt, 511), 0);
        for i in [0usize, 1, 255, 511] {
            assert_eq!(entry(&pd, i), ((i as u64) << 21) | 0x83, "PDE {i}");
        }
    }

    #[test]
    fn long_mode_sregs_and_gdt() {
        let sregs = setup_long_mode(kvm_sregs::default());
        assert_eq!(sregs.cs.selector, BOOT_CODE_SELECTOR);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.cs.type_, 0xb);
        assert_eq!(sregs.ds.selector, BOOT_DATA_SELECTOR);
        assert_eq!(sregs.ds.limit, 0xffff_ffff);
        assert_eq!(sregs.cr3, PML4_START.0);
        assert_eq!(sregs.cr0 & 0x8000_0001, 0x8000_0001);
        assert_eq!(sregs.efer & 0x500, 0x500);
        let (gdt_at, gdt) = boot_gdt();
        assert_eq!(gdt_at.0, sregs.gdt.base);
        assert_eq!(gdt.len(), usize::from(sregs.gdt.limit) + 1);
        assert_eq!(entry(&gdt, 2), 0x00af_9b00_0000_ffff);
        let regs = boot_regs(GuestAddress(0x10_0000));
        assert_eq!(regs.rsi, ZERO_PAGE_START.0);
        assert_eq!(regs.rip, 0x10_0000);
    }

    #[test]
    fn the_boot_idt_does_not_overwrite_the_gdts_tss_descriptor() {
        let (gdt_at, gdt) = boot_gdt();
        let (idt_at, _) = boot_idt();
        assert!(gdt_at.0 + gdt.len() as u64 <= idt_at.0, "IDT at {idt_at:?}");
        assert_eq!(
            entry(&gdt, 4),
            BOOT_GDT[4],
            "the TSS descriptor is in the GDT"
        );
    }
}
