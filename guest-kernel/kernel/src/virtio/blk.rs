//! virtio-blk (virtio 1.2 §5.2), polled: one request in flight at a time.

mod hostile;

pub use hostile::BadRead;

use zygote_guest_proto::agent::{DISK_ID_LEN, SECTOR_SIZE};

use super::queue::{Buf, Virtqueue};
use super::transport::{Mmio, VirtioError};
use super::wait_used;
use crate::arena::Arena;
use crate::clock::Clock;

const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const S_UNSUPP: u8 = 2;
/// What the status byte holds until the device writes it.
const NO_STATUS: u8 = 0xff;

/// How long one request may take.
const REQUEST_TIMEOUT_MS: u64 = 30_000;

/// Why a disk request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkError {
    /// The sectors lie (partly) past the disk's capacity.
    OutOfRange,
    /// Writing to a read-only disk.
    ReadOnly,
    /// The device answered with an error status (1 = IOERR, 2 = UNSUPP, others).
    Status(u8),
    /// The transport failed (needs reset, timeout).
    Device(VirtioError),
}

/// A bound virtio-blk device.
pub struct Blk {
    mmio: Mmio,
    queue: Virtqueue,
    /// Capacity in 512-byte sectors (config offset 0).
    capacity: u64,
    read_only: bool,
    /// 16-byte request header and 1-byte status, in arena memory.
    header: *mut u8,
    status: *mut u8,
}

impl Blk {
    /// Initializes the device (features RO and FLUSH when offered, one request queue).
    pub fn new(mmio: Mmio, arena: &mut Arena) -> Result<Self, VirtioError> {
        let features = mmio.begin(0, F_RO | F_FLUSH)?;
        let queue = mmio.queue(arena, 0, 16)?;
        let header = arena.alloc(32, 16).ok_or(VirtioError::OutOfMemory)?;
        mmio.finish();
        let capacity = mmio.config(|m| m.config_u64(0));
        Ok(Blk {
            mmio,
            queue,
            capacity,
            read_only: features & F_RO != 0,
            header,
            // SAFETY: 16 < 32: the status byte lies in the same allocation.
            status: unsafe { header.add(16) },
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Reads `buf.len() / 512` sectors at `sector` into `buf` (a multiple of 512 bytes).
    pub fn read(&mut self, clock: &Clock, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.check_range(sector, buf.len())?;
        let data = Buf::write(buf.as_mut_ptr(), buf.len());
        self.request(clock, T_IN, sector, Some(data)).map(|_| ())
    }

    /// Writes `data` (a multiple of 512 bytes) at `sector`.
    pub fn write(&mut self, clock: &Clock, sector: u64, data: &[u8]) -> Result<(), BlkError> {
        if self.read_only {
            return Err(BlkError::ReadOnly);
        }
        self.check_range(sector, data.len())?;
        let data = Buf::read(data.as_ptr(), data.len());
        self.request(clock, T_OUT, sector, Some(data)).map(|_| ())
    }

    /// Flushes the device's write cache (a no-op success when it has no FLUSH feature: then
    /// writes are durable when completed, §5.2.6.2).
    pub fn flush(&mut self, clock: &Clock) -> Result<(), BlkError> {
        match self.request(clock, T_FLUSH, 0, None) {
            Err(BlkError::Status(S_UNSUPP)) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The device ID string (20 bytes, NUL-padded).
    pub fn id(&mut self, clock: &Clock) -> Result<[u8; DISK_ID_LEN], BlkError> {
        let mut id = [0u8; DISK_ID_LEN];
        let data = Buf::write(id.as_mut_ptr(), id.len());
        self.request(clock, T_GET_ID, 0, Some(data))?;
        Ok(id)
    }

    fn check_range(&self, sector: u64, len: usize) -> Result<(), BlkError> {
        let sectors = (len / SECTOR_SIZE) as u64;
        match sector.checked_add(sectors) {
            Some(end) if end <= self.capacity && len % SECTOR_SIZE == 0 => Ok(()),
            _ => Err(BlkError::OutOfRange),
        }
    }

    /// Sends one request (header, optional data, status) and polls for its completion.
    fn request(
        &mut self,
        clock: &Clock,
        kind: u32,
        sector: u64,
        data: Option<Buf>,
    ) -> Result<u32, BlkError> {
        self.write_header(kind, sector);
        let header = Buf::read(self.header, 16);
        let status = Buf::write(self.status, 1);
        let head = match data {
            Some(data) => self.queue.add(&[header, data, status]),
            None => self.queue.add(&[header, status]),
        };
        // Never fails: the previous request's descriptors all came back.
        let head = head.ok_or(BlkError::Device(VirtioError::OutOfMemory))?;
        self.queue.notify();
        let used = wait_used(&mut self.queue, &self.mmio, clock, REQUEST_TIMEOUT_MS, head)
            .map_err(BlkError::Device)?;
        // SAFETY: the device has finished with the chain; the status byte is ours again.
        match unsafe { self.status.read_volatile() } {
            S_OK => Ok(used.len),
            status => Err(BlkError::Status(status)),
        }
    }

    /// Fills in the request header and sets the status byte to 0xff (no status yet).
    fn write_header(&mut self, kind: u32, sector: u64) {
        // SAFETY: `header` is 32 bytes of arena memory only this driver uses; no request is in
        // flight (each one completes before the next), so the device is not reading it.
        unsafe {
            self.header.cast::<u32>().write_volatile(kind.to_le());
            self.header.add(4).cast::<u32>().write_volatile(0);
            self.header
                .add(8)
                .cast::<u64>()
                .write_volatile(sector.to_le());
            self.status.write_volatile(NO_STATUS);
        }
    }
}
