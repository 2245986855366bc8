//! The Intel MultiProcessor Specification 1.4 table, so a Linux guest finds every vCPU and the
//! I/O APIC without ACPI.
//!
//! Written at the start of the EBDA ([`EBDA_START`], reserved in the e820 map up to 1 MiB),
//! one of the places Linux scans for the floating pointer:
//!
//! ```text
//! EBDA_START       MP floating pointer ("_MP_", 16 bytes) -> configuration table
//! EBDA_START + 16  configuration table header ("PCMP", 44 bytes), then its entries:
//!                  one processor per vCPU, the ISA bus, the I/O APIC, ISA IRQs 0..=23 to
//!                  I/O APIC pins 0..=23, LINT0 ExtINT and LINT1 NMI
//! ```
//!
//! Every structure is little-endian and packed, so it is built byte by byte.

use super::layout::{EBDA_START, HIMEM_START};
use crate::config::MAX_VCPUS;

const SPEC_REV: u8 = 4;
const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const OEM_ID: &[u8; 8] = b"ZYGOTE  ";
const PRODUCT_ID: &[u8; 12] = b"MICROVM     ";
const LOCAL_APIC_ADDRESS: u32 = 0xfee0_0000;
const LOCAL_APIC_VERSION: u8 = 0x14;
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOT_PROCESSOR: u8 = 1 << 1;
/// Family 6 in the CPU signature, as Firecracker reports.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURE_FPU: u32 = 1 << 0;
const CPU_FEATURE_APIC: u32 = 1 << 9;

const BUS_ID_ISA: u8 = 0;
const BUS_TYPE_ISA: &[u8; 6] = b"ISA   ";
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
const IOAPIC_ENABLED: u8 = 1;
/// Pins of KVM's in-kernel I/O APIC.
const IOAPIC_PINS: u8 = 24;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger mode conform to the bus.
const INT_FLAGS_CONFORM: u16 = 0;
const ALL_LOCAL_APICS: u8 = 0xff;
/// Number of local interrupt entries (LINT0 and LINT1).
const LOCAL_INTERRUPTS: usize = 2;

/// Errors from writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// The vCPU count is 0 or leaves no APIC id for the I/O APIC.
    #[error("an MP table describes 1 to {max} vCPUs, not {vcpus}")]
    VcpuCount {
        /// The count asked for.
        vcpus: u8,
        /// The largest count supported.
        max: u8,
    },
    /// The table would run into the kernel at 1 MiB.
    #[error("the MP table ({size} bytes) does not fit between the EBDA and 1 MiB")]
    TooLarge {
        /// Size of the floating pointer and the configuration table.
        size: usize,
    },
}

/// The floating pointer followed by the configuration table for `vcpus` vCPUs: the bytes
/// that go at [`EBDA_START`].
pub fn bytes(vcpus: u8) -> Result<Vec<u8>, MpTableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MpTableError::VcpuCount {
            vcpus,
            max: MAX_VCPUS,
        });
    }
    check_fits(size(vcpus))?;
    let table_addr = EBDA_START + FLOATING_POINTER_SIZE as u64;
    let mut bytes = floating_pointer(table_addr as u32).to_vec();
    bytes.extend_from_slice(&config_table(vcpus));
    Ok(bytes)
}

/// Bytes taken by the floating pointer and the configuration table for `vcpus` vCPUs.
pub fn size(vcpus: u8) -> usize {
    FLOATING_POINTER_SIZE + HEADER_SIZE + entries_size(vcpus)
}

fn entries_size(vcpus: u8) -> usize {
    let small = 1 + 1 + usize::from(IOAPIC_PINS) + LOCAL_INTERRUPTS;
    usize::from(vcpus) * PROCESSOR_ENTRY_SIZE + small * SMALL_ENTRY_SIZE
}

/// Checks that `size` bytes from [`EBDA_START`] stay below the kernel at 1 MiB.
fn check_fits(size: usize) -> Result<(), MpTableError> {
    let room = HIMEM_START.0 - EBDA_START;
    match u64::try_from(size) {
        Ok(len) if len <= room => Ok(()),
        _ => Err(MpTableError::TooLarge { size }),
    }
}

/// The byte that makes `bytes` sum to 0 mod 256 once it is added.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, &b| sum.wrapping_add(b))
        .wrapping_neg()
}

fn floating_pointer(table_addr: u32) -> [u8; FLOATING_POINTER_SIZE] {
    let mut bytes = [0u8; FLOATING_POINTER_SIZE];
    bytes[0..4].copy_from_slice(b"_MP_");
    bytes[4..8].copy_from_slice(&table_addr.to_le_bytes());
    bytes[8] = 1; // length in 16-byte units
    bytes[9] = SPEC_REV;
    // Feature bytes 11..16 stay 0: a configuration table is present, virtual-wire mode.
    bytes[10] = checksum(&bytes);
    bytes
}

