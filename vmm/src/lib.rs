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
mod context;
mod control;
mod devices;
mod error;
mod exit;
mod idle;
mod memory;
pub mod sandbox;
pub mod snapshot;
pub mod state;
pub mod vcpu;
mod virtio;
mod vm;

pub use boot::BootError;
pub use config::{ConfigError, VmBuilder, VmConfig, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
pub use console::{ConsoleBuffer, SerialOutput};
pub use context::KvmContext;
pub use control::VmState;
pub use devices::{
    BlockConfig, BlockOverlay, DeviceError, DeviceHandles, NetBackendConfig, NetConfig,
    NetStatsSnapshot, PacketEndpoint, VsockConfig,
};
pub use error::{Error, KvmError};
pub use exit::{ExitReason, GuestFault, KVM_INTERNAL_ERROR_EMULATION};
pub use memory::{ExternalMemory, GuestRam, MemoryError};
pub use snapshot::{LoadError, MemoryFormat, Snapshot, SnapshotError, SnapshotInfo};
pub use virtio::{EventLoopError, VirtioError, MAX_DEVICES};
/// The snapshot crate: memory engines and formats, for programs that write their own engine.
pub use zygote_snapshot as snapshot_format;
// The device errors that appear inside `DeviceError`, `VirtioError` and `Error`, so callers
// can match on them without depending on `zygote-devices`.
pub use vm::{Fork, ForkConfig, ForkError, RestoreConfig, RunningVm, SerialSource, Vm, VmPool};
pub use zygote_devices::virtio::block::BlockError;
pub use zygote_devices::virtio::mmio::TransportError;
pub use zygote_devices::virtio::net::{NetError, TapError};
pub use zygote_devices::virtio::vsock::VsockError;
pub use zygote_devices::BusError;

/// Guest memory types, re-exported so users need not depend on vm-memory's exact version.
pub use vm_memory;

/// The README's examples, compiled as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
