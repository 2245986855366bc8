//! Device emulation on the host, with no guest: requests written by the mock virtio driver
//! (`zygote_devices::virtio::testing`) and pushed through `MmioTransport::queue_notify`, each
//! beside a floor of the copy or syscalls the device cannot avoid.
//!
//! - `virtio_mock_blk/read_4k`: a virtio-blk IN request (header, 4 KiB data, status) against an
//!   in-memory disk; floor: the same 4 KiB read from the disk and copied into guest memory.
//! - `virtio_mock_net/tx_1514`: a 1514-byte frame (after its 12-byte header) through the
//!   in-process packet backend, received by the host end each time; floor: the same frame sent
//!   on a bare socket pair and received.
//!
//! Each bench writes its descriptor chain once and republishes the same head every iteration:
//! the device has completed the chain before it is made available again, as a driver recycling
//! its descriptors would.

use std::io;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vm_memory::{Bytes, GuestAddress};
use zygote_devices::virtio::block::{Block, BlockBackend, QUEUE_SIZE as BLK_QUEUE_SIZE};
use zygote_devices::virtio::mmio::MmioTransport;
use zygote_devices::virtio::net::{
    Net, NetBackend, NetConfig, PacketBackend, PacketEndpoint, NET_HDR_LEN,
    QUEUE_SIZE as NET_QUEUE_SIZE, TX_QUEUE,
};
use zygote_devices::virtio::testing::{
    counting_interrupt, guest_memory, init_device, regs, Arena, Desc, MockQueue,
};
use zygote_devices::virtio::{Memory, VirtioDevice};

const DISK_BYTES: usize = 1 << 20;
const READ_LEN: u32 = 4096;
const FRAME_LEN: usize = 1514;
/// `VIRTIO_BLK_T_IN`.
const BLK_T_IN: u32 = 0;

/// A disk in a `Vec`, so the bench measures the device and not the host's page cache.
struct MemDisk(Vec<u8>);

impl MemDisk {
    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        if end > self.0.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(start..end)
    }
}

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let range = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.0[range]);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let range = self.range(offset, buf.len())?;
        self.0[range].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Negotiates everything `transport`'s device offers and sets up `queues`.
fn activate<D: VirtioDevice>(transport: &mut MmioTransport<D>, queues: &[&MockQueue]) {
    let features = transport.device().features();
    let status = init_device(transport, features, queues);
    assert_ne!(status & regs::DRIVER_OK, 0, "device refused DRIVER_OK");
}

/// A block device with one 4 KiB read request written into its queue.
struct BlkRig {
    mem: Memory,
    transport: MmioTransport<Block>,
    queue: MockQueue,
    head: u16,
    data: u64,
    status: u64,
}

impl BlkRig {
    fn new() -> Self {
        let mem = guest_memory();
        let disk: Vec<u8> = (0..DISK_BYTES).map(|i| (i % 251) as u8).collect();
        let block = Block::new(Box::new(MemDisk(disk)), false, "bench").unwrap();
        let mut transport = MmioTransport::new(block, mem.clone(), counting_interrupt()).unwrap();
        let mut queue = MockQueue::new(&mem, GuestAddress(0x1_0000), BLK_QUEUE_SIZE);
        activate(&mut transport, &[&queue]);

        let mut arena = Arena::default();
        let header = arena.alloc(16);
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&BLK_T_IN.to_le_bytes());
        raw[8..16].copy_from_slice(&8u64.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(header)).unwrap();
        let data = arena.alloc(READ_LEN.into());
        let status = arena.alloc(1);
        let chain = [
            Desc::readable(header, 16),
            Desc::writable(data, READ_LEN),
            Desc::writable(status, 1),
        ];
        let head = queue.add_chain(&mem, &chain);
        let mut rig = Self {
            mem,
            transport,
            queue,
            head,
            data,
            status,
        };
        rig.complete();
        let mut got = vec![0u8; READ_LEN as usize];
        rig.mem.read_slice(&mut got, GuestAddress(data)).unwrap();
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, &b)| b == ((4096 + i) % 251) as u8));
        rig
    }

    /// Notifies the device of the chain already available and takes its completion.
    fn complete(&mut self) {
        self.transport.queue_notify(0);
        let used = self.queue.next_used(&self.mem);
        assert_eq!(used, Some((self.head.into(), READ_LEN + 1)));
        let status: u8 = self.mem.read_obj(GuestAddress(self.status)).unwrap();
        assert_eq!(status, 0, "VIRTIO_BLK_S_OK");
    }

    fn read_4k(&mut self) {
        self.queue.publish(&self.mem, self.head);
        self.complete();
    }
}

