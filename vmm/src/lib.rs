//! Zygote: an embeddable KVM microVM library.
//!
//! Build a VM with [`VmBuilder`], start it, read its console, and wait for its
//! [`ExitReason`]. Many VMs can run in one process at once: there is no global state.

#![deny(missing_docs)]

pub mod agent;
pub mod arch;
pub mod boot;
mod config;
mod console;
mod control;
mod devices;
mod error;
mod exit;
mod memory;
pub mod sandbox;
pub mod vcpu;
mod virtio;
mod vm;

pub use boot::BootError;
pub use config::{ConfigError, VmBuilder, VmConfig, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
pub use console::{ConsoleBuffer, SerialOutput};
pub use control::VmState;
pub use devices::{
    BlockConfig, BlockOverlay, DeviceError, DeviceHandles, NetBackendConfig, NetConfig,
    NetStatsSnapshot, PacketEndpoint, VsockConfig,
};
pub use error::{Error, KvmError};
pub use exit::{ExitReason, GuestFault, KVM_INTERNAL_ERROR_EMULATION};
pub use memory::{GuestRam, MemoryError};
pub use virtio::{EventLoopError, VirtioError, MAX_DEVICES};
pub use vm::{RunningVm, SerialSource, Vm};

/// Guest memory types, re-exported so users need not depend on vm-memory's exact version.
pub use vm_memory;

/// The README's examples, compiled as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
