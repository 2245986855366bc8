//! The device status state machine (spec §2.1, §3.1.1) and device reset.

use virtio_queue::QueueT;

use super::transport::{
    copy_queues, MmioTransport, ACKNOWLEDGE, DRIVER, DRIVER_OK, FAILED, FEATURES_OK,
};
use crate::virtio::{Activation, VirtioDevice, VIRTIO_F_VERSION_1};

/// The steps of driver initialisation, in the order the driver must take them.
const STEPS: [u32; 4] = [ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK];

impl<D: VirtioDevice> MmioTransport<D> {
    /// Handles a write to the Status register.
    ///
    /// Zero resets the device. Otherwise the driver may only add bits, in order; a step whose
    /// precondition fails is not taken (so the driver reads back a status without it), and a
    /// failed activation marks the device as needing reset.
    pub(super) fn write_status(&mut self, value: u32) {
        let value = value & 0xff;
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.regs.status;
        if value & old != old {
            return;
        }
        for step in STEPS {
            if value & step == 0 || self.regs.status & step != 0 {
                continue;
            }
            if !self.take_step(step) {
                break;
            }
            self.regs.status |= step;
        }
        if value & FAILED != 0 {
            self.regs.status |= FAILED;
        }
    }

    /// Checks and performs one initialisation step; `false` leaves the status as it was.
    fn take_step(&mut self, step: u32) -> bool {
        let status = self.regs.status;
        match step {
            ACKNOWLEDGE => true,
            DRIVER => status & ACKNOWLEDGE != 0,
            FEATURES_OK => status & DRIVER != 0 && self.features_acceptable(),
            DRIVER_OK => status & FEATURES_OK != 0 && status & FAILED == 0 && self.activate(),
            _ => false,
        }
    }

    /// The driver accepted only offered features, and `VIRTIO_F_VERSION_1` among them.
    pub(super) fn features_acceptable(&self) -> bool {
        let accepted = self.regs.driver_features;
        accepted & !self.device_features() == 0 && accepted & VIRTIO_F_VERSION_1 != 0
    }

    /// Hands the configured queues to the device. On failure the device needs a reset.
    fn activate(&mut self) -> bool {
        let queues_valid = self
            .queues
            .iter()
            .all(|q| !q.ready() || q.is_valid(&self.memory));
        let activated = queues_valid
            && copy_queues(&self.queues).is_ok_and(|queues| {
                let activation = Activation {
                    memory: self.memory.clone(),
                    queues,
                    interrupt: self.interrupt.clone(),
                    features: self.regs.driver_features,
                };
                self.device.activate(activation).is_ok()
            });
        if !activated {
            self.driver_error();
        }
        activated
    }

    /// Records a driver error the device cannot recover from: `DEVICE_NEEDS_RESET`, with a
    /// config interrupt once the driver is up.
    pub(super) fn driver_error(&mut self) {
        if self.is_activated() {
            // A failed interrupt only delays the driver noticing; nothing else to do.
            let _ = self.interrupt.signal_needs_reset();
        } else {
            self.interrupt.set_needs_reset();
        }
    }

    /// Resets the device and the transport to their power-on state.
    pub(super) fn reset(&mut self) {
        self.device.reset();
        self.regs = Default::default();
        self.interrupt.restore(0, false);
        for queue in &mut self.queues {
            queue.reset();
        }
    }
}
