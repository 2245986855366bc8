//! Turning a descriptor chain the guest built into plain buffer lists, rejecting malformed ones.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, GuestAddress, GuestMemory};

/// One guest buffer of a descriptor chain. Its range is not yet checked against guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address of the buffer.
    pub addr: GuestAddress,
    /// Length of the buffer in bytes; never zero.
    pub len: u32,
}

/// The buffers of one chain: device-readable ones first, then device-writable ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainBuffers {
    /// Buffers the device reads (the driver's request), in chain order.
    pub readable: Vec<Segment>,
    /// Buffers the device writes (its response), in chain order.
    pub writable: Vec<Segment>,
}

/// Why a descriptor chain cannot be used at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain ended early: a loop or a chain longer than the queue, a `next` index past the
    /// table, a descriptor table outside guest memory, or more than 4 GiB of buffers.
    #[error("descriptor chain is truncated: loop, bad index, unreadable table or too long")]
    Truncated,
    /// A device-readable buffer follows a device-writable one (spec §2.7.4.2).
    #[error("descriptor chain has a device-readable buffer after a device-writable one")]
    ReadableAfterWritable,
}

/// Walks `chain` into [`ChainBuffers`], skipping zero-length descriptors.
///
/// virtio-queue stops a chain after as many descriptors as the queue has (so loops end), at a
/// `next` index past the table, at an unreadable descriptor and when the lengths would pass
/// 4 GiB; a chain whose last descriptor still had `NEXT` set is reported as truncated.
pub fn collect_chain<M>(chain: DescriptorChain<M>) -> Result<ChainBuffers, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut buffers = ChainBuffers::default();
    let mut ended = false;
    for desc in chain {
        ended = !desc.has_next();
        if desc.len() == 0 {
            continue;
        }
        let segment = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        if desc.is_write_only() {
            buffers.writable.push(segment);
        } else if buffers.writable.is_empty() {
            buffers.readable.push(segment);
        } else {
            return Err(ChainError::ReadableAfterWritable);
        }
    }
    if ended {
        Ok(buffers)
    } else {
        Err(ChainError::Truncated)
    }
}

/// Total length of `segments` in bytes.
pub fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// Splits `segments` after their first `n` bytes: `(first n bytes, the rest)`. If they hold
/// fewer than `n` bytes, the first part is all of them.
pub fn split_front(segments: &[Segment], n: u64) -> (Vec<Segment>, Vec<Segment>) {
    let mut front = Vec::new();
    let mut rest = Vec::new();
    let mut left = n;
    for &seg in segments {
        let take = left.min(u64::from(seg.len));
        // `take` fits in u32: it is at most `seg.len`.
        let take32 = take as u32;
        if take32 > 0 {
            front.push(Segment {
                addr: seg.addr,
                len: take32,
            });
        }
        if take32 < seg.len {
            if let Some(addr) = seg.addr.checked_add(take) {
                rest.push(Segment {
                    addr,
                    len: seg.len - take32,
                });
            }
        }
        left -= take;
    }
    (front, rest)
}

/// Splits off the last byte of `segments`: `(everything before it, its address)`, or `None`
/// when they are empty, the last one is empty (a [`Segment`] built by hand may be) or the
/// address overflows.
pub fn split_last_byte(segments: &[Segment]) -> Option<(Vec<Segment>, GuestAddress)> {
    let (&last, before) = segments.split_last()?;
    let addr = last.addr.checked_add(u64::from(last.len).checked_sub(1)?)?;
    let mut rest = before.to_vec();
    if last.len > 1 {
        rest.push(Segment {
            addr: last.addr,
            len: last.len - 1,
        });
    }
    Some((rest, addr))
}

/// Whether every segment lies inside guest memory.
pub fn segments_in_memory<M: vm_memory::GuestMemoryBackend>(mem: &M, segments: &[Segment]) -> bool {
    segments.iter().all(|s| {
        usize::try_from(s.len)
            .is_ok_and(|len| vm_memory::GuestMemoryBackend::check_range(mem, s.addr, len))
    })
}

/// Reads exactly `buf.len()` bytes gathered from `segments` (which must hold that many).
pub fn read_gathered<M: vm_memory::GuestMemoryBackend>(
    mem: &M,
    segments: &[Segment],
    buf: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    use vm_memory::Bytes;
    let mut rest = buf;
    for seg in segments {
        let n = (seg.len as usize).min(rest.len());
        let (now, later) = rest.split_at_mut(n);
        mem.read_slice(now, seg.addr)?;
        rest = later;
    }
    if rest.is_empty() {
        Ok(())
    } else {
        Err(vm_memory::GuestMemoryError::PartialBuffer {
            expected: rest.len(),
            completed: 0,
        })
    }
}

