//! Register offsets of the virtio-mmio register file (spec §4.2.2, table "MMIO Device Register
//! Layout") and the constant values it reports.

use virtio_bindings::virtio_mmio as regs;

pub(super) const MAGIC_VALUE: u64 = regs::VIRTIO_MMIO_MAGIC_VALUE as u64;
pub(super) const VERSION: u64 = regs::VIRTIO_MMIO_VERSION as u64;
pub(super) const DEVICE_ID: u64 = regs::VIRTIO_MMIO_DEVICE_ID as u64;
pub(super) const VENDOR_ID: u64 = regs::VIRTIO_MMIO_VENDOR_ID as u64;
pub(super) const DEVICE_FEATURES: u64 = regs::VIRTIO_MMIO_DEVICE_FEATURES as u64;
pub(super) const DEVICE_FEATURES_SEL: u64 = regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
pub(super) const DRIVER_FEATURES: u64 = regs::VIRTIO_MMIO_DRIVER_FEATURES as u64;
pub(super) const DRIVER_FEATURES_SEL: u64 = regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
pub(super) const QUEUE_SEL: u64 = regs::VIRTIO_MMIO_QUEUE_SEL as u64;
pub(super) const QUEUE_NUM_MAX: u64 = regs::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
pub(super) const QUEUE_NUM: u64 = regs::VIRTIO_MMIO_QUEUE_NUM as u64;
pub(super) const QUEUE_READY: u64 = regs::VIRTIO_MMIO_QUEUE_READY as u64;
/// Offset of the QueueNotify register, where the VMM registers a queue's ioeventfd.
pub const QUEUE_NOTIFY_OFFSET: u64 = regs::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
pub(super) const INTERRUPT_STATUS: u64 = regs::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
pub(super) const INTERRUPT_ACK: u64 = regs::VIRTIO_MMIO_INTERRUPT_ACK as u64;
pub(super) const STATUS: u64 = regs::VIRTIO_MMIO_STATUS as u64;
pub(super) const QUEUE_DESC_LOW: u64 = regs::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
pub(super) const QUEUE_DESC_HIGH: u64 = regs::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
pub(super) const QUEUE_AVAIL_LOW: u64 = regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
pub(super) const QUEUE_AVAIL_HIGH: u64 = regs::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
pub(super) const QUEUE_USED_LOW: u64 = regs::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
pub(super) const QUEUE_USED_HIGH: u64 = regs::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
pub(super) const SHM_LEN_LOW: u64 = regs::VIRTIO_MMIO_SHM_LEN_LOW as u64;
pub(super) const SHM_BASE_HIGH: u64 = regs::VIRTIO_MMIO_SHM_BASE_HIGH as u64;
pub(super) const CONFIG_GENERATION: u64 = regs::VIRTIO_MMIO_CONFIG_GENERATION as u64;
/// Start of the device-specific config space.
pub(super) const CONFIG: u64 = regs::VIRTIO_MMIO_CONFIG as u64;

/// "virt" in little endian.
pub(super) const MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) virtio-mmio version.
pub(super) const MMIO_VERSION: u32 = 2;
/// Zygote's vendor ID: "ZYGT" in little endian.
pub(super) const ZYGOTE_VENDOR: u32 = u32::from_le_bytes(*b"ZYGT");
