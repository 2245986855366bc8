//! Split virtqueues (virtio 1.2 §2.7), driver side: descriptor chains from a free list,
//! publishing to the available ring, notifying, and polling the used ring.
//!
//! The rings live in one zeroed arena page per queue; the arena is identity-mapped, so their
//! addresses are guest-physical. Interrupts are never used: the available ring asks the device
//! not to send any (VIRTQ_AVAIL_F_NO_INTERRUPT), and the drivers poll `used.idx`, which is plain
//! memory (no VM exit).

mod hostile;

pub use hostile::outcome;

use core::sync::atomic::{fence, Ordering};

use crate::arena::Arena;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const DESC_SIZE: usize = 16;
const PAGE: usize = 4096;

/// Largest queue the drivers ask for (a queue's rings then fit in one page).
pub const MAX_QUEUE_SIZE: u16 = 128;

/// One buffer of a chain: guest-physical address, length, and whether the device writes it.
#[derive(Clone, Copy)]
pub struct Buf {
    /// Guest-physical (= virtual) address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (the device fills it) rather than device-readable.
    pub writable: bool,
}

impl Buf {
    /// A buffer the device reads.
    pub fn read(addr: *const u8, len: usize) -> Self {
        Buf {
            addr: addr as u64,
            len: len as u32,
            writable: false,
        }
    }

    /// A buffer the device writes.
    pub fn write(addr: *mut u8, len: usize) -> Self {
        Buf {
            addr: addr as u64,
            len: len as u32,
            writable: true,
        }
    }
}

/// A chain the device has finished with: its head and the bytes it wrote.
#[derive(Clone, Copy)]
pub struct Used {
    /// The head descriptor index [`Virtqueue::add`] returned.
    pub head: u16,
    /// Bytes the device wrote into the chain's writable buffers.
    pub len: u32,
}

/// A split virtqueue the driver owns.
pub struct Virtqueue {
    /// Descriptor table (16 bytes × size), at the start of the page.
    desc: *mut u8,
    /// Available ring: flags, idx, ring[size], used_event.
    avail: *mut u16,
    /// Used ring: flags, idx, then {id: u32, len: u32} × size, avail_event.
    used: *mut u8,
    size: u16,
    free_head: u16,
    num_free: u16,
    avail_idx: u16,
    last_used: u16,
    notify: *mut u32,
    index: u16,
}

impl Virtqueue {
    /// A queue of `size` (a power of two, at most [`MAX_QUEUE_SIZE`]) entries in a fresh arena
    /// page, notified by writing `index` to `notify`.
    pub fn new(arena: &mut Arena, size: u16, notify: *mut u32, index: u16) -> Option<Self> {
        assert!(size.is_power_of_two() && size <= MAX_QUEUE_SIZE);
        let page = arena.alloc(PAGE, PAGE)?;
        let n = usize::from(size);
        let avail_offset = DESC_SIZE * n;
        let used_offset = (avail_offset + 6 + 2 * n + 3) & !3;
        debug_assert!(used_offset + 6 + 8 * n <= PAGE);
        let mut queue = Virtqueue {
            desc: page,
            // SAFETY: the offset lies inside the page just allocated.
            avail: unsafe { page.add(avail_offset) }.cast(),
            // SAFETY: as above.
            used: unsafe { page.add(used_offset) },
            size,
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            last_used: 0,
            notify,
            index,
        };
        for i in 0..size {
            // Free list: each descriptor's `next` is the following one.
            queue.write_desc(i, 0, 0, 0, (i + 1) % size);
        }
        // SAFETY: `avail` points at the ring's flags, inside the page.
        unsafe { queue.avail.write_volatile(AVAIL_F_NO_INTERRUPT) };
        Some(queue)
    }

