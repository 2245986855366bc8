//! The CPUID a guest sees: KVM's supported set, with per-vCPU topology, the hypervisor bit,
//! and features the VMM cannot save and restore hidden.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_POWER: u32 = 0x6;
const LEAF_EXTENDED_FEATURES: u32 = 0x7;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_XSAVE: u32 = 0xd;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// Leaf 7 ECX bit 5: WAITPKG. Its control MSR (UMWAIT_CONTROL) is not in the saved MSR set.
const LEAF7_ECX_WAITPKG: u32 = 1 << 5;
/// Leaf 7 EDX bits 22, 24, 25: AMX. Its tile state does not fit the 4 KiB `kvm_xsave` area a
/// snapshot saves, and using it needs per-process permission.
const LEAF7_EDX_AMX: u32 = (1 << 22) | (1 << 24) | (1 << 25);
/// XCR0 bits 17 and 18: AMX tile configuration and data.
const XCR0_AMX: u32 = (1 << 17) | (1 << 18);

/// The hypervisor signature leaf (KVM's `KVMKVMKVM`); its EAX is the highest hypervisor leaf.
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// The timing leaf (the VMware convention Linux and Zygote's guest read): EAX = TSC frequency
/// in kHz, EBX = local APIC bus frequency in kHz.
pub const LEAF_TIMING: u32 = 0x4000_0010;
/// KVM's local APIC timer runs at 1 GHz.
const APIC_BUS_KHZ: u32 = 1_000_000;

/// Filters `supported` (from `KVM_GET_SUPPORTED_CPUID`) for vCPU `index` of `count`. With
/// `tsc_khz`, the timing leaf tells the guest its TSC frequency, so it need not calibrate it.
pub fn filter(supported: &CpuId, index: u8, count: u8, tsc_khz: Option<u32>) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        filter_entry(entry, index, count);
    }
    if let Some(khz) = tsc_khz {
        add_timing_leaf(&mut cpuid, khz);
    }
    cpuid
}

/// Adds the timing leaf if the hypervisor leaves are there to announce it.
fn add_timing_leaf(cpuid: &mut CpuId, tsc_khz: u32) {
    let Some(signature) = cpuid
        .as_mut_slice()
        .iter_mut()
        .find(|e| e.function == LEAF_HYPERVISOR)
    else {
        return;
    };
    signature.eax = signature.eax.max(LEAF_TIMING);
    let timing = kvm_cpuid_entry2 {
        function: LEAF_TIMING,
        eax: tsc_khz,
        ebx: APIC_BUS_KHZ,
        ..Default::default()
    };
    // A full table only loses the hint; the guest then calibrates on its own.
    let _ = cpuid.push(timing);
}

fn filter_entry(entry: &mut kvm_cpuid_entry2, index: u8, count: u8) {
    match entry.function {
        LEAF_FEATURES => {
            // Initial APIC ID in bits 31..24, logical processor count in bits 23..16.
            entry.ebx =
                (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
            entry.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_POWER => {
            // Thermal and power management are not virtualized.
            *entry = kvm_cpuid_entry2 {
                function: entry.function,
                index: entry.index,
                flags: entry.flags,
                ..Default::default()
            };
        }
        LEAF_EXTENDED_FEATURES if entry.index == 0 => {
            entry.ecx &= !LEAF7_ECX_WAITPKG;
            entry.edx &= !LEAF7_EDX_AMX;
        }
        LEAF_TOPOLOGY => entry.edx = u32::from(index),
        LEAF_XSAVE if entry.index == 0 => entry.eax &= !XCR0_AMX,
        LEAF_XSAVE if entry.index == 17 || entry.index == 18 => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, value: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: value,
            ebx: value,
            ecx: value,
            edx: value,
            ..Default::default()
        }
    }

    #[test]
    fn topology_hypervisor_bit_and_hidden_features() {
        let supported = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0, 0),
            entry(LEAF_POWER, 0, u32::MAX),
            entry(LEAF_EXTENDED_FEATURES, 0, u32::MAX),
            entry(LEAF_TOPOLOGY, 0, 0),
            entry(LEAF_XSAVE, 0, u32::MAX),
            entry(LEAF_XSAVE, 18, u32::MAX),
        ])
        .unwrap();
        let cpuid = filter(&supported, 1, 2, Some(2_000_000));
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 1);
        assert_eq!((e[0].ebx >> 16) & 0xff, 2);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].eax | e[1].ebx | e[1].ecx | e[1].edx, 0);
        assert_eq!(e[2].ecx & LEAF7_ECX_WAITPKG, 0);
        assert_eq!(e[2].edx & LEAF7_EDX_AMX, 0);
        assert_eq!(e[3].edx, 1);
        assert_eq!(e[4].eax & XCR0_AMX, 0);
        assert_eq!(e[5].eax, 0);
        // No hypervisor leaves in this table: no timing leaf either.
        assert!(e.iter().all(|entry| entry.function != LEAF_TIMING));
    }

    #[test]
    fn the_timing_leaf_announces_the_tsc_frequency() {
        let supported = CpuId::from_entries(&[entry(LEAF_HYPERVISOR, 0, 0x4000_0001)]).unwrap();
        let cpuid = filter(&supported, 0, 1, Some(2_245_780));
        let e = cpuid.as_slice();
        assert_eq!(e[0].eax, LEAF_TIMING);
        let timing = e
            .iter()
            .find(|entry| entry.function == LEAF_TIMING)
            .unwrap();
        assert_eq!((timing.eax, timing.ebx), (2_245_780, 1_000_000));
    }
}