fn config_table(vcpus: u8) -> Vec<u8> {
    let mut entries = Vec::with_capacity(entries_size(vcpus));
    let mut count: u16 = 0;
    for id in 0..vcpus {
        entries.extend_from_slice(&processor(id));
        count += 1;
    }
    entries.extend_from_slice(&bus());
    entries.extend_from_slice(&ioapic(vcpus));
    count += 2;
    for pin in 0..IOAPIC_PINS {
        entries.extend_from_slice(&io_interrupt(pin, vcpus));
        count += 1;
    }
    entries.extend_from_slice(&local_interrupt(INT_TYPE_EXTINT, 0, 0));
    entries.extend_from_slice(&local_interrupt(INT_TYPE_NMI, ALL_LOCAL_APICS, 1));
    count += LOCAL_INTERRUPTS as u16;

    let mut table = header((HEADER_SIZE + entries.len()) as u16, count).to_vec();
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The header with a zero checksum, filled in once the entries follow it.
fn header(length: u16, entry_count: u16) -> [u8; HEADER_SIZE] {
    let mut bytes = [0u8; HEADER_SIZE];
    bytes[0..4].copy_from_slice(b"PCMP");
    bytes[4..6].copy_from_slice(&length.to_le_bytes());
    bytes[6] = SPEC_REV;
    bytes[8..16].copy_from_slice(OEM_ID);
    bytes[16..28].copy_from_slice(PRODUCT_ID);
    // 28..34: no OEM table (pointer 0, size 0).
    bytes[34..36].copy_from_slice(&entry_count.to_le_bytes());
    bytes[36..40].copy_from_slice(&LOCAL_APIC_ADDRESS.to_le_bytes());
    // 40..44: no extended table (length 0, checksum 0), reserved.
    bytes
}

fn processor(apic_id: u8) -> [u8; PROCESSOR_ENTRY_SIZE] {
    let mut bytes = [0u8; PROCESSOR_ENTRY_SIZE];
    bytes[0] = ENTRY_PROCESSOR;
    bytes[1] = apic_id;
    bytes[2] = LOCAL_APIC_VERSION;
    bytes[3] = CPU_ENABLED | if apic_id == 0 { CPU_BOOT_PROCESSOR } else { 0 };
    bytes[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
    bytes[8..12].copy_from_slice(&(CPU_FEATURE_FPU | CPU_FEATURE_APIC).to_le_bytes());
    bytes
}

fn bus() -> [u8; SMALL_ENTRY_SIZE] {
    let mut bytes = [0u8; SMALL_ENTRY_SIZE];
    bytes[0] = ENTRY_BUS;
    bytes[1] = BUS_ID_ISA;
    bytes[2..8].copy_from_slice(BUS_TYPE_ISA);
    bytes
}

fn ioapic(id: u8) -> [u8; SMALL_ENTRY_SIZE] {
    let mut bytes = [0u8; SMALL_ENTRY_SIZE];
    bytes[0] = ENTRY_IOAPIC;
    bytes[1] = id;
    bytes[2] = IOAPIC_VERSION;
    bytes[3] = IOAPIC_ENABLED;
    bytes[4..8].copy_from_slice(&IOAPIC_ADDRESS.to_le_bytes());
    bytes
}

/// ISA IRQ `irq` to pin `irq` of the I/O APIC with id `ioapic_id`.
fn io_interrupt(irq: u8, ioapic_id: u8) -> [u8; SMALL_ENTRY_SIZE] {
    let flags = INT_FLAGS_CONFORM.to_le_bytes();
    [
        ENTRY_IO_INTERRUPT,
        INT_TYPE_INT,
        flags[0],
        flags[1],
        BUS_ID_ISA,
        irq,
        ioapic_id,
        irq,
    ]
}

fn local_interrupt(kind: u8, apic_id: u8, lint: u8) -> [u8; SMALL_ENTRY_SIZE] {
    let flags = INT_FLAGS_CONFORM.to_le_bytes();
    [
        ENTRY_LOCAL_INTERRUPT,
        kind,
        flags[0],
        flags[1],
        BUS_ID_ISA,
        0,
        apic_id,
        lint,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes of `written` (what goes at [`EBDA_START`]) from guest address `addr`.
    fn read(written: &[u8], addr: u64, len: usize) -> Vec<u8> {
        let at = (addr - EBDA_START) as usize;
        written[at..at + len].to_vec()
    }

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)) == 0
    }

    /// The configuration table written for `vcpus`, read back through its floating pointer.
    fn written_table(vcpus: u8) -> Vec<u8> {
        let mem = bytes(vcpus).unwrap();
        assert_eq!(mem.len(), size(vcpus));
        let pointer = read(&mem, EBDA_START, FLOATING_POINTER_SIZE);
        assert_eq!(&pointer[0..4], b"_MP_");
        assert_eq!(pointer[8], 1);
        assert_eq!(pointer[9], 4);
        assert!(sums_to_zero(&pointer));
        let table_addr = u32::from_le_bytes(pointer[4..8].try_into().unwrap());
        assert_eq!(u64::from(table_addr), EBDA_START + 16);
        let header = read(&mem, table_addr.into(), HEADER_SIZE);
        let length = u16::from_le_bytes([header[4], header[5]]);
        read(&mem, table_addr.into(), length.into())
    }

    /// The entries of a table as (type, bytes) pairs.
    fn entries(table: &[u8]) -> Vec<&[u8]> {
        let mut rest = &table[HEADER_SIZE..];
        let mut out = Vec::new();
        while let Some(&kind) = rest.first() {
            let len = if kind == ENTRY_PROCESSOR { 20 } else { 8 };
            let (entry, tail) = rest.split_at(len);
            out.push(entry);
            rest = tail;
        }
        out
    }

    #[test]
    fn floating_pointer_points_at_a_valid_table() {
        let table = written_table(4);
        assert_eq!(&table[0..4], b"PCMP");
        assert_eq!(table[6], 4);
        assert!(sums_to_zero(&table));
        assert_eq!(table.len(), size(4) - FLOATING_POINTER_SIZE);
        assert_eq!(&table[36..40], &0xfee0_0000u32.to_le_bytes());
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(usize::from(count), entries(&table).len());
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
    }

    #[test]
    fn one_processor_per_vcpu_and_only_the_first_boots() {
        for vcpus in [1, 3, MAX_VCPUS] {
            let table = written_table(vcpus);
            let cpus: Vec<_> = entries(&table)
                .into_iter()
                .filter(|e| e[0] == ENTRY_PROCESSOR)
                .collect();
            assert_eq!(cpus.len(), usize::from(vcpus));
            for (index, cpu) in cpus.iter().enumerate() {
                assert_eq!(usize::from(cpu[1]), index, "APIC id");
                assert_eq!(cpu[2], 0x14);
                let boot = if index == 0 { CPU_BOOT_PROCESSOR } else { 0 };
                assert_eq!(cpu[3], CPU_ENABLED | boot);
            }
        }
    }

    #[test]
    fn ioapic_follows_the_vcpus_and_receives_every_isa_irq() {
        let table = written_table(6);
        let entries = entries(&table);
        let ioapics: Vec<_> = entries.iter().filter(|e| e[0] == ENTRY_IOAPIC).collect();
        assert_eq!(ioapics.len(), 1);
        assert_eq!(ioapics[0][..4], [ENTRY_IOAPIC, 6, 0x11, 1]);
        assert_eq!(ioapics[0][4..8], 0xfec0_0000u32.to_le_bytes());
        let buses: Vec<_> = entries.iter().filter(|e| e[0] == ENTRY_BUS).collect();
        assert_eq!(buses, [&[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']]);
        let irqs: Vec<_> = entries
            .iter()
            .filter(|e| e[0] == ENTRY_IO_INTERRUPT)
            .map(|e| (e[1], e[5], e[6], e[7]))
            .collect();
        let expected: Vec<_> = (0..24).map(|irq| (INT_TYPE_INT, irq, 6, irq)).collect();
        assert_eq!(irqs, expected);
        let lints: Vec<_> = entries
            .iter()
            .filter(|e| e[0] == ENTRY_LOCAL_INTERRUPT)
            .map(|e| (e[1], e[6], e[7]))
            .collect();
        assert_eq!(lints, [(INT_TYPE_EXTINT, 0, 0), (INT_TYPE_NMI, 0xff, 1)]);
    }

    #[test]
    fn the_largest_table_fits_below_the_kernel() {
        let size = size(MAX_VCPUS);
        assert_eq!(size, 16 + 44 + 254 * 20 + 28 * 8);
        assert!(EBDA_START + size as u64 <= HIMEM_START.0);
        check_fits(size).unwrap();
    }

    #[test]
    fn a_table_past_one_mib_is_refused() {
        let room = (HIMEM_START.0 - EBDA_START) as usize;
        check_fits(room).unwrap();
        assert!(matches!(
            check_fits(room + 1),
            Err(MpTableError::TooLarge { size }) if size == room + 1
        ));
    }

    #[test]
    fn vcpu_counts_without_a_free_ioapic_id_are_refused() {
        for vcpus in [0, MAX_VCPUS + 1] {
            assert!(matches!(bytes(vcpus), Err(MpTableError::VcpuCount { .. })));
        }
    }
}