    /// Guest-physical addresses of the descriptor table, the driver (available) area and the
    /// device (used) area.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc as u64, self.avail as u64, self.used as u64)
    }

    /// Descriptors not in use.
    pub fn free(&self) -> u16 {
        self.num_free
    }

    fn write_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = usize::from(i) * DESC_SIZE;
        // SAFETY: `i < size`, so the 16-byte descriptor lies in the table; volatile because
        // the device reads it.
        unsafe {
            let d = self.desc.add(base);
            d.cast::<u64>().write_volatile(addr);
            d.add(8).cast::<u32>().write_volatile(len);
            d.add(12).cast::<u16>().write_volatile(flags);
            d.add(14).cast::<u16>().write_volatile(next);
        }
    }

    fn desc_flags_next(&self, i: u16) -> (u16, u16) {
        let base = usize::from(i) * DESC_SIZE;
        // SAFETY: `i < size`; the descriptor lies in the table.
        unsafe {
            let d = self.desc.add(base);
            (
                d.add(12).cast::<u16>().read_volatile(),
                d.add(14).cast::<u16>().read_volatile(),
            )
        }
    }

    /// Adds a chain of `bufs` (device-readable ones first) and publishes it in the available
    /// ring; `None` when too few descriptors are free. The device learns of it at the next
    /// [`Virtqueue::notify`].
    pub fn add(&mut self, bufs: &[Buf]) -> Option<u16> {
        let (head, _) = self.link(bufs)?;
        self.publish(head);
        Some(head)
    }

    /// Writes `bufs` into descriptors taken from the free list, chained in order; returns the
    /// head and the last descriptor. `None` when too few are free.
    fn link(&mut self, bufs: &[Buf]) -> Option<(u16, u16)> {
        if bufs.is_empty() || bufs.len() > usize::from(self.num_free) {
            return None;
        }
        let head = self.free_head;
        let mut i = head;
        for (n, buf) in bufs.iter().enumerate() {
            let (_, next) = self.desc_flags_next(i);
            let last = n + 1 == bufs.len();
            let mut flags = if buf.writable { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(i, buf.addr, buf.len, flags, next);
            if last {
                self.free_head = next;
            } else {
                i = next;
            }
        }
        self.num_free -= bufs.len() as u16;
        Some((head, i))
    }

    /// Puts the chain at `head` in the available ring.
    fn publish(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        // SAFETY: ring entry `slot < size` lies in the available ring (after flags and idx).
        unsafe { self.avail.add(2 + slot).write_volatile(head) };
        // The ring entry (and the descriptors) must be visible before the index that covers it.
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: `avail + 1` is the available ring's idx.
        unsafe { self.avail.add(1).write_volatile(self.avail_idx) };
    }

    /// Tells the device there is new work in this queue (one VM exit).
    pub fn notify(&self) {
        // The index update must be visible before the device looks.
        fence(Ordering::SeqCst);
        // SAFETY: `notify` is this device's QueueNotify register (see `Mmio::queue`).
        unsafe { self.notify.write_volatile(u32::from(self.index)) };
    }

    /// Changes whenever the driver publishes a chain or pops a used one: the available index
    /// in the high half, the last used index seen in the low half.
    pub fn progress(&self) -> u32 {
        u32::from(self.avail_idx) << 16 | u32::from(self.last_used)
    }

    /// Whether the device has returned a chain not yet popped (reads memory only).
    pub fn has_used(&self) -> bool {
        self.used_idx() != self.last_used
    }

    fn used_idx(&self) -> u16 {
        // SAFETY: `used + 2` is the used ring's idx, inside the queue's page; the device
        // writes it, hence volatile.
        unsafe { self.used.add(2).cast::<u16>().read_volatile() }
    }

    /// The next chain the device finished with, its descriptors returned to the free list.
    pub fn pop_used(&mut self) -> Option<Used> {
        if self.used_idx() == self.last_used {
            return None;
        }
        // Read the element only after seeing the index that covers it.
        fence(Ordering::Acquire);
        let slot = usize::from(self.last_used % self.size);
        // SAFETY: element `slot < size` lies in the used ring (after flags and idx).
        let (id, len) = unsafe {
            let elem = self.used.add(4 + 8 * slot);
            (
                elem.cast::<u32>().read_volatile(),
                elem.add(4).cast::<u32>().read_volatile(),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        // A device returning a head it never got is broken; skip the entry.
        let head = u16::try_from(id).ok().filter(|&h| h < self.size)?;
        self.recycle(head);
        Some(Used { head, len })
    }

    /// Puts the chain at `head` back on the free list (bounded: a corrupt chain cannot loop).
    fn recycle(&mut self, head: u16) {
        let mut tail = head;
        let mut count = 1;
        loop {
            let (flags, next) = self.desc_flags_next(tail);
            if flags & DESC_F_NEXT == 0 || count >= self.size || next >= self.size {
                break;
            }
            tail = next;
            count += 1;
        }
        let (flags, _) = self.desc_flags_next(tail);
        self.write_desc_link(tail, flags & !DESC_F_NEXT, self.free_head);
        self.free_head = head;
        self.num_free = (self.num_free + count).min(self.size);
    }

    fn write_desc_link(&mut self, i: u16, flags: u16, next: u16) {
        let base = usize::from(i) * DESC_SIZE;
        // SAFETY: `i < size`; flags and next lie in the descriptor.
        unsafe {
            let d = self.desc.add(base);
            d.add(12).cast::<u16>().write_volatile(flags);
            d.add(14).cast::<u16>().write_volatile(next);
        }
    }
}