fn blk(c: &mut Criterion) {
    let mut group = c.benchmark_group("virtio_mock_blk");
    group.throughput(Throughput::Bytes(READ_LEN.into()));

    let mut rig = BlkRig::new();
    let mut disk = MemDisk(vec![0x5a; DISK_BYTES]);
    let mut buf = vec![0u8; READ_LEN as usize];
    group.bench_function("read_4k_floor_copy", |b| {
        b.iter(|| {
            disk.read_at(&mut buf, 4096).unwrap();
            rig.mem.write_slice(&buf, GuestAddress(rig.data)).unwrap();
        })
    });
    group.bench_function("read_4k", |b| b.iter(|| rig.read_4k()));
    group.finish();
}

/// A net device with one transmit chain (header, 1514-byte frame) written into its tx queue.
struct NetRig {
    mem: Memory,
    transport: MmioTransport<Net>,
    tx: MockQueue,
    head: u16,
    host: PacketEndpoint,
    buf: Vec<u8>,
}

impl NetRig {
    fn new(frame: &[u8]) -> Self {
        let mem = guest_memory();
        let (backend, host) = PacketBackend::pair().unwrap();
        let net = Net::new(NetConfig::default(), Box::new(backend)).unwrap();
        let mut transport = MmioTransport::new(net, mem.clone(), counting_interrupt()).unwrap();
        let rx = MockQueue::new(&mem, GuestAddress(0x1_0000), NET_QUEUE_SIZE);
        let mut tx = MockQueue::new(&mem, GuestAddress(0x2_0000), NET_QUEUE_SIZE);
        activate(&mut transport, &[&rx, &tx]);

        let mut arena = Arena::default();
        let header = arena.alloc(NET_HDR_LEN as u64);
        mem.write_slice(&[0; NET_HDR_LEN], GuestAddress(header))
            .unwrap();
        let data = arena.alloc(frame.len() as u64);
        mem.write_slice(frame, GuestAddress(data)).unwrap();
        let chain = [
            Desc::readable(header, NET_HDR_LEN as u32),
            Desc::readable(data, frame.len() as u32),
        ];
        let head = tx.add_chain(&mem, &chain);
        let mut rig = Self {
            mem,
            transport,
            tx,
            head,
            host,
            buf: vec![0u8; 2048],
        };
        rig.complete();
        assert_eq!(&rig.buf[..frame.len()], frame);
        rig
    }

    /// Notifies the device of the chain already available, takes its completion and receives
    /// the frame on the host end, so the socket never fills.
    fn complete(&mut self) {
        self.transport.queue_notify(TX_QUEUE.into());
        assert_eq!(self.tx.next_used(&self.mem), Some((self.head.into(), 0)));
        let len = self
            .host
            .recv(&mut self.buf, Duration::from_secs(5))
            .unwrap();
        assert_eq!(len, Some(FRAME_LEN), "the frame reached the host end");
    }

    fn tx_frame(&mut self) {
        self.tx.publish(&self.mem, self.head);
        self.complete();
    }
}

fn net(c: &mut Criterion) {
    let mut group = c.benchmark_group("virtio_mock_net");
    group.throughput(Throughput::Elements(1));
    let frame: Vec<u8> = (0..FRAME_LEN).map(|i| i as u8).collect();

    let (mut floor, floor_host) = PacketBackend::pair().unwrap();
    let mut buf = vec![0u8; 2048];
    group.bench_function("tx_1514_floor_socketpair", |b| {
        b.iter(|| {
            floor.send(&frame).unwrap();
            floor_host.recv(&mut buf, Duration::from_secs(5)).unwrap()
        })
    });
    let mut rig = NetRig::new(&frame);
    group.bench_function("tx_1514", |b| b.iter(|| rig.tx_frame()));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = blk, net
}
criterion_main!(benches);
