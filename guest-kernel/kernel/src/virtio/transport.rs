//! The virtio-mmio transport, modern interface (virtio 1.2 §4.2.2, version 2): probing,
//! the initialization sequence (§3.1.1), feature negotiation, queue setup and config reads.
//!
//! Every register access is a VM exit (~25 µs on the project's machines), so the drivers read
//! registers only at setup and on their slow paths.

use core::fmt;

use super::queue::Virtqueue;
use crate::arena::Arena;

const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
/// QueueNotify: the drivers write it through [`Virtqueue`].
pub const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 64;
const STATUS_FAILED: u32 = 128;

/// VIRTIO_F_VERSION_1: the modern interface, required.
pub const F_VERSION_1: u64 = 1 << 32;

/// Device IDs the guest has drivers for.
pub mod device_id {
    /// virtio-net.
    pub const NET: u32 = 1;
    /// virtio-blk.
    pub const BLOCK: u32 = 2;
    /// virtio-vsock.
    pub const VSOCK: u32 = 19;
}

/// What went wrong talking to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioError {
    /// The device does not offer features the driver needs (VERSION_1 among them).
    MissingFeatures(u64),
    /// The device cleared FEATURES_OK: it rejected the features the driver chose.
    FeaturesRejected,
    /// Queue `n` does not exist (QueueNumMax 0) or was already live.
    QueueUnavailable(u16),
    /// The guest's arena is exhausted.
    OutOfMemory,
    /// The device set DEVICE_NEEDS_RESET.
    NeedsReset,
    /// The device did not answer in time.
    Timeout,
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VirtioError::MissingFeatures(bits) => write!(f, "device lacks features {bits:#x}"),
            VirtioError::FeaturesRejected => f.write_str("device rejected the features"),
            VirtioError::QueueUnavailable(index) => write!(f, "queue {index} unavailable"),
            VirtioError::OutOfMemory => f.write_str("out of arena memory"),
            VirtioError::NeedsReset => f.write_str("device needs reset"),
            VirtioError::Timeout => f.write_str("device timed out"),
        }
    }
}

