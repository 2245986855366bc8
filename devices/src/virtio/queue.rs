//! Taking chains from a device's queue and giving them back, the same way in every device.
//!
//! - A ring the driver made unusable (an available index further ahead than the queue size, a
//!   used ring that cannot be written) marks the device as needing reset.
//! - One [`Pass`] over a queue takes at most as many chains as the queue has entries, so a
//!   driver that keeps refilling its ring while the device works cannot hold the device (and
//!   the VMM's event loop) forever. A pass that stops at that bound with chains still waiting
//!   says so, and the device reports it through [`super::VirtioDevice::has_pending_work`].

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{Interrupt, Memory};

/// One bounded pass over a queue.
#[derive(Debug)]
pub(crate) struct Pass {
    /// Chains the pass may still take.
    left: u16,
    /// Whether a chain was returned to the driver.
    used: bool,
    /// The ring turned out unusable: the device needs a reset and the pass ends.
    broken: bool,
}

impl Pass {
    /// A pass over `queue`, taking at most `queue.size()` chains.
    pub(crate) fn new(queue: &Queue) -> Self {
        Self {
            left: queue.size(),
            used: false,
            broken: false,
        }
    }

    /// The next available chain; `None` when the ring is empty, when the pass took a queue's
    /// worth, or when the ring is unusable (which marks the device as needing reset).
    pub(crate) fn pop<'m>(
        &mut self,
        queue: &mut Queue,
        mem: &'m Memory,
        interrupt: &Interrupt,
    ) -> Option<DescriptorChain<&'m Memory>> {
        if self.left == 0 || self.broken {
            return None;
        }
        let chain = match queue.iter(mem) {
            Ok(mut available) => available.next(),
            Err(_) => {
                self.broken = true;
                let _ = interrupt.signal_needs_reset();
                None
            }
        }?;
        self.left -= 1;
        Some(chain)
    }

    /// Puts the chain [`Pass::pop`] returned last back on the ring, for later. It still
    /// counts against the pass's bound, so a pass that keeps putting chains back ends too.
    pub(crate) fn put_back(&mut self, queue: &mut Queue) {
        queue.go_to_previous_position();
    }

    /// Returns chain `head` to the driver with `len` bytes written. False (the device needing
    /// reset, the pass ended) if the used ring cannot be written.
    pub(crate) fn add_used(
        &mut self,
        queue: &mut Queue,
        mem: &Memory,
        interrupt: &Interrupt,
        head: u16,
        len: u32,
    ) -> bool {
        if queue.add_used(mem, head, len).is_ok() {
            self.used = true;
            true
        } else {
            self.broken = true;
            let _ = interrupt.signal_needs_reset();
            false
        }
    }

    /// Ends the pass: interrupts the driver if chains were returned and it wants to know, or
    /// else tells the line they were returned (a polling driver's VMM may be waiting for
    /// that). Returns whether the pass stopped at its bound with chains still available, i.e.
    /// the device has work left on this queue.
    pub(crate) fn finish(self, queue: &mut Queue, mem: &Memory, interrupt: &Interrupt) -> bool {
        if self.used {
            if wants_interrupt(queue, mem) {
                // A failed interrupt only delays the driver noticing; nothing else to do.
                let _ = interrupt.signal_used_queue();
            } else {
                interrupt.note_used_buffers();
            }
        }
        !self.broken && self.left == 0 && has_available(queue, mem)
    }
}

/// Whether the driver wants an interrupt for the used buffers just added. Without
/// `VIRTIO_F_EVENT_IDX` that is the available ring's flags not holding
/// `VIRTQ_AVAIL_F_NO_INTERRUPT` (virtio 1.2 §2.7.7.2: the device SHOULD NOT interrupt when it
/// is set), which virtio-queue does not check itself; with it, virtio-queue's `used_event`
/// test. An unreadable ring errs on the side of interrupting.
fn wants_interrupt(queue: &mut Queue, mem: &Memory) -> bool {
    if !queue.event_idx_enabled() {
        let flags = mem.read_obj::<u16>(GuestAddress(queue.avail_ring()));
        if flags.is_ok_and(|flags| u32::from(u16::from_le(flags)) & VRING_AVAIL_F_NO_INTERRUPT != 0)
        {
            return false;
        }
    }
    queue.needs_notification(mem).unwrap_or(true)
}

