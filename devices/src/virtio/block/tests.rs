//! virtio-blk through the mock driver: read, write, flush, get-id, read-only, overlays, state.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::*;
use crate::virtio::{Memory, VirtioDevice, VIRTIO_F_VERSION_1};

pub(super) const DISK_SECTORS: u64 = 64;

/// A block device behind its transport, driven by the mock driver.
pub(super) struct Harness {
    pub mem: Memory,
    pub transport: MmioTransport<Block>,
    pub queue: MockQueue,
    pub arena: Arena,
    pub irq: Arc<CountingInterrupt>,
    pub image: TempFile,
}

/// A disk image of [`DISK_SECTORS`] sectors where byte `i` holds `i % 251`.
pub(super) fn image() -> TempFile {
    let tmp = TempFile::new().unwrap();
    let contents: Vec<u8> = (0..DISK_SECTORS * SECTOR_SIZE)
        .map(|i| (i % 251) as u8)
        .collect();
    tmp.as_file().write_all_at(&contents, 0).unwrap();
    tmp
}

pub(super) fn harness_with(
    image: TempFile,
    disk: Box<dyn BlockBackend>,
    read_only: bool,
) -> Harness {
    harness_of(image, Block::new(disk, read_only, "zygote-disk").unwrap())
}

/// `block` behind a new transport, brought up by the mock driver.
pub(super) fn harness_of(image: TempFile, block: Block) -> Harness {
    let mem = guest_memory();
    let irq = counting_interrupt();
    let mut transport = MmioTransport::new(block, mem.clone(), irq.clone()).unwrap();
    let queue = MockQueue::new(&mem, GuestAddress(0x1_0000), QUEUE_SIZE);
    let features = transport.device().features();
    let status = init_device(&mut transport, features, &[&queue]);
    assert_eq!(status & regs::DRIVER_OK, regs::DRIVER_OK);
    Harness {
        mem,
        transport,
        queue,
        arena: Arena::default(),
        irq,
        image,
    }
}

pub(super) fn harness(read_only: bool) -> Harness {
    let image = image();
    let file = File::options()
        .read(true)
        .write(!read_only)
        .open(image.as_path())
        .unwrap();
    let disk = Box::new(RawFile::new(file).unwrap());
    harness_with(image, disk, read_only)
}

impl Harness {
    /// A request header in guest memory.
    pub fn header(&mut self, kind: u32, sector: u64) -> u64 {
        let addr = self.arena.alloc(16);
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(addr)).unwrap();
        addr
    }

    /// A status byte preset to 0xff, so a written status is visible.
    pub fn status_byte(&mut self) -> u64 {
        let addr = self.arena.alloc(1);
        self.mem.write_obj(0xffu8, GuestAddress(addr)).unwrap();
        addr
    }

    /// Submits a chain, notifies, and returns the used element.
    pub fn submit(&mut self, descs: &[Desc]) -> (u32, u32) {
        let head = self.queue.add_chain(&self.mem, descs);
        notify(&mut self.transport, 0);
        let used = self.queue.next_used(&self.mem).expect("request completed");
        assert_eq!(used.0, u32::from(head));
        used
    }

    /// A full request: header, one data buffer (`data_writable` says its direction), status.
    pub fn request(&mut self, kind: u32, sector: u64, data: Option<(u64, u32, bool)>) -> (u8, u32) {
        let header = self.header(kind, sector);
        let status = self.status_byte();
        let mut descs = vec![Desc::readable(header, 16)];
        if let Some((addr, len, writable)) = data {
            descs.push(if writable {
                Desc::writable(addr, len)
            } else {
                Desc::readable(addr, len)
            });
        }
        descs.push(Desc::writable(status, 1));
        let (_, used_len) = self.submit(&descs);
        (self.read_status(status), used_len)
    }

    pub fn read_status(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    pub fn read(&mut self, sector: u64, len: u32) -> (u8, Vec<u8>) {
        let buf = self.arena.alloc(len.into());
        let (status, _) = self.request(VIRTIO_BLK_T_IN, sector, Some((buf, len, true)));
        let mut out = vec![0u8; len as usize];
        self.mem.read_slice(&mut out, GuestAddress(buf)).unwrap();
        (status, out)
    }

    pub fn write(&mut self, sector: u64, data: &[u8]) -> u8 {
        let buf = self.arena.alloc(data.len() as u64);
        self.mem.write_slice(data, GuestAddress(buf)).unwrap();
        let len = data.len() as u32;
        self.request(VIRTIO_BLK_T_OUT, sector, Some((buf, len, false)))
            .0
    }

    pub fn needs_reset(&mut self) -> bool {
        read_reg(&mut self.transport, regs::STATUS) & regs::NEEDS_RESET != 0
    }

    /// Resets the device and brings it up again with a fresh queue.
    pub fn reinit(&mut self) {
        self.queue = MockQueue::new(&self.mem, GuestAddress(0x1_0000), QUEUE_SIZE);
        let features = self.transport.device().features();
        init_device(&mut self.transport, features, &[&self.queue]);
    }
}

