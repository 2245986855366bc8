//! vCPUs: creation with their boot state, and the threads that run them.

mod kick;
pub(crate) mod pio;
pub(crate) mod run;

use kvm_bindings::{kvm_sregs, CpuId};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestAddress;

use crate::arch::{cpuid, lapic, msr, regs};

pub use kick::install_handler as install_kick_handler;
pub(crate) use kick::Kick;
pub(crate) use run::spawn;

/// Errors from creating, configuring or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_CREATE_VCPU` failed.
    #[error("KVM_CREATE_VCPU for vCPU {index} failed: {source}")]
    Create {
        /// vCPU index.
        index: u8,
        /// Underlying error.
        source: kvm_ioctls::Error,
    },
    /// A vCPU configuration ioctl failed.
    #[error("{op} for vCPU {index} failed: {source}")]
    Configure {
        /// The ioctl that failed.
        op: &'static str,
        /// vCPU index.
        index: u8,
        /// Underlying error.
        source: kvm_ioctls::Error,
    },
    /// KVM refused one of the boot MSRs.
    #[error("KVM_SET_MSRS for vCPU {index} stopped at MSR {msr:#x}")]
    SetMsr {
        /// vCPU index.
        index: u8,
        /// The MSR KVM refused.
        msr: u32,
    },
    /// The vCPU thread could not be started.
    #[error("cannot start the thread for vCPU {index}: {source}")]
    Spawn {
        /// vCPU index.
        index: u8,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    /// `KVM_RUN` failed.
    #[error("KVM_RUN on vCPU {index} failed: {source}")]
    Run {
        /// vCPU index.
        index: u8,
        /// Underlying error.
        source: kvm_ioctls::Error,
    },
    /// The vCPU thread panicked (in a device or the console writer); the VM was stopped.
    #[error("the thread of vCPU {index} panicked; the VM was stopped")]
    Panicked {
        /// vCPU index.
        index: u8,
    },
    /// KVM reported an exit the VMM does not handle.
    #[error("vCPU {index} stopped with unexpected KVM exit reason {exit_reason}")]
    UnexpectedExit {
        /// vCPU index.
        index: u8,
        /// `kvm_run.exit_reason` (`KVM_EXIT_*`).
        exit_reason: u32,
    },
    /// KVM reported a system event the VMM does not handle.
    #[error("vCPU {index} stopped with unexpected KVM system event {kind}")]
    UnexpectedSystemEvent {
        /// vCPU index.
        index: u8,
        /// `KVM_SYSTEM_EVENT_*` type.
        kind: u32,
    },
    /// The boot MSR list could not be built.
    #[error("cannot build the boot MSR list: {0:?}")]
    BuildMsrs(vmm_sys_util::fam::Error),
}

/// A created, configured vCPU that is not running yet.
pub struct Vcpu {
    pub(crate) index: u8,
    pub(crate) fd: VcpuFd,
    /// The last exit was PIO or MMIO, which KVM completes only on the next `KVM_RUN`.
    pub(crate) io_pending: bool,
}

impl Vcpu {
    /// Creates vCPU `index` with nothing set: a restore sets its whole state.
    pub fn create(vm: &VmFd, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Self {
            index,
            fd,
            io_pending: false,
        })
    }

    /// Creates vCPU `index` of `count` with CPUID, MSRs, FPU and LAPIC set.
    pub fn new(vm: &VmFd, supported: &CpuId, index: u8, count: u8) -> Result<Self, VcpuError> {
        let vcpu = Self::create(vm, index)?;
        vcpu.configure(supported, count)?;
        Ok(vcpu)
    }

    fn configure(&self, supported: &CpuId, count: u8) -> Result<(), VcpuError> {
        let (index, fd) = (self.index, &self.fd);
        let configure = |op| move |source| VcpuError::Configure { op, index, source };
        // Without KVM_CAP_GET_TSC_KHZ the guest calibrates its TSC itself.
        let tsc_khz = fd.get_tsc_khz().ok();
        fd.set_cpuid2(&cpuid::filter(supported, index, count, tsc_khz))
            .map_err(configure("KVM_SET_CPUID2"))?;
        let msrs = msr::boot_msrs().map_err(VcpuError::BuildMsrs)?;
        let set = fd.set_msrs(&msrs).map_err(configure("KVM_SET_MSRS"))?;
        if set != msrs.as_slice().len() {
            let msr = msr::boot_msr_index(set).unwrap_or_default();
            return Err(VcpuError::SetMsr { index, msr });
        }
        fd.set_fpu(&regs::boot_fpu())
            .map_err(configure("KVM_SET_FPU"))?;
        let mut lapic_state = fd.get_lapic().map_err(configure("KVM_GET_LAPIC"))?;
        lapic::set_virtual_wire(&mut lapic_state);
        fd.set_lapic(&lapic_state)
            .map_err(configure("KVM_SET_LAPIC"))
    }

    /// Puts the boot vCPU at the kernel entry in 64-bit mode, with the boot GDT and page
    /// tables that `crate::boot::load` wrote.
    pub fn set_boot_state(&self, entry: GuestAddress) -> Result<(), VcpuError> {
        let index = self.index;
        let configure = |op| move |source| VcpuError::Configure { op, index, source };
        let sregs: kvm_sregs = self.fd.get_sregs().map_err(configure("KVM_GET_SREGS"))?;
        let sregs = regs::setup_long_mode(sregs);
        self.fd
            .set_sregs(&sregs)
            .map_err(configure("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&regs::boot_regs(entry))
            .map_err(configure("KVM_SET_REGS"))
    }
}
