//! The transport's state as plain data, and its validated restore.

use std::sync::Arc;

use virtio_queue::{Queue, QueueState, QueueT};

use super::transport::{
    copy_queues, new_queues, MmioTransport, Registers, TransportError, ACKNOWLEDGE, DRIVER,
    DRIVER_OK, FAILED, FEATURES_OK, NEEDS_RESET,
};
use crate::virtio::interrupt::INTERRUPT_STATUS_MASK;

/// `VIRTIO_RING_F_EVENT_IDX` as a feature mask.
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use crate::virtio::{
    ActivateError, Activation, InterruptLine, Memory, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// Everything the transport holds at runtime: registers, queues and interrupt status.
///
/// Plain, untrusted data: [`MmioTransport::restore`] checks all of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MmioTransportState {
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// The Status register, `DEVICE_NEEDS_RESET` included.
    pub status: u32,
    /// Pending interrupt-status bits.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// One entry per device queue.
    pub queues: Vec<QueueState>,
}

/// Why a saved transport state was refused.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The device itself is unusable (bad queue sizes).
    #[error("cannot rebuild the transport: {0}")]
    Transport(#[from] TransportError),
    /// The state has a different number of queues than the device.
    #[error("saved state has {saved} queues, the device has {device}")]
    QueueCount {
        /// Queues in the saved state.
        saved: usize,
        /// Queues of the device.
        device: usize,
    },
    /// A queue's maximum size differs from the device's.
    #[error("queue {index} was saved with maximum size {saved}, the device has {device}")]
    QueueMaxSize {
        /// Index of the queue.
        index: usize,
        /// Saved maximum size.
        saved: u16,
        /// The device's maximum size.
        device: u16,
    },
    /// A queue's size or ring alignment is invalid.
    #[error("queue {index} is invalid: {source}")]
    InvalidQueue {
        /// Index of the queue.
        index: usize,
        /// What virtio-queue rejected.
        source: virtio_queue::Error,
    },
    /// A ready queue's rings are not inside guest memory.
    #[error("queue {0} is ready but its rings are not inside guest memory")]
    QueueOutsideMemory(usize),
    /// A queue is ready although the features were never accepted.
    #[error("queue {0} is ready before FEATURES_OK")]
    QueueReadyEarly(usize),
    /// A queue uses event-index notification, but the driver never accepted
    /// `VIRTIO_RING_F_EVENT_IDX`.
    #[error("queue {0} uses event indices, but VIRTIO_RING_F_EVENT_IDX was not negotiated")]
    EventIdxNotNegotiated(usize),
    /// The status has unknown bits or steps out of order.
    #[error("invalid device status {0:#x}")]
    InvalidStatus(u32),
    /// The status has both FAILED and DRIVER_OK: the driver gave up on a device that would
    /// be restarted.
    #[error("device status {0:#x} has both FAILED and DRIVER_OK")]
    FailedWhileDriverOk(u32),
    /// The driver features include ones never offered, or lack VERSION_1 after FEATURES_OK.
    #[error("invalid driver features {0:#x}")]
    InvalidFeatures(u64),
    /// The interrupt status has unknown bits.
    #[error("invalid interrupt status {0:#x}")]
    InvalidInterruptStatus(u32),
    /// The device refused to start with the restored queues.
    #[error("cannot reactivate the device: {0}")]
    Activate(#[from] ActivateError),
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// The transport's state; the queues are the device's live ones once it is active.
    pub fn save(&self) -> MmioTransportState {
        let live = self.device.queues();
        let queues = if self.is_activated() && live.len() == self.queues.len() {
            live
        } else {
            &self.queues
        };
        MmioTransportState {
            device_features_sel: self.regs.device_features_sel,
            driver_features_sel: self.regs.driver_features_sel,
            driver_features: self.regs.driver_features,
            queue_sel: self.regs.queue_sel,
            status: self.status(),
            interrupt_status: self.interrupt.status(),
            config_generation: self.regs.config_generation,
            queues: queues.iter().map(Queue::state).collect(),
        }
    }

    /// Rebuilds a transport around `device` (restored separately) from a saved state, checking
    /// every field; an active device is reactivated with the restored queues.
    pub fn restore(
        device: D,
        memory: Memory,
        line: Arc<dyn InterruptLine>,
        state: &MmioTransportState,
    ) -> Result<Self, RestoreError> {
        let mut transport = Self::new(device, memory, line)?;
        let status = state.status & !NEEDS_RESET;
        check_status(state.status)?;
        transport.regs = Registers {
            device_features_sel: state.device_features_sel,
            driver_features_sel: state.driver_features_sel,
            driver_features: state.driver_features,
            queue_sel: state.queue_sel,
            status,
            config_generation: state.config_generation,
        };
        transport.check_features(state.driver_features, status)?;
        transport.queues =
            transport.restore_queues(&state.queues, status, state.driver_features)?;
        if state.interrupt_status & !INTERRUPT_STATUS_MASK != 0 {
            return Err(RestoreError::InvalidInterruptStatus(state.interrupt_status));
        }
        let needs_reset = state.status & NEEDS_RESET != 0;
        transport
            .interrupt
            .restore(state.interrupt_status, needs_reset);
        if status & DRIVER_OK != 0 {
            transport.reactivate()?;
        }
        Ok(transport)
    }

    fn check_features(&self, features: u64, status: u32) -> Result<(), RestoreError> {
        let offered = features & !self.device_features() == 0;
        let negotiated = status & FEATURES_OK == 0 || features & VIRTIO_F_VERSION_1 != 0;
        if offered && negotiated {
            Ok(())
        } else {
            Err(RestoreError::InvalidFeatures(features))
        }
    }

    fn restore_queues(
        &self,
        saved: &[QueueState],
        status: u32,
        features: u64,
    ) -> Result<Vec<Queue>, RestoreError> {
        let max_sizes = self.device.queue_max_sizes();
        if saved.len() != max_sizes.len() {
            return Err(RestoreError::QueueCount {
                saved: saved.len(),
                device: max_sizes.len(),
            });
        }
        let fresh = new_queues(max_sizes)?;
        saved
            .iter()
            .zip(fresh)
            .enumerate()
            .map(|(index, (state, fresh))| {
                self.restore_queue(index, state, &fresh, status, features)
            })
            .collect()
    }

    fn restore_queue(
        &self,
        index: usize,
        state: &QueueState,
        fresh: &Queue,
        status: u32,
        features: u64,
    ) -> Result<Queue, RestoreError> {
        if state.max_size != fresh.max_size() {
            return Err(RestoreError::QueueMaxSize {
                index,
                saved: state.max_size,
                device: fresh.max_size(),
            });
        }
        let queue = Queue::try_from(*state)
            .map_err(|source| RestoreError::InvalidQueue { index, source })?;
        if queue.ready() && status & FEATURES_OK == 0 {
            return Err(RestoreError::QueueReadyEarly(index));
        }
        if queue.event_idx_enabled() && features & VIRTIO_RING_F_EVENT_IDX == 0 {
            return Err(RestoreError::EventIdxNotNegotiated(index));
        }
        if queue.ready() && !queue.is_valid(&self.memory) {
            return Err(RestoreError::QueueOutsideMemory(index));
        }
        Ok(queue)
    }

    fn reactivate(&mut self) -> Result<(), RestoreError> {
        let queues = copy_queues(&self.queues)
            .map_err(|(index, source)| RestoreError::InvalidQueue { index, source })?;
        let activation = Activation {
            memory: self.memory.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            features: self.regs.driver_features,
        };
        self.device.activate(activation)?;
        Ok(())
    }
}

/// Known bits only, each initialisation step only after the one before it, and never FAILED
/// together with DRIVER_OK (restoring would restart a device the driver gave up on).
fn check_status(status: u32) -> Result<(), RestoreError> {
    if status & (FAILED | DRIVER_OK) == FAILED | DRIVER_OK {
        return Err(RestoreError::FailedWhileDriverOk(status));
    }
    let known = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET | FAILED;
    let ordered = [
        (DRIVER, ACKNOWLEDGE),
        (FEATURES_OK, DRIVER),
        (DRIVER_OK, FEATURES_OK),
    ]
    .iter()
    .all(|&(step, before)| status & step == 0 || status & before != 0);
    if status & !known == 0 && ordered {
        Ok(())
    } else {
        Err(RestoreError::InvalidStatus(status))
    }
}
