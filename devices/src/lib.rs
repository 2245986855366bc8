//! Zygote's emulated devices.
//!
//! This crate owns everything a guest touches through port I/O or MMIO: the buses that route an
//! access to a device, the legacy PC devices a microVM needs (16550 UART, i8042 reset line,
//! debug-exit port) and the virtio-mmio transport with the virtio devices behind it.
//!
//! It never depends on the VMM. What a device needs from its VM (ending the VM, raising an
//! interrupt) it asks through the small traits defined here, which the VMM implements.

#![deny(missing_docs)]

pub mod bus;
pub mod legacy;
mod request;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, BusRange};
pub use request::{VmRequest, VmRequestSink};