pub(super) fn expected(sector: u64, len: usize) -> Vec<u8> {
    let start = sector * SECTOR_SIZE;
    (start..start + len as u64)
        .map(|i| (i % 251) as u8)
        .collect()
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn config_space_and_features() {
    let mut h = harness(false);
    let mut capacity = [0u8; 8];
    crate::BusDevice::read(&mut h.transport, regs::CONFIG, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), DISK_SECTORS);
    let features = h.transport.device().features();
    assert_ne!(features & VIRTIO_F_VERSION_1, 0);
    assert_ne!(features & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(
        harness(true).transport.device().features() & (1 << VIRTIO_BLK_F_RO),
        0
    );
}

#[test]
fn read_write_flush_round_trip_on_a_file() {
    let mut h = harness(false);
    let (status, data) = h.read(3, 1024);
    assert_eq!((status, data), (OK, expected(3, 1024)));
    assert!(h.irq.count() > 0);

    let pattern = vec![0x5a; 2048];
    assert_eq!(h.write(10, &pattern), OK);
    assert_eq!(h.read(10, 2048), (OK, pattern.clone()));
    assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, None), (OK, 1));
    let on_disk = std::fs::read(h.image.as_path()).unwrap();
    let at = (10 * SECTOR_SIZE) as usize;
    assert_eq!(&on_disk[at..at + 2048], &pattern[..]);
    // The last sector is reachable.
    assert_eq!(h.read(DISK_SECTORS - 1, 512).0, OK);
}

#[test]
fn get_id_returns_the_id_string() {
    let mut h = harness(false);
    let buf = h.arena.alloc(20);
    let (status, used) = h.request(VIRTIO_BLK_T_GET_ID, 0, Some((buf, 20, true)));
    assert_eq!((status, used), (OK, 21));
    let mut id = [0u8; 20];
    h.mem.read_slice(&mut id, GuestAddress(buf)).unwrap();
    assert_eq!(&id[..11], b"zygote-disk");
    assert_eq!(&id[11..], &[0; 9]);
}

#[test]
fn read_only_disk_rejects_writes_with_ioerr() {
    let mut h = harness(true);
    assert_eq!(h.write(0, &[1; 512]), IOERR);
    assert_eq!(h.read(0, 512), (OK, expected(0, 512)));
    assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, None).0, OK);
}

#[test]
fn out_of_range_sectors_are_rejected() {
    let mut h = harness(false);
    assert_eq!(h.read(DISK_SECTORS, 512).0, IOERR);
    assert_eq!(h.read(DISK_SECTORS - 1, 1024).0, IOERR);
    assert_eq!(h.read(u64::MAX, 512).0, IOERR);
    assert_eq!(h.read(u64::MAX / 512 + 1, 512).0, IOERR);
    assert_eq!(h.write(DISK_SECTORS, &[0; 512]), IOERR);
    assert_eq!(h.read(0, 512).0, OK);
}

#[test]
fn overlay_leaves_the_base_file_unchanged() {
    let image = image();
    let before = std::fs::read(image.as_path()).unwrap();
    let base = RawFile::new(File::open(image.as_path()).unwrap()).unwrap();
    let mut h = harness_with(image, Box::new(Overlay::new(base)), false);
    assert_eq!(h.write(5, &[0xee; 1024]), OK);
    assert_eq!(h.read(5, 1024), (OK, vec![0xee; 1024]));
    assert_eq!(h.read(4, 512), (OK, expected(4, 512)));
    assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, None).0, OK);
    assert_eq!(std::fs::read(h.image.as_path()).unwrap(), before);
}

#[test]
fn file_overlay_leaves_the_base_file_unchanged() {
    let image = image();
    let before = std::fs::read(image.as_path()).unwrap();
    let base = RawFile::new(File::open(image.as_path()).unwrap()).unwrap();
    let (overlay, overlay_file) = super::overlay_file::over_temp_file(base);
    let disk = Box::new(overlay);
    let mut h = harness_with(image, disk, false);
    assert_eq!(h.write(5, &[0xee; 1024]), OK);
    assert_eq!(h.read(5, 1024), (OK, vec![0xee; 1024]));
    assert_eq!(h.read(4, 512), (OK, expected(4, 512)));
    assert_eq!(h.read(7, 512), (OK, expected(7, 512)));
    assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, None).0, OK);
    assert_eq!(std::fs::read(h.image.as_path()).unwrap(), before);
    let overlay = std::fs::read(overlay_file.as_path()).unwrap();
    assert_eq!(overlay.len(), before.len());
    assert_eq!(&overlay[5 * 512..7 * 512], &[0xee; 1024][..]);
}

