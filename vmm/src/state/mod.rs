//! A VM as plain data: everything but its memory, captured from a paused VM and written into
//! a new one. A snapshot file and a fork both carry a [`MachineState`].

mod devices;
mod vcpu;
mod vm;

pub(crate) use devices::{restore_virtio, save_devices, Disks, Placement};
pub use devices::{DeviceResources, DeviceRestoreError, DeviceStates, VirtioState};
pub use vcpu::{VcpuState, VcpuStateError};
pub use vm::{VmArchState, VmStateError};

/// Everything a paused VM is besides its guest memory.
#[derive(Clone, Debug)]
pub struct MachineState {
    /// Guest RAM in bytes (laid out as `arch::layout::ram_regions` says).
    pub memory_bytes: u64,
    /// One entry per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// The in-kernel irqchip, PIT and clock.
    pub vm: VmArchState,
    /// The devices.
    pub devices: DeviceStates,
}

/// Why a VM's state could not be captured.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The VM must be paused first ([`crate::RunningVm::pause`]).
    #[error("cannot capture a VM that is {0:?}; pause it first")]
    NotPaused(crate::VmState),
    /// A vCPU's state could not be read.
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
    /// The irqchip, PIT or clock could not be read.
    #[error(transparent)]
    Vm(#[from] VmStateError),
}

/// Why a VM could not be made from saved state.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The saved state does not fit this host or this restore.
    #[error("invalid saved state: {0}")]
    Invalid(&'static str),
    /// The saved CPUID has features this host's KVM does not offer.
    #[error("the saved vCPU {vcpu} has CPUID leaf {leaf:#x}.{register} bits {missing:#x} that this host lacks")]
    CpuidMismatch {
        /// The vCPU.
        vcpu: u8,
        /// The CPUID leaf.
        leaf: u32,
        /// `ebx`, `ecx` or `edx`.
        register: &'static str,
        /// Feature bits the host does not support.
        missing: u32,
    },
    /// A vCPU's state was refused.
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
    /// The irqchip, PIT or clock state was refused.
    #[error(transparent)]
    Vm(#[from] VmStateError),
    /// A device could not be rebuilt.
    #[error(transparent)]
    Devices(#[from] DeviceRestoreError),
    /// The UART state was refused.
    #[error(transparent)]
    Serial(#[from] zygote_devices::legacy::SerialError),
}