/// Writes all of `data` across `segments` in order; they must hold at least that many bytes.
pub fn write_scattered<M: vm_memory::GuestMemoryBackend>(
    mem: &M,
    segments: &[Segment],
    data: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    SegmentWriter::new(segments).write(mem, data)
}

/// A write position across a chain's writable buffers, for data written in several pieces
/// (a header, then a payload).
#[derive(Debug)]
pub struct SegmentWriter<'a> {
    segments: &'a [Segment],
    /// Bytes already written into `segments[0]`.
    offset: u32,
}

impl<'a> SegmentWriter<'a> {
    /// A writer at the start of `segments`.
    pub fn new(segments: &'a [Segment]) -> Self {
        Self {
            segments,
            offset: 0,
        }
    }

    /// Writes all of `data` after what was written before. Fails with `PartialBuffer` when the
    /// segments have no room left for it, and with the memory error when one lies outside
    /// guest memory.
    pub fn write<M: vm_memory::GuestMemoryBackend>(
        &mut self,
        mem: &M,
        mut data: &[u8],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        use vm_memory::Bytes;
        let expected = data.len();
        while !data.is_empty() {
            let Some((seg, rest)) = self.segments.split_first() else {
                return Err(vm_memory::GuestMemoryError::PartialBuffer {
                    expected,
                    completed: expected - data.len(),
                });
            };
            let room = (seg.len - self.offset) as usize;
            let n = room.min(data.len());
            let addr = seg
                .addr
                .checked_add(u64::from(self.offset))
                .ok_or(vm_memory::GuestMemoryError::InvalidGuestAddress(seg.addr))?;
            mem.write_slice(&data[..n], addr)?;
            data = &data[n..];
            if n == room {
                self.segments = rest;
                self.offset = 0;
            } else {
                // `n < room <= seg.len`, so this stays within u32.
                self.offset += n as u32;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn splitting_front_and_last_byte() {
        let segs = [seg(0x1000, 10), seg(0x2000, 10)];
        let (front, rest) = split_front(&segs, 12);
        assert_eq!(front, vec![seg(0x1000, 10), seg(0x2000, 2)]);
        assert_eq!(rest, vec![seg(0x2002, 8)]);
        let (front, rest) = split_front(&segs, 100);
        assert_eq!((total_len(&front), rest.len()), (20, 0));
        let (before, status) = split_last_byte(&segs).unwrap();
        assert_eq!(status, GuestAddress(0x2009));
        assert_eq!(before, vec![seg(0x1000, 10), seg(0x2000, 9)]);
        let (before, status) = split_last_byte(&[seg(0x3000, 1)]).unwrap();
        assert_eq!((before.len(), status), (0, GuestAddress(0x3000)));
        assert_eq!(split_last_byte(&[]), None);
        assert_eq!(split_last_byte(&[seg(u64::MAX, 2)]), None);
    }

    #[test]
    fn split_last_byte_of_a_zero_length_segment_is_none_not_a_panic() {
        assert_eq!(split_last_byte(&[seg(0x1000, 0)]), None);
        assert_eq!(split_last_byte(&[seg(0x1000, 4), seg(0, 0)]), None);
    }

    #[test]
    fn scattered_writes_continue_across_segments_and_refuse_overflow() {
        let mem = crate::virtio::testing::guest_memory();
        let segs = [seg(0x1000, 3), seg(0x2000, 4)];
        let mut writer = SegmentWriter::new(&segs);
        writer.write(&mem, b"ab").unwrap();
        writer.write(&mem, b"cde").unwrap();
        let mut got = [0u8; 7];
        read_gathered(&mem, &segs, &mut got).unwrap();
        assert_eq!(&got[..5], b"abcde");
        assert!(
            writer.write(&mem, b"xyz").is_err(),
            "only 2 bytes of room left"
        );
        write_scattered(&mem, &segs, b"1234567").unwrap();
        read_gathered(&mem, &segs, &mut got).unwrap();
        assert_eq!(&got, b"1234567");
        assert!(write_scattered(&mem, &[seg(u64::MAX - 1, 4)], b"abcd").is_err());
    }
}
