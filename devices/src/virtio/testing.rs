//! A mock virtio driver for tests, fuzz targets and benches: guest memory, a split queue laid
//! out in it, descriptor chains (well-formed and hostile), and the virtio-mmio init sequence.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::QUEUE_NOTIFY_OFFSET;
use super::{InterruptLine, Memory};
use crate::BusDevice;

/// Size of the guest memory [`guest_memory`] builds.
pub const MEM_SIZE: u64 = 0x80_0000;
/// Where [`Arena`] starts handing out buffers.
pub const ARENA_START: u64 = 0x10_0000;

/// Guest memory of [`MEM_SIZE`] bytes at address 0.
pub fn guest_memory() -> Memory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("mock guest memory")
}

/// An interrupt line that counts how often it was raised, and how often buffers were used
/// without raising it.
#[derive(Debug, Default)]
pub struct CountingInterrupt {
    raised: AtomicUsize,
    quiet: AtomicUsize,
}

impl CountingInterrupt {
    /// How many times the line was raised.
    pub fn count(&self) -> usize {
        self.raised.load(Ordering::SeqCst)
    }

    /// How many times buffers were used without an interrupt ([`InterruptLine::used_buffers`]).
    pub fn quiet_count(&self) -> usize {
        self.quiet.load(Ordering::SeqCst)
    }
}

impl InterruptLine for CountingInterrupt {
    fn trigger(&self) -> std::io::Result<()> {
        self.raised.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn used_buffers(&self) {
        self.quiet.fetch_add(1, Ordering::SeqCst);
    }
}

/// A fresh counting line, shareable with a transport.
pub fn counting_interrupt() -> Arc<CountingInterrupt> {
    Arc::new(CountingInterrupt::default())
}

/// A split-queue descriptor as the mock driver writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VRING_DESC_F_*` flags.
    pub flags: u16,
    /// Next descriptor index, used with `VRING_DESC_F_NEXT`.
    pub next: u16,
}

impl Desc {
    /// A device-readable buffer.
    pub fn readable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            flags: 0,
            next: 0,
        }
    }

    /// A device-writable buffer.
    pub fn writable(addr: u64, len: u32) -> Self {
        Self {
            flags: VRING_DESC_F_WRITE as u16,
            ..Self::readable(addr, len)
        }
    }

    /// This descriptor, continued by descriptor `next`.
    pub fn then(self, next: u16) -> Self {
        Self {
            flags: self.flags | VRING_DESC_F_NEXT as u16,
            next,
            ..self
        }
    }
}

/// A split queue in guest memory, driven the way a driver would.
#[derive(Debug)]
pub struct MockQueue {
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc_table: GuestAddress,
    /// Available ring address.
    pub avail_ring: GuestAddress,
    /// Used ring address.
    pub used_ring: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl MockQueue {
    /// Lays out a queue of `size` entries at `base` (16-byte aligned); its rings are zeroed.
    pub fn new(mem: &Memory, base: GuestAddress, size: u16) -> Self {
        let size64 = u64::from(size);
        let avail_ring = base.unchecked_add(16 * size64);
        let used_ring = GuestAddress((avail_ring.0 + 6 + 2 * size64 + 3) & !3);
        let end = used_ring.0 + 6 + 8 * size64;
        let zeros = vec![0u8; (end - base.0) as usize];
        mem.write_slice(&zeros, base)
            .expect("queue inside mock memory");
        Self {
            size,
            desc_table: base,
            avail_ring,
            used_ring,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Writes descriptor `index` (which may be anything, for hostile tables).
    pub fn write_desc(&self, mem: &Memory, index: u16, desc: Desc) {
        let addr = self.desc_table.unchecked_add(16 * u64::from(index));
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&desc.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&desc.len.to_le_bytes());
        raw[12..14].copy_from_slice(&desc.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&desc.next.to_le_bytes());
        mem.write_slice(&raw, addr)
            .expect("descriptor inside mock memory");
    }

    /// Writes `descs` as one chain in free table slots (linking them with `NEXT`) and makes
    /// it available; returns its head index.
    pub fn add_chain(&mut self, mem: &Memory, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        let count = descs.len() as u16;
        for (i, desc) in descs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let desc = if (i as u16) + 1 < count {
                desc.then((index + 1) % self.size)
            } else {
                *desc
            };
            self.write_desc(mem, index, desc);
        }
        self.next_desc = (head + count) % self.size;
        self.publish(mem, head);
        head
    }

    /// Puts `head` on the available ring and bumps the available index.
    pub fn publish(&mut self, mem: &Memory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let addr = self.avail_ring.unchecked_add(4 + 2 * slot);
        mem.write_obj(head.to_le(), addr).expect("avail ring");
        self.set_avail_idx(mem, self.avail_idx.wrapping_add(1));
    }

    /// Sets the available ring's flags (`VRING_AVAIL_F_NO_INTERRUPT` = 1 asks for no
    /// interrupts).
    pub fn set_avail_flags(&self, mem: &Memory, flags: u16) {
        mem.write_obj(flags.to_le(), self.avail_ring)
            .expect("avail ring");
    }

    /// Sets the available index to anything (hostile drivers lie about it).
    pub fn set_avail_idx(&mut self, mem: &Memory, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx.to_le(), self.avail_ring.unchecked_add(2))
            .expect("avail ring");
    }

