//! Test-only behaviour for the `hostile` workload (`crate::hostile`): chains no well-behaved
//! driver builds. Nothing else calls this.

use super::{Buf, Virtqueue, DESC_F_NEXT};

impl Virtqueue {
    /// Like [`Virtqueue::add`], but the last descriptor's `next` points back at the head: a
    /// descriptor loop. Once the device returns it, the queue's free list is no longer
    /// trustworthy (recycling stops after `size` descriptors); the caller resets the device
    /// and sets up a fresh queue.
    pub fn add_looped(&mut self, bufs: &[Buf]) -> Option<u16> {
        let (head, tail) = self.link(bufs)?;
        let (flags, _) = self.desc_flags_next(tail);
        self.write_desc_link(tail, flags | DESC_F_NEXT, head);
        self.publish(head);
        Some(head)
    }
}
