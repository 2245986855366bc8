//! The virtio-blk device: config space, features, and the request queue.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_S_OK,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::Bytes;

use super::request::{self, Request};
use super::{
    fork_disk, BlockBackend, BlockForkError, ID_BYTES, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX, SIZE_MAX,
};
use crate::virtio::queue::Pass;
use crate::virtio::{
    collect_chain, read_config_bytes, ActivateError, Activation, Active, Memory, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    /// The ID string is longer than the 20 bytes GET_ID returns.
    #[error("block device ID is {0} bytes, at most 20 allowed")]
    IdTooLong(usize),
}

/// A virtio-blk device.
pub struct Block {
    pub(super) disk: Box<dyn BlockBackend>,
    pub(super) read_only: bool,
    pub(super) id: [u8; ID_BYTES],
    /// Disk size in sectors, fixed when the device is created; a partial last sector is unused.
    pub(super) capacity: u64,
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
    /// The last pass stopped at its bound with requests still waiting.
    pending: bool,
}

/// `struct virtio_blk_config` up to and including `blk_size`.
const CONFIG_LEN: usize = 24;

impl Block {
    /// A block device over `disk`; `id` (at most 20 bytes) is what GET_ID returns.
    pub fn new(disk: Box<dyn BlockBackend>, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let bytes = id.as_bytes();
        let mut padded = [0u8; ID_BYTES];
        padded
            .get_mut(..bytes.len())
            .ok_or(BlockError::IdTooLong(bytes.len()))?
            .copy_from_slice(bytes);
        Ok(Self::with_id(disk, read_only, padded))
    }

    pub(super) fn with_id(
        disk: Box<dyn BlockBackend>,
        read_only: bool,
        id: [u8; ID_BYTES],
    ) -> Self {
        let capacity = disk.size() / SECTOR_SIZE;
        Self {
            disk,
            read_only,
            id,
            capacity,
            config: config_space(capacity),
            active: None,
            pending: false,
        }
    }

    /// Disk size in 512-byte sectors, as the driver sees it.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Forks the device's disk ([`fork_disk`]) and returns the child's device: the same ID,
    /// capacity and read-only flag, over a copy-on-write overlay of the disk as it is now,
    /// and inactive (restoring the parent's transport state onto it reactivates it). This
    /// device continues over an overlay of its own: neither sees the other's later writes.
    /// Call it while the VM is paused; requests run under the transport's lock, so none is
    /// half done then.
    ///
    /// A writable disk with no overlay stops writing its image here: the image becomes the
    /// read-only bottom layer, and this device's later writes go to memory.
    ///
    /// # Errors
    /// [`BlockForkError::Unsupported`] if the backend cannot be frozen; this device is then
    /// unchanged.
    pub fn fork(&mut self) -> Result<Block, BlockForkError> {
        let child = fork_disk(&mut self.disk, self.read_only)?;
        Ok(Self::with_id(child, self.read_only, self.id))
    }

    /// The disk's overlay as plain data ([`BlockBackend::save_overlay`]).
    ///
    /// # Errors
    /// [`OverlaySaveError`](super::OverlaySaveError) if a forked disk's layers cannot be read.
    pub fn save_overlay(&self) -> Result<Option<super::OverlayState>, super::OverlaySaveError> {
        self.disk.save_overlay()
    }

    /// Serves the requests the driver made available, at most a queue's worth (see
    /// [`VirtioDevice::has_pending_work`]), then interrupts the driver if it wants.
    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.queues.first_mut() else {
            return;
        };
        let (mem, interrupt) = (&active.memory, &active.interrupt);
        let mut pass = Pass::new(queue);
        while let Some(chain) = pass.pop(queue, mem, interrupt) {
            let head = chain.head_index();
            let used_len = serve(
                mem,
                chain,
                self.disk.as_mut(),
                self.read_only,
                &self.id,
                self.capacity,
            );
            let used_len = used_len.unwrap_or_else(|| {
                let _ = interrupt.signal_needs_reset();
                0
            });
            if !pass.add_used(queue, mem, interrupt, head, used_len) {
                break;
            }
        }
        self.pending = pass.finish(queue, mem, interrupt);
    }
}

/// Serves one chain; returns the bytes written to it, or `None` when it has no usable status
/// byte (malformed chain) and so cannot be answered.
fn serve(
    mem: &Memory,
    chain: DescriptorChain<&Memory>,
    disk: &mut dyn BlockBackend,
    read_only: bool,
    id: &[u8; ID_BYTES],
    capacity: u64,
) -> Option<u32> {
    let buffers = collect_chain(chain).ok()?;
    let Request { status, command } = request::parse(mem, &buffers, capacity)?;
    let (code, written) = match command.and_then(|c| request::execute(&c, mem, disk, read_only, id))
    {
        Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
        Err(e) => (e.status(), 0),
    };
    mem.write_obj(code, status).ok()?;
    Some(written.saturating_add(1))
}

/// The config space: capacity, size_max, seg_max, geometry (zero) and blk_size.
fn config_space(capacity: u64) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    config[0..8].copy_from_slice(&capacity.to_le_bytes());
    config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
    config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    config
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only {
            1 << VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field we expose is read-only.
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation.into_active(1)?);
        Ok(())
    }

    fn set_memory(&mut self, memory: Memory) {
        if let Some(active) = self.active.as_mut() {
            active.memory = memory;
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = false;
    }

    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| a.queues.as_slice())
    }

    fn queue_notify(&mut self, _index: u16) {
        self.process_queue();
    }

    fn has_pending_work(&self) -> bool {
        self.pending
    }

    fn process_pending_work(&mut self) {
        self.process_queue();
    }
}
