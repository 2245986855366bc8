//! What the fuzz targets share: a reader over the fuzzer's bytes, an in-memory disk, and a
//! driver that turns bytes into queue operations against any virtio device through the mock
//! driver in `zygote_devices::virtio::testing`.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use zygote_devices::virtio::block::BlockBackend;
use zygote_devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use zygote_devices::virtio::testing::{
    counting_interrupt, guest_memory, init_device, write_reg, Desc, MockQueue, ARENA_START,
    MEM_SIZE,
};
use zygote_devices::virtio::{Memory, VirtioDevice, VIRTIO_F_VERSION_1};
use zygote_devices::BusDevice;

/// Takes values off the front of the fuzzer's input; missing bytes read as zero.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let bytes = self.bytes(N);
        out[..bytes.len()].copy_from_slice(bytes);
        out
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// An address: usually inside the buffer arena, sometimes anything at all.
    pub fn addr(&mut self) -> u64 {
        let raw = self.u64();
        if self.u8().is_multiple_of(8) {
            raw
        } else {
            ARENA_START + raw % (MEM_SIZE - ARENA_START)
        }
    }
}

/// A disk in memory.
pub struct MemDisk(pub Vec<u8>);

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let src = self
            .0
            .get(start..start + buf.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let dst = self
            .0
            .get_mut(start..start + buf.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        dst.copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Size of each queue the fuzz driver sets up.
const QUEUE_SIZE: u16 = 16;

/// A device behind its transport, initialised with one mock queue per device queue.
pub struct Rig<D: VirtioDevice> {
    /// The transport.
    pub dev: MmioTransport<D>,
    /// Guest memory.
    pub mem: Memory,
    /// The queues, in device order.
    pub queues: Vec<MockQueue>,
}

impl<D: VirtioDevice> Rig<D> {
    /// Puts `device` behind a transport and runs the driver's init sequence.
    pub fn new(device: D) -> Self {
        let mem = guest_memory();
        let count = device.queue_max_sizes().len();
        let mut dev = MmioTransport::new(device, mem.clone(), counting_interrupt())
            .expect("devices declare valid queues");
        let queues: Vec<MockQueue> = (0..count)
            .map(|i| MockQueue::new(&mem, GuestAddress(0x1000 + 0x1000 * i as u64), QUEUE_SIZE))
            .collect();
        let refs: Vec<&MockQueue> = queues.iter().collect();
        let features = VIRTIO_F_VERSION_1 | dev.device().features();
        init_device(&mut dev, features, &refs);
        Self { dev, mem, queues }
    }

    /// Turns `input` into driver actions: raw descriptors, buffer contents, avail ring
    /// entries and indices, notifications and backend events.
    pub fn drive(&mut self, input: &mut Input<'_>) {
        let queues = self.queues.len().max(1);
        while !input.is_empty() {
            let q = usize::from(input.u8()) % queues;
            match input.u8() % 6 {
                0 => {
                    let index = input.u16() % QUEUE_SIZE;
                    let desc = Desc {
                        addr: input.addr(),
                        len: input.u32() % 0x2_0000,
                        flags: input.u16() & 0x7,
                        next: input.u16() % (QUEUE_SIZE + 2),
                    };
                    self.queues[q].write_desc(&self.mem, index, desc);
                }
                1 => {
                    let head = input.u16() % (QUEUE_SIZE + 2);
                    self.queues[q].publish(&self.mem, head);
                }
                2 => {
                    let idx = input.u16();
                    self.queues[q].set_avail_idx(&self.mem, idx);
                }
                3 => write_reg(&mut self.dev, QUEUE_NOTIFY_OFFSET, q as u32),
                4 => {
                    let addr = ARENA_START + u64::from(input.u16()) * 16;
                    let len = usize::from(input.u8());
                    let bytes = input.bytes(len).to_vec();
                    let _ = self.mem.write_slice(&bytes, GuestAddress(addr));
                }
                _ => self.dev.device_mut().process_backend(),
            }
        }
    }
}

/// A register access on a transport: offset, width and value from the input.
pub fn register_access(dev: &mut dyn BusDevice, input: &mut Input<'_>) {
    let offset = u64::from(input.u16() % 0x200);
    let width = [1usize, 2, 4, 8][usize::from(input.u8() % 4)];
    if input.u8().is_multiple_of(2) {
        let mut data = vec![0u8; width];
        dev.read(offset, &mut data);
    } else {
        let value = input.u64().to_le_bytes();
        dev.write(offset, &value[..width]);
    }
}

/// A counting interrupt line, for targets that build transports themselves.
pub fn line() -> Arc<zygote_devices::virtio::testing::CountingInterrupt> {
    counting_interrupt()
}