/// Whether the driver made chains available that the device has not taken yet (false when
/// the ring cannot be read).
pub(crate) fn has_available(queue: &Queue, mem: &Memory) -> bool {
    queue
        .avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|idx| idx != Wrapping(queue.next_avail()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::virtio::testing::{counting_interrupt, guest_memory, Desc, MockQueue};

    fn ready_queue(mem: &Memory, mock: &MockQueue) -> Queue {
        let mut queue = Queue::new(mock.size).unwrap();
        queue.set_size(mock.size);
        queue.try_set_desc_table_address(mock.desc_table).unwrap();
        queue.try_set_avail_ring_address(mock.avail_ring).unwrap();
        queue.try_set_used_ring_address(mock.used_ring).unwrap();
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        queue
    }

    #[test]
    fn a_pass_takes_at_most_a_queue_of_chains_and_reports_the_rest() {
        let mem = guest_memory();
        let mut mock = MockQueue::new(&mem, GuestAddress(0x1000), 4);
        let mut queue = ready_queue(&mem, &mock);
        let line = counting_interrupt();
        let interrupt = Interrupt::new(line.clone());
        for _ in 0..4 {
            mock.add_chain(&mem, &[Desc::writable(0x10_0000, 8)]);
        }
        let mut pass = Pass::new(&queue);
        let mut taken = 0;
        while let Some(chain) = pass.pop(&mut queue, &mem, &interrupt) {
            taken += 1;
            // The driver refills the ring behind the device's back.
            mock.add_chain(&mem, &[Desc::writable(0x10_0000, 8)]);
            assert!(pass.add_used(&mut queue, &mem, &interrupt, chain.head_index(), 0));
        }
        assert_eq!(taken, 4);
        assert!(pass.finish(&mut queue, &mem, &interrupt), "work is left");
        assert_eq!(line.count(), 1);
        assert!(!interrupt.needs_reset());
    }

    #[test]
    fn used_buffers_a_polling_driver_asked_no_interrupt_for_are_still_told_to_the_line() {
        let mem = guest_memory();
        let mut mock = MockQueue::new(&mem, GuestAddress(0x1000), 4);
        let mut queue = ready_queue(&mem, &mock);
        let line = counting_interrupt();
        let interrupt = Interrupt::new(line.clone());
        mock.set_avail_flags(&mem, 1);
        for round in 1..=2 {
            mock.add_chain(&mem, &[Desc::writable(0x10_0000, 8)]);
            let mut pass = Pass::new(&queue);
            let chain = pass.pop(&mut queue, &mem, &interrupt).unwrap();
            assert!(pass.add_used(&mut queue, &mem, &interrupt, chain.head_index(), 0));
            assert!(!pass.finish(&mut queue, &mem, &interrupt));
            assert_eq!((line.count(), line.quiet_count()), (0, round));
        }
        // A pass that returns nothing says nothing.
        let pass = Pass::new(&queue);
        pass.finish(&mut queue, &mem, &interrupt);
        assert_eq!((line.count(), line.quiet_count()), (0, 2));
        // Interrupts wanted again: the line is raised instead.
        mock.set_avail_flags(&mem, 0);
        mock.add_chain(&mem, &[Desc::writable(0x10_0000, 8)]);
        let mut pass = Pass::new(&queue);
        let chain = pass.pop(&mut queue, &mem, &interrupt).unwrap();
        assert!(pass.add_used(&mut queue, &mem, &interrupt, chain.head_index(), 0));
        pass.finish(&mut queue, &mem, &interrupt);
        assert_eq!((line.count(), line.quiet_count()), (1, 2));
    }

    #[test]
    fn an_avail_index_too_far_ahead_needs_reset() {
        let mem = guest_memory();
        let mut mock = MockQueue::new(&mem, GuestAddress(0x1000), 4);
        let mut queue = ready_queue(&mem, &mock);
        let interrupt = Interrupt::new(Arc::new(
            crate::virtio::testing::CountingInterrupt::default(),
        ));
        mock.set_avail_idx(&mem, 5);
        let mut pass = Pass::new(&queue);
        assert!(pass.pop(&mut queue, &mem, &interrupt).is_none());
        assert!(interrupt.needs_reset());
        assert!(
            !pass.finish(&mut queue, &mem, &interrupt),
            "a broken ring has no work"
        );
    }
}