    /// The used index the device wrote.
    pub fn used_idx(&self, mem: &Memory) -> u16 {
        mem.read_obj(self.used_ring.unchecked_add(2))
            .map(u16::from_le)
            .expect("used ring")
    }

    /// The next used element the device returned: (descriptor head, bytes written).
    pub fn next_used(&mut self, mem: &Memory) -> Option<(u32, u32)> {
        if self.used_idx(mem) == self.used_seen {
            return None;
        }
        let slot = u64::from(self.used_seen % self.size);
        let addr = self.used_ring.unchecked_add(4 + 8 * slot);
        let id: u32 = mem.read_obj(addr).expect("used ring");
        let len: u32 = mem.read_obj(addr.unchecked_add(4)).expect("used ring");
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((u32::from_le(id), u32::from_le(len)))
    }
}

/// A driver that refills a ring behind the device's back, as one on another vCPU would while
/// the device works. Every slot of the available ring names the same chain (see
/// [`MockQueue::refiller`]), so moving the available index is all a refill takes.
#[derive(Clone, Debug)]
pub struct Refiller {
    mem: Memory,
    size: u16,
    avail_idx: GuestAddress,
    used_idx: GuestAddress,
}

impl Refiller {
    /// Makes the chain available once more past the one the device is serving: the
    /// available index goes two past the used index.
    pub fn refill(&self) {
        self.set_ahead_of_used(2);
    }

    /// Makes the ring as full as the driver may: the available index goes a queue's size past
    /// the used index.
    pub fn fill(&self) {
        self.set_ahead_of_used(self.size);
    }

    fn set_ahead_of_used(&self, ahead: u16) {
        let used = u16::from_le(self.mem.read_obj(self.used_idx).expect("used ring"));
        self.mem
            .write_obj(used.wrapping_add(ahead).to_le(), self.avail_idx)
            .expect("avail ring");
    }
}

/// A [`Refiller`] installed once the chain to repeat exists, allowed a fixed number of
/// refills: what a test backend holds to stand for a driver refilling from another vCPU.
pub struct BudgetedRefills {
    driver: Arc<std::sync::Mutex<Option<Refiller>>>,
    left: u32,
}

impl BudgetedRefills {
    /// `left` refills, and the cell to put the [`Refiller`] in when it is known.
    pub fn new(left: u32) -> (Self, Arc<std::sync::Mutex<Option<Refiller>>>) {
        let driver = Arc::new(std::sync::Mutex::new(None));
        (
            Self {
                driver: driver.clone(),
                left,
            },
            driver,
        )
    }

    /// Refills once, if a refiller is installed and the budget allows.
    pub fn refill(&mut self) {
        let driver = self.driver.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(driver) = driver.as_ref().filter(|_| self.left > 0) {
            self.left -= 1;
            driver.refill();
        }
    }
}

impl MockQueue {
    /// Puts `head` in every slot of the available ring, so whatever the available index says
    /// is that chain, and returns a [`Refiller`] that moves the index.
    pub fn refiller(&self, mem: &Memory, head: u16) -> Refiller {
        for slot in 0..u64::from(self.size) {
            let addr = self.avail_ring.unchecked_add(4 + 2 * slot);
            mem.write_obj(head.to_le(), addr).expect("avail ring");
        }
        Refiller {
            mem: mem.clone(),
            size: self.size,
            avail_idx: self.avail_ring.unchecked_add(2),
            used_idx: self.used_ring.unchecked_add(2),
        }
    }
}

/// Hands out non-overlapping buffers in guest memory, from [`ARENA_START`].
#[derive(Debug)]
pub struct Arena {
    next: u64,
}

impl Default for Arena {
    fn default() -> Self {
        Self { next: ARENA_START }
    }
}

impl Arena {
    /// A fresh buffer of `len` bytes, 16-byte aligned.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.next;
        self.next = (addr + len + 15) & !15;
        assert!(self.next <= MEM_SIZE, "mock arena exhausted");
        addr
    }
}

/// Writes a 32-bit register.
pub fn write_reg(dev: &mut dyn BusDevice, offset: u64, value: u32) {
    dev.write(offset, &value.to_le_bytes());
}