/// One virtio-mmio register window.
#[derive(Clone, Copy)]
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// The device at `base` and its device ID, if a modern virtio-mmio device answers there
    /// (DeviceID 0 is a placeholder with no device behind it).
    ///
    /// # Safety
    /// `base` must be the page-aligned base of a virtio-mmio register window (from the
    /// command line), identity-mapped and user-accessible.
    pub unsafe fn probe(base: u64) -> Option<(Mmio, u32)> {
        let mmio = Mmio { base };
        if mmio.read(MAGIC_VALUE) != MAGIC || mmio.read(VERSION) != 2 {
            return None;
        }
        match mmio.read(DEVICE_ID) {
            0 => None,
            id => Some((mmio, id)),
        }
    }

    fn read(&self, offset: u64) -> u32 {
        // SAFETY: `probe`'s caller vouched for the register window; offsets are registers in
        // it, 4-byte aligned. Volatile: each access is a device register access.
        unsafe { ((self.base + offset) as *const u32).read_volatile() }
    }

    fn write(&self, offset: u64, value: u32) {
        // SAFETY: as in `read`.
        unsafe { ((self.base + offset) as *mut u32).write_volatile(value) }
    }

    /// Address of a register, for the queues' notify pointer.
    pub fn register(&self, offset: u64) -> *mut u32 {
        (self.base + offset) as *mut u32
    }

    /// Resets the device, acknowledges it, negotiates features (VERSION_1 and `required` must
    /// be offered; `optional` are taken when offered) and sets FEATURES_OK. Returns the
    /// features in use. On failure the device is marked FAILED.
    pub fn begin(&self, required: u64, optional: u64) -> Result<u64, VirtioError> {
        self.write(STATUS, 0);
        // Reading back completes the reset (§4.2.3.1: the driver waits for 0).
        while self.read(STATUS) != 0 {
            core::hint::spin_loop();
        }
        let mut status = STATUS_ACKNOWLEDGE;
        self.write(STATUS, status);
        status |= STATUS_DRIVER;
        self.write(STATUS, status);

        self.write(DEVICE_FEATURES_SEL, 0);
        let low = self.read(DEVICE_FEATURES);
        self.write(DEVICE_FEATURES_SEL, 1);
        let high = self.read(DEVICE_FEATURES);
        let offered = u64::from(high) << 32 | u64::from(low);
        let required = required | F_VERSION_1;
        if offered & required != required {
            self.fail();
            return Err(VirtioError::MissingFeatures(required & !offered));
        }
        let chosen = required | (optional & offered);
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, chosen as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (chosen >> 32) as u32);

        status |= STATUS_FEATURES_OK;
        self.write(STATUS, status);
        if self.read(STATUS) & STATUS_FEATURES_OK == 0 {
            self.fail();
            return Err(VirtioError::FeaturesRejected);
        }
        Ok(chosen)
    }

    /// Sets up queue `index` with up to `max_size` entries in arena memory and makes it live.
    pub fn queue(
        &self,
        arena: &mut Arena,
        index: u16,
        max_size: u16,
    ) -> Result<Virtqueue, VirtioError> {
        self.write(QUEUE_SEL, u32::from(index));
        let device_max = self.read(QUEUE_NUM_MAX);
        if device_max == 0 || self.read(QUEUE_READY) != 0 {
            self.fail();
            return Err(VirtioError::QueueUnavailable(index));
        }
        // Split queues must be a power of two in size (virtio-queue checks it too).
        let limit = device_max.min(u32::from(max_size));
        let size = 1u16 << (31 - limit.leading_zeros());
        let Some(queue) = Virtqueue::new(arena, size, self.register(QUEUE_NOTIFY), index) else {
            self.fail();
            return Err(VirtioError::OutOfMemory);
        };
        let (desc, driver, device) = queue.addresses();
        self.write(QUEUE_NUM, u32::from(size));
        self.write(QUEUE_DESC_LOW, desc as u32);
        self.write(QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.write(QUEUE_DRIVER_LOW, driver as u32);
        self.write(QUEUE_DRIVER_HIGH, (driver >> 32) as u32);
        self.write(QUEUE_DEVICE_LOW, device as u32);
        self.write(QUEUE_DEVICE_HIGH, (device >> 32) as u32);
        self.write(QUEUE_READY, 1);
        Ok(queue)
    }

    /// Sets DRIVER_OK: the device is live.
    pub fn finish(&self) {
        let status = self.read(STATUS);
        self.write(STATUS, status | STATUS_DRIVER_OK);
    }

    /// Marks the device FAILED (the driver gave up on it).
    pub fn fail(&self) {
        let status = self.read(STATUS);
        self.write(STATUS, status | STATUS_FAILED);
    }

    /// Checks the device status (one VM exit): an error when it needs a reset.
    pub fn check(&self) -> Result<(), VirtioError> {
        match self.read(STATUS) & STATUS_NEEDS_RESET {
            0 => Ok(()),
            _ => Err(VirtioError::NeedsReset),
        }
    }

    /// A consistent read of device config (§4.2.2.2: retried while ConfigGeneration changes),
    /// `read` doing the accesses through [`Mmio::config_u8`] and [`Mmio::config_u32`].
    pub fn config<T>(&self, read: impl Fn(&Self) -> T) -> T {
        loop {
            let before = self.read(CONFIG_GENERATION);
            let value = read(self);
            if self.read(CONFIG_GENERATION) == before {
                return value;
            }
        }
    }

    /// An 8-bit config field.
    pub fn config_u8(&self, offset: u64) -> u8 {
        // SAFETY: as in `read`; config space follows the registers, 8-bit fields are read
        // 8 bits wide (§4.2.2.2).
        unsafe { ((self.base + CONFIG + offset) as *const u8).read_volatile() }
    }

    /// A 32-bit config field (or half of a 64-bit one), 4-byte aligned.
    pub fn config_u32(&self, offset: u64) -> u32 {
        self.read(CONFIG + offset)
    }

    /// A 64-bit config field, as two 32-bit reads (§4.2.2.2); call inside [`Mmio::config`].
    pub fn config_u64(&self, offset: u64) -> u64 {
        u64::from(self.config_u32(offset)) | u64::from(self.config_u32(offset + 4)) << 32
    }
}
