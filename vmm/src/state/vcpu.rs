//! A vCPU's architectural state as KVM holds it, read out of a parked vCPU and written into a
//! new one.
//!
//! The order of the ioctls follows Firecracker's (`vmm/src/arch/x86_64/vcpu.rs`, which cites
//! the KVM API for each constraint): `KVM_GET_MP_STATE` first because it may flush pending
//! LAPIC events into the state read after it; `KVM_SET_LAPIC` before `KVM_SET_MSRS` so the
//! TSC deadline is armed against the restored LAPIC; `KVM_SET_VCPU_EVENTS` last.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;

/// Everything KVM holds for one vCPU. Plain data; [`VcpuState::restore`] validates what it
/// can and KVM refuses the rest.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VcpuState {
    /// The vCPU's index (its APIC ID).
    pub index: u8,
    /// The CPUID table the vCPU was created with.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// `KVM_GET_MP_STATE`.
    pub mp_state: kvm_mp_state,
    /// `KVM_GET_REGS`.
    pub regs: kvm_regs,
    /// `KVM_GET_SREGS`.
    pub sregs: kvm_sregs,
    /// `KVM_GET_XSAVE`'s region: x87, SSE and AVX state, 1024 32-bit words (4 KiB; AMX is
    /// hidden from guests, see `arch::cpuid`, so this area holds everything).
    pub xsave: Vec<u32>,
    /// `KVM_GET_XCRS`.
    pub xcrs: kvm_xcrs,
    /// `KVM_GET_DEBUGREGS`.
    pub debug_regs: kvm_debugregs,
    /// `KVM_GET_LAPIC`.
    pub lapic: kvm_lapic_state,
    /// The MSRs of `KVM_GET_MSR_INDEX_LIST` that this vCPU could read, as (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// `KVM_GET_VCPU_EVENTS`: pending exceptions, interrupts, NMIs.
    pub vcpu_events: kvm_vcpu_events,
    /// `KVM_GET_TSC_KHZ`, when KVM reports it.
    pub tsc_khz: Option<u32>,
}

/// A vCPU state ioctl that failed.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// An ioctl failed.
    #[error("{op} on vCPU {index} failed: {source}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// The vCPU.
        index: u8,
        /// What KVM said.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only part of the saved MSRs.
    #[error("KVM_SET_MSRS on vCPU {index} refused MSR {msr:#x}")]
    SetMsr {
        /// The vCPU.
        index: u8,
        /// The first MSR refused.
        msr: u32,
    },
    /// A table in the saved state has a size KVM does not accept.
    #[error("vCPU {index}: the saved {what} has {len} entries, which KVM does not accept")]
    TooLarge {
        /// The vCPU.
        index: u8,
        /// CPUID or MSRs.
        what: &'static str,
        /// Entries saved.
        len: usize,
    },
}

fn ioctl(op: &'static str, index: u8) -> impl Fn(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Ioctl { op, index, source }
}

impl VcpuState {
    /// Reads the state of a vCPU that is not in `KVM_RUN`. `msr_index_list` is the host's
    /// `KVM_GET_MSR_INDEX_LIST`; MSRs this vCPU cannot read are left out.
    pub fn save(fd: &VcpuFd, index: u8, msr_index_list: &[u32]) -> Result<Self, VcpuStateError> {
        let mp_state = fd
            .get_mp_state()
            .map_err(ioctl("KVM_GET_MP_STATE", index))?;
        let regs = fd.get_regs().map_err(ioctl("KVM_GET_REGS", index))?;
        let sregs = fd.get_sregs().map_err(ioctl("KVM_GET_SREGS", index))?;
        let xsave = fd
            .get_xsave()
            .map_err(ioctl("KVM_GET_XSAVE", index))?
            .region
            .to_vec();
        let xcrs = fd.get_xcrs().map_err(ioctl("KVM_GET_XCRS", index))?;
        let debug_regs = fd
            .get_debug_regs()
            .map_err(ioctl("KVM_GET_DEBUGREGS", index))?;
        let lapic = fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC", index))?;
        let tsc_khz = fd.get_tsc_khz().ok();
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_CPUID2", index))?
            .as_slice()
            .to_vec();
        let msrs = read_msrs(fd, index, msr_index_list)?;
        let vcpu_events = fd
            .get_vcpu_events()
            .map_err(ioctl("KVM_GET_VCPU_EVENTS", index))?;
        Ok(Self {
            index,
            cpuid,
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            vcpu_events,
            tsc_khz,
        })
    }