/// Reads a 32-bit register.
pub fn read_reg(dev: &mut dyn BusDevice, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    dev.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// Status, feature and queue register offsets, as a driver uses them.
pub mod regs {
    pub use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
        VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
        VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
    };
    use virtio_bindings::virtio_mmio as m;
    /// Offset of a register.
    pub const MAGIC: u64 = m::VIRTIO_MMIO_MAGIC_VALUE as u64;
    /// Offset of a register.
    pub const VERSION: u64 = m::VIRTIO_MMIO_VERSION as u64;
    /// Offset of a register.
    pub const DEVICE_ID: u64 = m::VIRTIO_MMIO_DEVICE_ID as u64;
    /// Offset of a register.
    pub const DEVICE_FEATURES: u64 = m::VIRTIO_MMIO_DEVICE_FEATURES as u64;
    /// Offset of a register.
    pub const DEVICE_FEATURES_SEL: u64 = m::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
    /// Offset of a register.
    pub const DRIVER_FEATURES: u64 = m::VIRTIO_MMIO_DRIVER_FEATURES as u64;
    /// Offset of a register.
    pub const DRIVER_FEATURES_SEL: u64 = m::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
    /// Offset of a register.
    pub const QUEUE_SEL: u64 = m::VIRTIO_MMIO_QUEUE_SEL as u64;
    /// Offset of a register.
    pub const QUEUE_NUM_MAX: u64 = m::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
    /// Offset of a register.
    pub const QUEUE_NUM: u64 = m::VIRTIO_MMIO_QUEUE_NUM as u64;
    /// Offset of a register.
    pub const QUEUE_READY: u64 = m::VIRTIO_MMIO_QUEUE_READY as u64;
    /// Offset of a register.
    pub const INTERRUPT_STATUS: u64 = m::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
    /// Offset of a register.
    pub const INTERRUPT_ACK: u64 = m::VIRTIO_MMIO_INTERRUPT_ACK as u64;
    /// Offset of a register.
    pub const STATUS: u64 = m::VIRTIO_MMIO_STATUS as u64;
    /// Offset of a register.
    pub const QUEUE_DESC_LOW: u64 = m::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
    /// Offset of a register.
    pub const QUEUE_DESC_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
    /// Offset of a register.
    pub const QUEUE_AVAIL_LOW: u64 = m::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
    /// Offset of a register.
    pub const QUEUE_AVAIL_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
    /// Offset of a register.
    pub const QUEUE_USED_LOW: u64 = m::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
    /// Offset of a register.
    pub const QUEUE_USED_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
    /// Offset of a register.
    pub const CONFIG_GENERATION: u64 = m::VIRTIO_MMIO_CONFIG_GENERATION as u64;
    /// Offset of the device config space.
    pub const CONFIG: u64 = m::VIRTIO_MMIO_CONFIG as u64;
}

/// Takes a device from reset to `FEATURES_OK` accepting `features`; returns the status read
/// back (without `FEATURES_OK` if the device refused them).
pub fn negotiate(dev: &mut dyn BusDevice, features: u64) -> u32 {
    use regs::*;
    write_reg(dev, STATUS, 0);
    write_reg(dev, STATUS, ACKNOWLEDGE);
    write_reg(dev, STATUS, ACKNOWLEDGE | DRIVER);
    write_reg(dev, DRIVER_FEATURES_SEL, 0);
    write_reg(dev, DRIVER_FEATURES, features as u32);
    write_reg(dev, DRIVER_FEATURES_SEL, 1);
    write_reg(dev, DRIVER_FEATURES, (features >> 32) as u32);
    write_reg(dev, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    read_reg(dev, STATUS)
}

/// Configures queue `index` to use `queue` and enables it.
pub fn setup_queue(dev: &mut dyn BusDevice, index: u32, queue: &MockQueue) {
    use regs::*;
    write_reg(dev, QUEUE_SEL, index);
    write_reg(dev, QUEUE_NUM, queue.size.into());
    let halves = [
        (QUEUE_DESC_LOW, QUEUE_DESC_HIGH, queue.desc_table.0),
        (QUEUE_AVAIL_LOW, QUEUE_AVAIL_HIGH, queue.avail_ring.0),
        (QUEUE_USED_LOW, QUEUE_USED_HIGH, queue.used_ring.0),
    ];
    for (low, high, addr) in halves {
        write_reg(dev, low, addr as u32);
        write_reg(dev, high, (addr >> 32) as u32);
    }
    write_reg(dev, QUEUE_READY, 1);
}

/// The whole init sequence: negotiate `features`, set up `queues` in order, set `DRIVER_OK`.
/// Returns the final status.
pub fn init_device(dev: &mut dyn BusDevice, features: u64, queues: &[&MockQueue]) -> u32 {
    use regs::*;
    negotiate(dev, features);
    for (index, queue) in queues.iter().enumerate() {
        setup_queue(dev, index as u32, queue);
    }
    let status = read_reg(dev, STATUS);
    write_reg(dev, STATUS, status | DRIVER_OK);
    read_reg(dev, STATUS)
}

/// Notifies queue `index` through the QueueNotify register.
pub fn notify(dev: &mut dyn BusDevice, index: u32) {
    write_reg(dev, QUEUE_NOTIFY_OFFSET, index);
}