#[test]
fn state_round_trips_with_the_transport() {
    let mut h = harness(false);
    assert_eq!(h.read(0, 512).0, OK);
    let device_state = h.transport.device().save();
    let transport_state = h.transport.save();
    assert_eq!(transport_state.queues[0].next_avail, 1);

    let file = File::options()
        .read(true)
        .write(true)
        .open(h.image.as_path())
        .unwrap();
    let disk = Box::new(RawFile::new(file).unwrap());
    let block = Block::restore(disk, &device_state).unwrap();
    assert_eq!(block.save(), device_state);
    let mut restored =
        MmioTransport::restore(block, h.mem.clone(), h.irq.clone(), &transport_state).unwrap();
    assert_eq!(restored.save(), transport_state);

    // The restored device keeps serving the same queue.
    h.transport = restored;
    assert_eq!(h.read(1, 512), (OK, expected(1, 512)));
    restored = h.transport;
    assert_eq!(restored.save().queues[0].next_used, 2);

    let small = Box::new(RawFile::new(TempFile::new().unwrap().into_file()).unwrap());
    assert!(matches!(
        Block::restore(small, &device_state),
        Err(BlockRestoreError::CapacityMismatch { .. })
    ));
}

#[test]
fn ids_longer_than_20_bytes_are_refused() {
    let disk = Box::new(RawFile::new(TempFile::new().unwrap().into_file()).unwrap());
    assert_eq!(
        Block::new(disk, false, "an-id-that-is-too-long").err(),
        Some(BlockError::IdTooLong(22))
    );
}

fn capacity(h: &mut Harness) -> u64 {
    let mut capacity = [0u8; 8];
    crate::BusDevice::read(&mut h.transport, regs::CONFIG, &mut capacity);
    u64::from_le_bytes(capacity)
}

/// The three ways the VMM puts a disk over `file`: directly, under an in-memory overlay, and
/// under an overlay file (kept alive in the returned `TempFile`).
fn every_mode(open: impl Fn() -> File) -> Vec<(Box<dyn BlockBackend>, Option<TempFile>)> {
    let raw = || RawFile::new(open()).unwrap();
    let (file_overlay, cow) = super::overlay_file::over_temp_file(raw());
    vec![
        (Box::new(raw()), None),
        (Box::new(Overlay::new(raw())), None),
        (Box::new(file_overlay), Some(cow)),
    ]
}

#[test]
fn a_block_device_disk_has_the_device_capacity_in_every_mode() {
    let dev = super::testing::LoopDevice::over_pattern("blk-modes", (DISK_SECTORS * 512) as usize);
    for (disk, _cow) in every_mode(|| dev.open()) {
        let mut h = harness_with(image(), disk, false);
        assert_eq!(capacity(&mut h), DISK_SECTORS);
        assert_eq!(h.read(0, 1024), (OK, expected(0, 1024)));
        assert_eq!(
            h.read(DISK_SECTORS - 1, 512),
            (OK, expected(DISK_SECTORS - 1, 512))
        );
        assert_eq!(h.read(DISK_SECTORS, 512).0, IOERR);
    }
}

#[test]
fn a_size_that_is_not_a_multiple_of_512_rounds_down_and_its_tail_is_never_touched() {
    let len = DISK_SECTORS * SECTOR_SIZE + 300;
    let image = TempFile::new().unwrap();
    let contents: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    image.as_file().write_all_at(&contents, 0).unwrap();
    let open = || {
        File::options()
            .read(true)
            .write(true)
            .open(image.as_path())
            .unwrap()
    };
    for (disk, _cow) in every_mode(open) {
        let mut h = harness_with(TempFile::new().unwrap(), disk, false);
        assert_eq!(capacity(&mut h), DISK_SECTORS);
        assert_eq!(h.read(DISK_SECTORS, 512).0, IOERR);
        assert_eq!(h.read(DISK_SECTORS - 1, 1024).0, IOERR);
        assert_eq!(h.write(DISK_SECTORS, &[0; 512]), IOERR);
        assert_eq!(h.write(DISK_SECTORS - 1, &[0xab; 512]), OK);
        assert_eq!(h.read(DISK_SECTORS - 1, 512), (OK, vec![0xab; 512]));
    }
    // The direct disk wrote its last whole sector; the 300 bytes after it were never touched.
    let after = std::fs::read(image.as_path()).unwrap();
    let tail = (DISK_SECTORS * SECTOR_SIZE) as usize;
    assert_eq!(after.len() as u64, len);
    assert_eq!(after[tail - 512..tail], [0xab; 512]);
    assert_eq!(after[tail..], contents[tail..]);
}
