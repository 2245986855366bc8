//! Writes to the registers of the selected queue (spec §4.2.3.2).

use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::registers::*;
use super::transport::{MmioTransport, DRIVER_OK, FEATURES_OK};
use crate::virtio::VirtioDevice;

/// Which half of a 64-bit queue address a register holds.
#[derive(Clone, Copy)]
enum Half {
    Low,
    High,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Handles a write to a queue register; other offsets are ignored.
    ///
    /// Queues are configured between `FEATURES_OK` and `DRIVER_OK` only. A value the queue cannot
    /// take (a size that is not a power of two or above the maximum, a misaligned address,
    /// enabling a queue whose rings are not inside guest memory) is refused and marks the device
    /// as needing reset.
    pub(super) fn write_queue_register(&mut self, offset: u64, value: u32) {
        if self.regs.status & (FEATURES_OK | DRIVER_OK) != FEATURES_OK {
            return;
        }
        let accepted = match offset {
            QUEUE_NUM => self.set_queue_size(value),
            QUEUE_READY => self.set_queue_ready(value),
            QUEUE_DESC_LOW => self.set_queue_address(Ring::Desc, Half::Low, value),
            QUEUE_DESC_HIGH => self.set_queue_address(Ring::Desc, Half::High, value),
            QUEUE_AVAIL_LOW => self.set_queue_address(Ring::Avail, Half::Low, value),
            QUEUE_AVAIL_HIGH => self.set_queue_address(Ring::Avail, Half::High, value),
            QUEUE_USED_LOW => self.set_queue_address(Ring::Used, Half::Low, value),
            QUEUE_USED_HIGH => self.set_queue_address(Ring::Used, Half::High, value),
            _ => true,
        };
        if !accepted {
            self.driver_error();
        }
    }

    fn selected_queue_mut(&mut self) -> Option<&mut virtio_queue::Queue> {
        let index = usize::try_from(self.regs.queue_sel).ok()?;
        self.queues.get_mut(index)
    }

    fn set_queue_size(&mut self, value: u32) -> bool {
        let Some(queue) = self.selected_queue_mut() else {
            return false;
        };
        if queue.ready() {
            return false;
        }
        u16::try_from(value).is_ok_and(|size| queue.try_set_size(size).is_ok())
    }

    fn set_queue_ready(&mut self, value: u32) -> bool {
        let memory = self.memory.clone();
        let Some(queue) = self.selected_queue_mut() else {
            return false;
        };
        match value {
            0 => {
                queue.set_ready(false);
                true
            }
            1 => {
                queue.set_ready(true);
                let valid = queue.is_valid(&memory);
                queue.set_ready(valid);
                valid
            }
            _ => false,
        }
    }

    fn set_queue_address(&mut self, ring: Ring, half: Half, value: u32) -> bool {
        let Some(queue) = self.selected_queue_mut() else {
            return false;
        };
        if queue.ready() {
            return false;
        }
        let current = match ring {
            Ring::Desc => queue.desc_table(),
            Ring::Avail => queue.avail_ring(),
            Ring::Used => queue.used_ring(),
        };
        let addr = GuestAddress(match half {
            Half::Low => (current & !0xffff_ffff) | u64::from(value),
            Half::High => (current & 0xffff_ffff) | (u64::from(value) << 32),
        });
        match ring {
            Ring::Desc => queue.try_set_desc_table_address(addr).is_ok(),
            Ring::Avail => queue.try_set_avail_ring_address(addr).is_ok(),
            Ring::Used => queue.try_set_used_ring_address(addr).is_ok(),
        }
    }
}

/// The three areas of a split queue.
#[derive(Clone, Copy)]
enum Ring {
    Desc,
    Avail,
    Used,
}
