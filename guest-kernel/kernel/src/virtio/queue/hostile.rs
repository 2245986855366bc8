//! Test-only behaviour for the `hostile` workload (`crate::hostile`): chains no well-behaved
//! driver builds. Nothing else calls this.

use zygote_guest_proto::{BadBuf, HostileOutcome, BAD_HUGE_LEN, BAD_MMIO_GAP, BAD_OUTSIDE_RAM};

use super::{Buf, Used, Virtqueue, DESC_F_NEXT};
use crate::clock::Clock;
use crate::virtio::transport::Mmio;

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

    /// Adds the chain `lead` + `buf`, with `buf` made bad as `case` says (for `Loop`, `buf`
    /// stays good and its `next` points back at the head). After a `Loop` the caller resets
    /// the device, as after [`Virtqueue::add_looped`].
    pub fn add_bad(&mut self, lead: &[Buf], case: BadBuf, buf: Buf) -> Option<u16> {
        let bad = match case {
            BadBuf::Loop => buf,
            BadBuf::OutsideRam => Buf {
                addr: BAD_OUTSIDE_RAM,
                ..buf
            },
            BadBuf::MmioGap => Buf {
                addr: BAD_MMIO_GAP,
                ..buf
            },
            BadBuf::HugeLen => Buf {
                len: BAD_HUGE_LEN,
                ..buf
            },
            BadBuf::ZeroLen => Buf { len: 0, ..buf },
            BadBuf::WrongDirection => Buf {
                writable: !buf.writable,
                ..buf
            },
        };
        let mut chain = [bad; 4];
        let n = lead.len() + 1;
        if n > chain.len() {
            return None;
        }
        chain[..lead.len()].copy_from_slice(lead);
        chain[lead.len()] = bad;
        match case {
            BadBuf::Loop => self.add_looped(&chain[..n]),
            _ => self.add(&chain[..n]),
        }
    }
}

impl Virtqueue {
    /// Polls the used ring (memory only, no VM exit) until the chain at `head` comes back or
    /// `ms` pass; other chains that come back meanwhile are recycled and skipped.
    pub fn wait_head(&mut self, clock: &Clock, head: u16, ms: u64) -> Option<Used> {
        let deadline = clock.deadline_ms(ms);
        loop {
            while let Some(used) = self.pop_used() {
                if used.head == head {
                    return Some(used);
                }
            }
            if deadline.passed() {
                return None;
            }
            core::hint::spin_loop();
        }
    }
}

/// How a device answered a bad chain: `needs_reset` if it set DEVICE_NEEDS_RESET (one VM
/// exit to read the status), else `timeout` if it kept the chain, `dropped` if it gave the
/// chain back with nothing written, `ok` if it wrote into it.
pub fn outcome(used: Option<Used>, mmio: &Mmio) -> HostileOutcome {
    if mmio.check().is_err() {
        return HostileOutcome::NeedsReset;
    }
    match used {
        None => HostileOutcome::Timeout,
        Some(used) if used.len == 0 => HostileOutcome::Dropped,
        Some(_) => HostileOutcome::Ok,
    }
}
