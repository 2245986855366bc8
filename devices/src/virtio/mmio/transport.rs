//! The register file of a virtio-mmio device, dispatching accesses to the status machine, the
//! queue registers and the device's config space.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::registers::*;
use crate::virtio::{Interrupt, InterruptLine, Memory, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::BusDevice;

/// Why a transport could not be built around a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    /// The device declared a queue size that is zero, not a power of two or above 32768.
    #[error("queue {index} has invalid maximum size {size}")]
    InvalidQueueMaxSize {
        /// Index of the queue.
        index: usize,
        /// The size the device declared.
        size: u16,
    },
}

/// The plain registers of the transport (everything but the queues and interrupt status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Registers {
    pub(super) device_features_sel: u32,
    pub(super) driver_features_sel: u32,
    pub(super) driver_features: u64,
    pub(super) queue_sel: u32,
    /// Device status as the driver set it (without `DEVICE_NEEDS_RESET`, kept in the interrupt).
    pub(super) status: u32,
    pub(super) config_generation: u32,
}

/// A virtio device behind the virtio-mmio register interface.
pub struct MmioTransport<D: VirtioDevice> {
    pub(super) device: D,
    pub(super) memory: Memory,
    pub(super) interrupt: Interrupt,
    pub(super) regs: Registers,
    /// The queues while the driver configures them; handed to the device on activation.
    pub(super) queues: Vec<Queue>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Puts `device` behind a register file, with queues in `memory` and interrupts on `line`.
    pub fn new(
        device: D,
        memory: Memory,
        line: Arc<dyn InterruptLine>,
    ) -> Result<Self, TransportError> {
        let queues = new_queues(device.queue_max_sizes())?;
        Ok(Self {
            device,
            memory,
            interrupt: Interrupt::new(line),
            regs: Registers::default(),
            queues,
        })
    }

    /// Moves the transport and its device to `memory`, a new mapping of the same guest
    /// memory (see [`VirtioDevice::set_memory`]). The VM must be paused.
    pub fn set_memory(&mut self, memory: Memory) {
        self.device.set_memory(memory.clone());
        self.memory = memory;
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably (for event handlers the VMM drives, e.g. a backend becoming ready).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device's interrupt state.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// Number of queues, i.e. the values a QueueNotify write (or ioeventfd datamatch) may carry.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Whether the driver set `DRIVER_OK` and the device accepted it.
    pub fn is_activated(&self) -> bool {
        self.regs.status & DRIVER_OK != 0
    }

    /// The device status register as the driver reads it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.regs.status | NEEDS_RESET
        } else {
            self.regs.status
        }
    }

    /// Tells the driver the device config changed: bumps the config generation and interrupts.
    pub fn config_changed(&mut self) {
        self.regs.config_generation = self.regs.config_generation.wrapping_add(1);
        // A failed interrupt only delays the driver noticing; there is nothing else to do.
        let _ = self.interrupt.signal_config_change();
    }

    /// Handles a notification for queue `index`; ignored unless the device is active and the
    /// queue exists.
    pub fn queue_notify(&mut self, index: u32) {
        let Ok(index) = u16::try_from(index) else {
            return;
        };
        if self.is_activated() && usize::from(index) < self.queues.len() {
            self.device.queue_notify(index);
        }
    }

    /// Whether the active device stopped with chains still waiting in a queue; see
    /// [`VirtioDevice::has_pending_work`] for what the event loop must do about it.
    pub fn has_pending_work(&self) -> bool {
        self.is_activated() && self.device.has_pending_work()
    }

    /// Runs the work the active device left behind ([`VirtioDevice::process_pending_work`]).
    pub fn process_pending_work(&mut self) {
        if self.is_activated() {
            self.device.process_pending_work();
        }
    }

    /// Every feature the device offers, with `VIRTIO_F_VERSION_1`.
    pub(super) fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    pub(super) fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(usize::try_from(self.regs.queue_sel).ok()?)
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => MMIO_VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => ZYGOTE_VENDOR,
            DEVICE_FEATURES => feature_word(self.device_features(), self.regs.device_features_sel),
            QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status(),
            CONFIG_GENERATION => self.regs.config_generation,
            // No shared memory regions: their length and base read as all ones.
            SHM_LEN_LOW..=SHM_BASE_HIGH => u32::MAX,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.regs.device_features_sel = value,
            DRIVER_FEATURES => self.write_driver_features(value),
            DRIVER_FEATURES_SEL => self.regs.driver_features_sel = value,
            QUEUE_SEL => self.regs.queue_sel = value,
            QUEUE_NOTIFY_OFFSET => self.queue_notify(value),
            INTERRUPT_ACK => self.interrupt.ack(value),
            STATUS => self.write_status(value),
            _ => self.write_queue_register(offset, value),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are negotiated between DRIVER and FEATURES_OK only.
        if self.regs.status != ACKNOWLEDGE | DRIVER {
            return;
        }
        let features = &mut self.regs.driver_features;
        match self.regs.driver_features_sel {
            0 => *features = (*features & !0xffff_ffff) | u64::from(value),
            1 => *features = (*features & 0xffff_ffff) | (u64::from(value) << 32),
            _ => {}
        }
    }
}

/// Status bits (spec §2.1).
pub(super) use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
};

/// Copies of `queues` (virtio-queue's `Queue` is not `Clone`; its state is). On failure, the
/// index of the queue that could not be copied and why.
pub(super) fn copy_queues(queues: &[Queue]) -> Result<Vec<Queue>, (usize, virtio_queue::Error)> {
    queues
        .iter()
        .enumerate()
        .map(|(index, q)| Queue::try_from(q.state()).map_err(|e| (index, e)))
        .collect()
}

/// Fresh queues of the given maximum sizes.
pub(super) fn new_queues(max_sizes: &[u16]) -> Result<Vec<Queue>, TransportError> {
    max_sizes
        .iter()
        .enumerate()
        .map(|(index, &size)| {
            Queue::new(size).map_err(|_| TransportError::InvalidQueueMaxSize { index, size })
        })
        .collect()
}

fn feature_word(features: u64, select: u32) -> u32 {
    match select {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.read_config(offset - CONFIG, data);
            } else {
                data.fill(0);
            }
            return;
        }
        // Registers take aligned 32-bit accesses only (spec §4.2.2.2).
        if data.len() != 4 || offset & 3 != 0 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.write_config(offset - CONFIG, data);
            }
            return;
        }
        if let Ok(word) = <[u8; 4]>::try_from(data) {
            if offset & 3 == 0 {
                self.write_register(offset, u32::from_le_bytes(word));
            }
        }
    }
}
