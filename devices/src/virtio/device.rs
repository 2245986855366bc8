//! What a virtio device supplies to the transport.

use virtio_queue::{Queue, QueueT};

use super::Interrupt;

/// Guest memory as devices see it.
pub type Memory = vm_memory::GuestMemoryMmap<()>;

/// Everything a device needs once the driver sets `DRIVER_OK`.
pub struct Activation {
    /// Guest memory, where the queues and buffers live.
    pub memory: Memory,
    /// One queue per entry of [`VirtioDevice::queue_max_sizes`], as the driver configured them.
    /// Ready queues have been checked to lie inside guest memory.
    pub queues: Vec<Queue>,
    /// How to interrupt the driver, and mark the device as needing reset.
    pub interrupt: Interrupt,
    /// The features the driver accepted.
    pub features: u64,
}

/// What an active device works with: the pieces of its [`Activation`], checked.
pub struct Active {
    /// Guest memory.
    pub memory: Memory,
    /// The device's queues, all enabled by the driver.
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Interrupt,
}

impl Activation {
    /// Checks that the driver handed over `count` queues, all enabled, and keeps what a device
    /// needs to run them.
    pub fn into_active(self, count: usize) -> Result<Active, ActivateError> {
        if self.queues.len() != count {
            return Err(ActivateError::QueueCount {
                expected: count,
                got: self.queues.len(),
            });
        }
        if let Some(index) = self.queues.iter().position(|q| !q.ready()) {
            return Err(ActivateError::QueueNotReady(index));
        }
        Ok(Active {
            memory: self.memory,
            queues: self.queues,
            interrupt: self.interrupt,
        })
    }
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// The driver did not enable a queue the device needs.
    #[error("queue {0} was not enabled by the driver")]
    QueueNotReady(usize),
    /// The transport handed over the wrong number of queues.
    #[error("device expects {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues handed over.
        got: usize,
    },
}

/// A virtio device behind a [`super::mmio::MmioTransport`].
///
/// Guest input never makes a device panic: a request it cannot serve completes with an error
/// status, and a queue it cannot use any more marks it as needing reset through the
/// [`Interrupt`] it was activated with.
pub trait VirtioDevice: Send {
    /// Virtio device ID (spec §5), e.g. 2 for a block device.
    fn device_type(&self) -> u32;

    /// Features the device offers. The transport adds `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;

    /// Maximum size of each queue; the length is the number of queues. Each must be a power of
    /// two no larger than 32768.
    fn queue_max_sizes(&self) -> &[u16];

    /// Reads the device config space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device config space at `offset`; read-only fields ignore the write.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device with the queues the driver configured.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;

    /// Stops the device and drops its queues, memory and interrupt (driver wrote status 0).
    fn reset(&mut self);

    /// The VM's memory moved to a new mapping of the same guest-physical layout and content
    /// (a fork re-mapping its parent): an active device uses `memory` from now on. Called only
    /// while the VM is paused, so no request is in flight.
    fn set_memory(&mut self, memory: Memory);

    /// The queues of an active device, as they stand now; empty when not active.
    fn queues(&self) -> &[Queue];

    /// The driver notified queue `index` (a write to QueueNotify or, later, an ioeventfd).
    /// Only called on an active device, with `index` below the number of queues.
    fn queue_notify(&mut self, index: u16);

    /// A host-side fd (socket, TAP, inner epoll) the VMM's event loop watches for
    /// readability on the device's behalf; `None` for devices without one.
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// The backend fd became readable: move what it has towards the guest.
    fn process_backend(&mut self) {}

    /// Whether the device stopped with work left. One call of [`VirtioDevice::queue_notify`],
    /// [`VirtioDevice::process_backend`] or [`VirtioDevice::process_pending_work`] takes at
    /// most a queue's size of chains from each queue it serves, so a driver that keeps
    /// refilling a ring cannot hold the event loop; when chains are still waiting after that,
    /// this turns true.
    ///
    /// The event loop must then call [`VirtioDevice::process_pending_work`] again, after it
    /// served the other fds that were ready (not in a tight loop), and keep doing so while this
    /// stays true. A driver that keeps refilling a ring is served a queue's worth per round,
    /// like every other device, instead of starving them.
    fn has_pending_work(&self) -> bool {
        false
    }

    /// Continues the work a bounded pass left behind (see
    /// [`VirtioDevice::has_pending_work`]): one more bounded pass over the queues that had
    /// chains waiting.
    fn process_pending_work(&mut self) {}
}

/// Copies `config[offset..]` into `data`, zero-filling what lies past the end of `config`.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, 4, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
