//! How a virtio device interrupts its driver: a shared interrupt-status register and a line.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line to the guest; the VMM backs it with an irqfd.
pub trait InterruptLine: Send + Sync {
    /// Raises the interrupt once.
    fn trigger(&self) -> io::Result<()>;

    /// The device put buffers on a used ring and the driver asked not to be interrupted for
    /// them (`VIRTQ_AVAIL_F_NO_INTERRUPT`, virtio 1.2 §2.7.7): a polling driver. A VMM whose
    /// vCPUs sleep while such a guest idles wakes them here. Default: nothing.
    fn used_buffers(&self) {}
}

/// An [`InterruptLine`] backed by an eventfd, which the VMM registers as a KVM irqfd.
#[derive(Debug)]
pub struct EventFdInterrupt(EventFd);

impl EventFdInterrupt {
    /// A line that writes to `fd` to raise the interrupt.
    pub fn new(fd: EventFd) -> Self {
        Self(fd)
    }

    /// The eventfd, for registering it as an irqfd.
    pub fn fd(&self) -> &EventFd {
        &self.0
    }
}

impl InterruptLine for EventFdInterrupt {
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Interrupt-status bits and the needs-reset flag of one device, shared between the transport
/// (which the driver reads and acknowledges through) and the device (which raises them).
#[derive(Clone)]
pub struct Interrupt {
    inner: Arc<Inner>,
}

struct Inner {
    status: AtomicU32,
    needs_reset: AtomicBool,
    line: Arc<dyn InterruptLine>,
}

/// The interrupt-status bits a device may raise.
pub(crate) const INTERRUPT_STATUS_MASK: u32 = VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG;

impl Interrupt {
    /// Interrupt state raising `line`, with no interrupt pending.
    pub fn new(line: Arc<dyn InterruptLine>) -> Self {
        Self {
            inner: Arc::new(Inner {
                status: AtomicU32::new(0),
                needs_reset: AtomicBool::new(false),
                line,
            }),
        }
    }

    /// Tells the driver it has new used buffers.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_VRING)
    }

    /// Says the device returned used buffers without interrupting (the driver polls); see
    /// [`InterruptLine::used_buffers`].
    pub(crate) fn note_used_buffers(&self) {
        self.inner.line.used_buffers();
    }

    /// Tells the driver the device configuration (or the device status) changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }

    /// Marks the device as needing a reset (`DEVICE_NEEDS_RESET`) and tells the driver.
    pub fn signal_needs_reset(&self) -> io::Result<()> {
        self.set_needs_reset();
        self.signal_config_change()
    }

    /// Marks the device as needing a reset without interrupting (before `DRIVER_OK`).
    pub(crate) fn set_needs_reset(&self) {
        self.inner.needs_reset.store(true, Ordering::SeqCst);
    }

    /// Whether the device needs a reset.
    pub fn needs_reset(&self) -> bool {
        self.inner.needs_reset.load(Ordering::SeqCst)
    }

    /// The pending interrupt-status bits.
    pub fn status(&self) -> u32 {
        self.inner.status.load(Ordering::SeqCst)
    }

    /// Clears the status bits the driver acknowledged.
    pub(crate) fn ack(&self, bits: u32) {
        self.inner.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Puts the status back to a saved (already validated) value and needs-reset flag.
    pub(crate) fn restore(&self, status: u32, needs_reset: bool) {
        self.inner
            .status
            .store(status & INTERRUPT_STATUS_MASK, Ordering::SeqCst);
        self.inner.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    fn raise(&self, bit: u32) -> io::Result<()> {
        self.inner.status.fetch_or(bit, Ordering::SeqCst);
        self.inner.line.trigger()
    }
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupt")
            .field("status", &self.status())
            .field("needs_reset", &self.needs_reset())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bits_are_raised_acked_and_the_eventfd_counts() {
        let fd = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let line = Arc::new(EventFdInterrupt::new(fd.try_clone().unwrap()));
        let interrupt = Interrupt::new(line);
        interrupt.signal_used_queue().unwrap();
        interrupt.signal_needs_reset().unwrap();
        assert_eq!(interrupt.status(), 3);
        assert!(interrupt.needs_reset());
        assert_eq!(fd.read().unwrap(), 2);
        interrupt.ack(1);
        assert_eq!(interrupt.status(), 2);
    }
}