    /// Writes the state into a freshly created vCPU (of a VM whose irqchip exists).
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        let index = self.index;
        if let Some(khz) = self.tsc_khz {
            // Only when it differs: setting it needs TSC scaling, which not every host has.
            if fd.get_tsc_khz().ok() != Some(khz) {
                fd.set_tsc_khz(khz)
                    .map_err(ioctl("KVM_SET_TSC_KHZ", index))?;
            }
        }
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuStateError::TooLarge {
            index,
            what: "CPUID",
            len: self.cpuid.len(),
        })?;
        fd.set_cpuid2(&cpuid)
            .map_err(ioctl("KVM_SET_CPUID2", index))?;
        fd.set_mp_state(self.mp_state)
            .map_err(ioctl("KVM_SET_MP_STATE", index))?;
        fd.set_regs(&self.regs)
            .map_err(ioctl("KVM_SET_REGS", index))?;
        fd.set_sregs(&self.sregs)
            .map_err(ioctl("KVM_SET_SREGS", index))?;
        let mut xsave = kvm_xsave::default();
        if self.xsave.len() != xsave.region.len() {
            return Err(VcpuStateError::TooLarge {
                index,
                what: "XSAVE area",
                len: self.xsave.len(),
            });
        }
        xsave.region.copy_from_slice(&self.xsave);
        // SAFETY: `xsave` is a whole `kvm_xsave` (4 KiB). Guests never get AMX (hidden in
        // CPUID), so KVM reads no state beyond the legacy 4 KiB area.
        unsafe { fd.set_xsave(&xsave) }.map_err(ioctl("KVM_SET_XSAVE", index))?;
        fd.set_xcrs(&self.xcrs)
            .map_err(ioctl("KVM_SET_XCRS", index))?;
        fd.set_debug_regs(&self.debug_regs)
            .map_err(ioctl("KVM_SET_DEBUGREGS", index))?;
        fd.set_lapic(&self.lapic)
            .map_err(ioctl("KVM_SET_LAPIC", index))?;
        write_msrs(fd, index, &self.msrs)?;
        fd.set_vcpu_events(&self.vcpu_events)
            .map_err(ioctl("KVM_SET_VCPU_EVENTS", index))
    }
}

/// Reads every MSR of `list` the vCPU accepts. `KVM_GET_MSRS` stops at the first MSR it cannot
/// read; that one is dropped and the read retried from there.
fn read_msrs(fd: &VcpuFd, index: u8, list: &[u32]) -> Result<Vec<(u32, u64)>, VcpuStateError> {
    let mut wanted: Vec<u32> = list.to_vec();
    loop {
        let entries: Vec<kvm_msr_entry> = wanted
            .iter()
            .map(|&msr| kvm_msr_entry {
                index: msr,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooLarge {
            index,
            what: "MSR list",
            len: entries.len(),
        })?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(ioctl("KVM_GET_MSRS", index))?;
        if read >= wanted.len() {
            return Ok(msrs.as_slice().iter().map(|e| (e.index, e.data)).collect());
        }
        wanted.remove(read);
    }
}

fn write_msrs(fd: &VcpuFd, index: u8, saved: &[(u32, u64)]) -> Result<(), VcpuStateError> {
    let entries: Vec<kvm_msr_entry> = saved
        .iter()
        .map(|&(msr, data)| kvm_msr_entry {
            index: msr,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooLarge {
        index,
        what: "MSR list",
        len: entries.len(),
    })?;
    let set = fd.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS", index))?;
    match saved.get(set) {
        None => Ok(()),
        Some(&(msr, _)) => Err(VcpuStateError::SetMsr { index, msr }),
    }
}
