//! The virtio-mmio transport (virtio 1.2 §4.2.2), modern interface (version 2) only.
//!
//! [`MmioTransport`] is a [`crate::BusDevice`] occupying [`MMIO_LEN`] bytes of the MMIO bus.
//! The VMM announces it to Linux guests as `virtio_mmio.device=4K@<base>:<irq>`, registers an
//! irqfd for its [`super::InterruptLine`] and, later, an ioeventfd per queue at
//! `base + QUEUE_NOTIFY_OFFSET` matching the queue index, whose handler calls
//! [`MmioTransport::queue_notify`].

mod queue_regs;
mod registers;
mod state;
mod status;
mod transport;

pub use registers::QUEUE_NOTIFY_OFFSET;
pub use state::{MmioTransportState, RestoreError};
pub use transport::{MmioTransport, TransportError};

/// Size of a virtio-mmio device's register window (one page).
pub const MMIO_LEN: u64 = 0x1000;

#[cfg(test)]
mod tests;
