//! Virtio devices over the virtio-mmio transport (virtio 1.2, modern interface only).
//!
//! The transport ([`mmio::MmioTransport`]) is written once: it owns the register file, the
//! status state machine and the queues while the driver configures them. A device implements
//! [`VirtioDevice`]: its type, features, config space, queue sizes, and what to do with its
//! queues once the driver activates it. Each device lives in its own folder with the same files
//! (`device.rs`, `request.rs`, `backend.rs`, `state.rs`).
//!
//! Guest memory is a [`vm_memory::GuestMemoryMmap`]; queues are `virtio-queue` split queues.

pub mod block;
pub(crate) mod chain;
mod device;
pub(crate) mod interrupt;
pub mod mmio;
pub mod net;
pub(crate) mod queue;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod vsock;

pub use chain::{collect_chain, ChainBuffers, ChainError, Segment};
pub use device::{read_config_bytes, ActivateError, Activation, Active, Memory, VirtioDevice};
pub use interrupt::{EventFdInterrupt, Interrupt, InterruptLine};

/// Feature bit every modern device offers and every driver must accept (`VIRTIO_F_VERSION_1`).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
