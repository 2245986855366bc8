//! Virtio devices in a VM: where each sits (MMIO window and interrupt line), how the guest
//! learns of it (the kernel command line), and the event loop that serves it.

mod event_loop;
mod subscriber;

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zygote_devices::virtio::mmio::{MmioTransport, TransportError, MMIO_LEN, QUEUE_NOTIFY_OFFSET};
use zygote_devices::virtio::{EventFdInterrupt, InterruptLine, Memory, VirtioDevice};
use zygote_devices::{Bus, BusError, BusRange};

use crate::arch::layout::VIRTIO_MMIO_START;
use crate::idle::{Doorbell, DoorbellLine};
use crate::vm::quiesce::Gate;
pub use event_loop::{EventLoop, EventLoopError, Subscriber};
use subscriber::DeviceSubscriber;

/// Interrupt line of the first virtio device; the next ones follow.
const FIRST_IRQ: u32 = 5;
/// Most virtio devices one VM has (interrupt lines 5 to 20).
pub const MAX_DEVICES: u32 = 16;

/// Errors from attaching a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// More devices than [`MAX_DEVICES`].
    #[error("a VM has at most {MAX_DEVICES} virtio devices")]
    TooManyDevices,
    /// An eventfd could not be created.
    #[error("cannot create an eventfd for a virtio device: {0}")]
    EventFd(#[source] std::io::Error),
    /// `KVM_IRQFD` failed.
    #[error("KVM_IRQFD for virtio interrupt {irq} failed: {source}")]
    Irqfd {
        /// The interrupt line.
        irq: u32,
        /// Underlying error.
        source: kvm_ioctls::Error,
    },
    /// `KVM_IOEVENTFD` failed.
    #[error("KVM_IOEVENTFD for the device at {base:#x} failed: {source}")]
    Ioeventfd {
        /// The device's MMIO base.
        base: u64,
        /// Underlying error.
        source: kvm_ioctls::Error,
    },
    /// The device declared invalid queues.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The MMIO window could not be placed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Places virtio devices and collects what the VM needs to run them.
pub struct VirtioDevices {
    count: u32,
    cmdline: Vec<String>,
    subscribers: Vec<Subscriber>,
    /// The VM's doorbell, rung by every device's interrupt line.
    doorbell: Arc<Doorbell>,
}

impl VirtioDevices {
    /// No devices yet; each one attached will ring `doorbell` when it has news for the guest.
    pub(crate) fn new(doorbell: Arc<Doorbell>) -> Self {
        Self {
            count: 0,
            cmdline: Vec::new(),
            subscribers: Vec::new(),
            doorbell,
        }
    }

    /// Puts `device` in the next MMIO window with the next interrupt line: registers its irqfd
    /// and queue-notify ioeventfds with KVM and its register file on `mmio`.
    pub fn attach<D: VirtioDevice + 'static>(
        &mut self,
        vm: &VmFd,
        mmio: &mut Bus,
        memory: &Memory,
        device: D,
    ) -> Result<Arc<Mutex<MmioTransport<D>>>, VirtioError> {
        self.attach_with(vm, mmio, memory, |memory, line| {
            Ok(MmioTransport::new(device, memory, line)?)
        })
    }

    /// Like [`VirtioDevices::attach`], with the transport made by `build` from the device's
    /// memory and interrupt line: a restore builds it from saved state this way.
    pub fn attach_with<D, E>(
        &mut self,
        vm: &VmFd,
        mmio: &mut Bus,
        memory: &Memory,
        build: impl FnOnce(Memory, Arc<dyn InterruptLine>) -> Result<MmioTransport<D>, E>,
    ) -> Result<Arc<Mutex<MmioTransport<D>>>, E>
    where
        D: VirtioDevice + 'static,
        E: From<VirtioError>,
    {
        if self.count >= MAX_DEVICES {
            return Err(VirtioError::TooManyDevices.into());
        }
        let base = VIRTIO_MMIO_START + u64::from(self.count) * MMIO_LEN;
        let irq = FIRST_IRQ + self.count;
        let irq_fd = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        vm.register_irqfd(&irq_fd, irq)
            .map_err(|source| VirtioError::Irqfd { irq, source })?;
        let line: Arc<dyn InterruptLine> = Arc::new(DoorbellLine::new(
            EventFdInterrupt::new(irq_fd),
            self.doorbell.clone(),
        ));
        let transport = build(memory.clone(), line)?;
        let notify = register_notify(vm, base, transport.queue_count())?;
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(
            transport.clone(),
            BusRange {
                base,
                len: MMIO_LEN,
            },
        )
        .map_err(VirtioError::from)?;
        let subscriber = DeviceSubscriber::new(transport.clone(), notify);
        self.subscribers
            .push(Box::new(subscriber.map_err(VirtioError::EventFd)?));
        self.cmdline.push(cmdline_entry(self.count));
        self.count += 1;
        Ok(transport)
    }

    /// The kernel parameters that tell the guest where the devices are (Linux's
    /// `virtio_mmio.device=` format), one per device, for `boot::cmdline::with_additions`.
    pub fn cmdline_entries(&self) -> &[String] {
        &self.cmdline
    }

    /// Starts the event loop serving every attached device (none if there are none); if it
    /// fails while running, `on_failure` hears why.
    pub(crate) fn start(
        self,
        gate: &Gate,
        on_failure: impl FnOnce(EventLoopError) + Send + 'static,
    ) -> Result<Option<EventLoop>, EventLoopError> {
        if self.subscribers.is_empty() {
            return Ok(None);
        }
        let waiter = gate.waiter().map_err(EventLoopError::EventFd)?;
        EventLoop::start(self.subscribers, waiter, on_failure).map(Some)
    }
}

/// The command-line entry announcing device `index` (Linux's `virtio_mmio.device=` format).
pub(crate) fn cmdline_entry(index: u32) -> String {
    let base = VIRTIO_MMIO_START + u64::from(index) * MMIO_LEN;
    let irq = FIRST_IRQ + index;
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// One ioeventfd per queue on the QueueNotify register, matching the queue index written.
fn register_notify(vm: &VmFd, base: u64, queues: usize) -> Result<Vec<EventFd>, VirtioError> {
    let addr = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
    (0..queues as u32)
        .map(|index| {
            let fd = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
            vm.register_ioevent(&fd, &addr, index)
                .map_err(|source| VirtioError::Ioeventfd { base, source })?;
            Ok(fd)
        })
        .collect()
}
