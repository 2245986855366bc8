//! The library's top-level error.

use crate::boot::BootError;
use crate::config::ConfigError;
use crate::control::VmState;
use crate::memory::MemoryError;
use crate::vcpu::VcpuError;

/// A KVM VM-level operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// `KVM_SET_IDENTITY_MAP_ADDR` failed.
    #[error("KVM_SET_IDENTITY_MAP_ADDR failed: {0}")]
    IdentityMap(#[source] kvm_ioctls::Error),
    /// `KVM_SET_TSS_ADDR` failed.
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    TssAddress(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_IRQCHIP` failed.
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_PIT2` failed.
    #[error("KVM_CREATE_PIT2 failed: {0}")]
    Pit(#[source] kvm_ioctls::Error),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// `KVM_GET_MSR_INDEX_LIST` failed.
    #[error("KVM_GET_MSR_INDEX_LIST failed: {0}")]
    MsrIndexList(#[source] kvm_ioctls::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// `KVM_IRQFD` failed.
    #[error("KVM_IRQFD failed: {0}")]
    Irqfd(#[source] kvm_ioctls::Error),
}

/// Everything that can go wrong building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; the message names the field.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A KVM VM-level operation failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel or its boot data could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The VM identity page could not be written.
    #[error(transparent)]
    Identity(#[from] crate::arch::identity::IdentityError),
    /// A vCPU could not be created, configured or started.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A virtio device could not be created or attached.
    #[error(transparent)]
    Device(#[from] crate::devices::DeviceError),
    /// The device event loop could not be started.
    #[error(transparent)]
    EventLoop(#[from] crate::virtio::EventLoopError),
    /// Devices could not be placed on a bus.
    #[error("cannot place a device: {0}")]
    Bus(#[from] zygote_devices::BusError),
    /// The console writer thread could not be started.
    #[error("cannot start the console writer thread: {0}")]
    ConsoleThread(#[source] std::io::Error),
    /// A VM pool's filling thread could not be started.
    #[error("cannot start the VM pool thread: {0}")]
    PoolThread(#[source] std::io::Error),
    /// The serial input thread could not be started.
    #[error("cannot start the serial input thread: {0}")]
    SerialInputThread(#[source] std::io::Error),
    /// A lifecycle operation does not apply in the VM's current state.
    #[error("cannot {op} a VM that is {state:?}")]
    InvalidState {
        /// The operation asked for.
        op: &'static str,
        /// The state the VM was in.
        state: VmState,
    },
    /// The VM stopped, or another caller resumed it, before every vCPU parked.
    #[error("pause did not complete: the VM became {state:?} while pausing")]
    PauseInterrupted {
        /// The state the VM was found in.
        state: VmState,
    },
    /// A VM could not be made from saved state.
    #[error(transparent)]
    Restore(#[from] crate::state::RestoreError),
    /// Not every vCPU parked within the pause timeout; the VM was left running.
    #[error("pause timed out with {parked} of {alive} vCPUs parked; the VM keeps running")]
    PauseTimeout {
        /// vCPUs that had parked.
        parked: usize,
        /// vCPUs running.
        alive: usize,
    },
}
