//! The virtio devices a VM can have, as the builder takes them, and their creation.

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use zygote_devices::virtio::block::{
    storage_kind, Block, BlockBackend, BlockError, FileOverlay, Overlay, OverlayState, RawFile,
    StorageKind,
};
use zygote_devices::virtio::mmio::MmioTransport;
use zygote_devices::virtio::net::{Net, NetBackend, NetError, PacketBackend, Tap, TapError};
use zygote_devices::virtio::vsock::{Vsock, VsockError};
use zygote_devices::virtio::Memory;
use zygote_devices::Bus;

pub use zygote_devices::virtio::net::{NetStatsSnapshot, PacketEndpoint};
pub use zygote_devices::virtio::vsock::VsockConfig;

use crate::virtio::{VirtioDevices, VirtioError};

/// A virtio-blk disk backed by a raw image: a regular file or a block device.
///
/// The disk's size is the image's size when the VM is built: a regular file's length, a block
/// device's size (`BLKGETSIZE64`). Its capacity is that size in 512-byte sectors, rounded down:
/// a tail of less than a sector (a regular file whose size is not a multiple of 512) is not
/// addressable and never read or written, as in Firecracker. The capacity then stays fixed; if
/// the image shrinks while the VM runs, bytes past its new end read as zeros, and sectors an
/// overlay holds whole never depend on the image at all.
///
/// # Forks
/// Forking a VM freezes its disk as it is: the child, and the parent from then on, each write
/// to a new in-memory overlay over the frozen contents, so neither sees the other's later
/// writes. **This changes the parent's disk**:
/// - with no overlay, the image stops being written at the first fork: it keeps what it held
///   then, and the parent's later writes (like every child's) go to memory only, lost when the
///   VM goes and not made durable by a flush;
/// - with [`BlockOverlay::File`], the parent stops writing the overlay file at the fork; its
///   later writes go to memory;
/// - with [`BlockOverlay::Memory`] or a read-only disk, nothing the parent can see changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// The raw image, a regular file or a block device.
    pub path: PathBuf,
    /// The guest may not write.
    pub read_only: bool,
    /// Where the guest's writes go instead of the image, which is then never modified; `None`
    /// writes to the image, until the VM's first fork (see "Forks" above).
    pub overlay: Option<BlockOverlay>,
    /// The device ID the guest reads (at most 20 bytes).
    pub id: String,
}

/// Where a copy-on-write disk keeps the guest's writes; the image is only read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockOverlay {
    /// In memory, 512-byte sector by sector; gone with the VM.
    Memory,
    /// In a sparse file the size of the image, 4 KiB block by 4 KiB block. The VMM creates the
    /// file, or truncates it if it exists; which blocks it holds is known only to the running
    /// VM, so the file alone is not a disk image. A block device may be named instead: it is
    /// used as it is (not emptied; it must hold at least the image's size).
    ///
    /// If the build fails after the file was created, the VMM removes the file it created. An
    /// existing file it truncated is left in place, emptied: the path, its owner, mode and links
    /// are the caller's, and its old contents were given up by naming it as an overlay.
    File(PathBuf),
}

impl BlockConfig {
    /// A writable disk on the image at `path`, with ID `zygote-disk`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            overlay: None,
            id: "zygote-disk".into(),
        }
    }

    /// Makes the disk read-only.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Sends the guest's writes to an in-memory overlay, leaving the image untouched.
    pub fn overlay(mut self) -> Self {
        self.overlay = Some(BlockOverlay::Memory);
        self
    }

    /// Sends the guest's writes to an overlay file at `path` (created, or truncated if it
    /// exists; see [`BlockOverlay::File`]), leaving the image untouched.
    pub fn overlay_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.overlay = Some(BlockOverlay::File(path.into()));
        self
    }
}

/// Where a virtio-net device's frames go.
pub enum NetBackendConfig {
    /// A TAP interface, opened (or created) by name.
    Tap(String),
    /// An in-process socket pair; the host program keeps the [`PacketEndpoint`].
    Packet(PacketBackend),
}

/// A virtio-net device.
pub struct NetConfig {
    /// Its MAC address; a locally administered default when `None`.
    pub mac: Option<[u8; 6]>,
    /// Where its frames go.
    pub backend: NetBackendConfig,
}

impl NetConfig {
    /// A device on the TAP interface `name`.
    pub fn tap(name: impl Into<String>) -> Self {
        Self {
            mac: None,
            backend: NetBackendConfig::Tap(name.into()),
        }
    }

    /// A device whose frames the host program exchanges through the returned endpoint.
    pub fn packet() -> std::io::Result<(Self, PacketEndpoint)> {
        let (backend, endpoint) = PacketBackend::pair()?;
        let config = Self {
            mac: None,
            backend: NetBackendConfig::Packet(backend),
        };
        Ok((config, endpoint))
    }

    /// Sets the MAC address.
    pub fn with_mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = Some(mac);
        self
    }
}

/// Errors from creating a VM's devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A disk image could not be opened.
    #[error("block: cannot open {path}: {source}")]
    BlockOpen {
        /// The image path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// An overlay file could not be created, truncated or sized.
    #[error("block: cannot create the overlay file {path}: {source}")]
    OverlayCreate {
        /// The overlay file path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The overlay file is the disk image itself (the same file under any name, the same block
    /// device under another node, or a loop device and the file behind it).
    #[error("block: the overlay file {overlay} is the disk image {image}; choose another path")]
    OverlayIsImage {
        /// The overlay file path.
        overlay: PathBuf,
        /// The image path.
        image: PathBuf,
    },
    /// A snapshot's overlay could not be rebuilt over the disk.
    #[error("block: cannot restore the overlay of {path}: {source}")]
    OverlayRestore {
        /// The image path.
        path: PathBuf,
        /// What was wrong with the saved overlay.
        source: zygote_devices::virtio::block::OverlayRestoreError,
    },
    /// The snapshot's disk had an overlay of another kind than the restore gives it.
    #[error("block: the snapshot of {path} saved an overlay the restore's BlockConfig lacks (use .overlay() for an in-memory one, .overlay_file(same path) for a file one)")]
    OverlayKindMismatch {
        /// The image path.
        path: PathBuf,
    },
    /// The block device refused its configuration.
    #[error("block: {0}")]
    Block(#[from] BlockError),
    /// The TAP interface could not be opened.
    #[error("net: {0}")]
    Tap(#[from] TapError),
    /// The net device refused its configuration.
    #[error("net: {0}")]
    Net(#[from] NetError),
    /// The vsock device could not be created.
    #[error("vsock: {0}")]
    Vsock(#[from] VsockError),
    /// The device could not be placed in the VM.
    #[error(transparent)]
    Virtio(#[from] VirtioError),
}

/// Every device configuration of a VM.
#[derive(Default)]
pub struct DeviceConfigs {
    pub(crate) blocks: Vec<BlockConfig>,
    pub(crate) nets: Vec<NetConfig>,
    pub(crate) vsock: Option<VsockConfig>,
}

/// Handles on the VM's devices: what the host program may want after the VM is built, and
/// what a snapshot saves and a restore rebuilds (in attach order: disks, NICs, vsock).
#[derive(Default)]
pub struct DeviceHandles {
    pub(crate) blocks: Vec<Arc<Mutex<MmioTransport<Block>>>>,
    pub(crate) nets: Vec<Arc<Mutex<MmioTransport<Net>>>>,
    pub(crate) vsock_device: Option<Arc<Mutex<MmioTransport<Vsock>>>>,
    pub(crate) vsock: Option<VsockConfig>,
}

impl DeviceHandles {
    /// Moves every virtio device to `memory`, a new mapping of the same guest memory. The VM
    /// must be paused.
    pub(crate) fn set_memory(&self, memory: &Memory) {
        fn one<D: zygote_devices::virtio::VirtioDevice>(
            transport: &Mutex<MmioTransport<D>>,
            memory: &Memory,
        ) {
            let mut transport = transport.lock().unwrap_or_else(|p| p.into_inner());
            transport.set_memory(memory.clone());
        }
        self.blocks.iter().for_each(|t| one(t, memory));
        self.nets.iter().for_each(|t| one(t, memory));
        self.vsock_device.iter().for_each(|t| one(t, memory));
    }

    /// The vsock device's CID and Unix socket path, if the VM has one.
    pub fn vsock_config(&self) -> Option<&VsockConfig> {
        self.vsock.as_ref()
    }

    /// Frame and byte counters of net device `index` (in the order they were added).
    pub fn net_stats(&self, index: usize) -> Option<NetStatsSnapshot> {
        let net = self.nets.get(index)?;
        let transport = net.lock().unwrap_or_else(|p| p.into_inner());
        Some(transport.device().stats().snapshot())
    }
}

/// Creates every configured device and attaches it. Overlay files it creates are recorded in
/// `created`, which removes them again unless the caller keeps them.
pub(crate) fn attach_all(
    configs: DeviceConfigs,
    vm: &VmFd,
    mmio: &mut Bus,
    memory: &Memory,
    devices: &mut VirtioDevices,
    created: &mut CreatedFiles,
) -> Result<DeviceHandles, DeviceError> {
    let mut handles = DeviceHandles::default();
    for config in configs.blocks {
        handles
            .blocks
            .push(devices.attach(vm, mmio, memory, block(&config, created)?)?);
    }
    for config in configs.nets {
        handles
            .nets
            .push(devices.attach(vm, mmio, memory, net(config)?)?);
    }
    if let Some(config) = configs.vsock {
        handles.vsock_device = Some(devices.attach(vm, mmio, memory, Vsock::new(&config)?)?);
        handles.vsock = Some(config);
    }
    Ok(handles)
}

/// Refuses a disk image that is neither a regular file nor a block device: opening a FIFO
/// would block the VMM, and nothing else can hold sectors.
fn check_image_type(path: &Path) -> std::io::Result<()> {
    let kind = std::fs::metadata(path)?.file_type();
    if kind.is_file() || kind.is_block_device() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ))
    }
}

pub(crate) fn block(
    config: &BlockConfig,
    created: &mut CreatedFiles,
) -> Result<Block, DeviceError> {
    let backend = block_backend(config, created)?;
    Ok(Block::new(backend, config.read_only, &config.id)?)
}

/// Opens a disk's image and its overlay, as `config` says; overlay files it creates are
/// recorded in `created`.
pub(crate) fn block_backend(
    config: &BlockConfig,
    created: &mut CreatedFiles,
) -> Result<Box<dyn BlockBackend>, DeviceError> {
    block_backend_with(config, created, None)
}

/// [`block_backend`], with the overlay rebuilt from `saved` (a snapshot's) instead of empty.
/// A saved in-memory overlay needs `config.overlay()`; a saved file overlay's bitmap needs
/// `config.overlay_file(path)` naming the same overlay file, which is then kept, not emptied.
pub(crate) fn block_backend_with(
    config: &BlockConfig,
    created: &mut CreatedFiles,
    saved: Option<&OverlayState>,
) -> Result<Box<dyn BlockBackend>, DeviceError> {
    check_image_type(&config.path).map_err(|source| DeviceError::BlockOpen {
        path: config.path.clone(),
        source,
    })?;
    let open_error = |source| DeviceError::BlockOpen {
        path: config.path.clone(),
        source,
    };
    let file = File::options()
        .read(true)
        .write(!config.read_only && config.overlay.is_none())
        .open(&config.path)
        .map_err(open_error)?;
    let image = file.metadata().map_err(open_error)?;
    let raw = RawFile::new(file).map_err(open_error)?;
    let restore_error = |source| DeviceError::OverlayRestore {
        path: config.path.clone(),
        source,
    };
    Ok(match (&config.overlay, saved) {
        (None, None) => Box::new(raw),
        (Some(BlockOverlay::Memory), None) => Box::new(Overlay::new(raw)),
        (Some(BlockOverlay::Memory), Some(OverlayState::Memory(state))) => {
            Box::new(Overlay::restore(raw, state).map_err(restore_error)?)
        }
        (Some(BlockOverlay::File(path)), Some(OverlayState::File(state))) => {
            let file = File::options()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|source| DeviceError::OverlayCreate {
                    path: path.clone(),
                    source,
                })?;
            Box::new(FileOverlay::restore(raw, file, state).map_err(restore_error)?)
        }
        (_, Some(_)) => {
            return Err(DeviceError::OverlayKindMismatch {
                path: config.path.clone(),
            })
        }
        (Some(BlockOverlay::File(path)), None) => {
            let overlay = overlay_file(path, &image, &config.path, created)?;
            Box::new(FileOverlay::new(raw, overlay).map_err(|source| {
                DeviceError::OverlayCreate {
                    path: path.clone(),
                    source,
                }
            })?)
        }
    })
}

/// Creates or opens the overlay file at `path` and empties it, refusing the image itself
/// (`image` is the image's metadata). A file it creates is recorded in `created`; an existing
/// regular file is truncated to 0 bytes; an existing block device is used as it is (it cannot
/// be emptied, and the overlay never reads a block it has not written).
fn overlay_file(
    path: &Path,
    image: &Metadata,
    image_path: &Path,
    created: &mut CreatedFiles,
) -> Result<File, DeviceError> {
    let create_error = |source| DeviceError::OverlayCreate {
        path: path.to_path_buf(),
        source,
    };
    let (file, new) = open_or_create(path).map_err(create_error)?;
    let ours = file.metadata().map_err(create_error)?;
    if new {
        created.record(path, &ours);
    }
    if same_storage(&ours, image) {
        return Err(DeviceError::OverlayIsImage {
            overlay: path.to_path_buf(),
            image: image_path.to_path_buf(),
        });
    }
    // Not truncated on open: the image must be told apart first, or truncating would wipe it.
    match storage_kind(&file).map_err(create_error)? {
        StorageKind::Regular => file.set_len(0).map_err(create_error)?,
        StorageKind::BlockDevice => {}
    }
    Ok(file)
}

/// Opens `path` for reading and writing, creating it if it does not exist; says whether this
/// call created the file at `path` itself. `O_EXCL` makes that exact: when `path` exists, even
/// as a dangling symbolic link, it is opened (a link's missing target is created through it,
/// but is not counted as created here, so it is never removed).
fn open_or_create(path: &Path) -> std::io::Result<(File, bool)> {
    let mut options = File::options();
    options.read(true).write(true);
    match options.clone().create_new(true).open(path) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok((options.create(true).open(path)?, false))
        }
        Err(e) => Err(e),
    }
}

/// Whether two open files are the same storage: the same inode, the same block device under
/// two device nodes, or a loop device and the file behind it.
fn same_storage(a: &Metadata, b: &Metadata) -> bool {
    let inode = |m: &Metadata| (m.dev(), m.ino());
    let device = |m: &Metadata| m.file_type().is_block_device().then(|| m.rdev());
    inode(a) == inode(b)
        || device(a).is_some_and(|r| device(b) == Some(r))
        || loop_backing(a).is_some_and(|id| id == inode(b))
        || loop_backing(b).is_some_and(|id| id == inode(a))
}

/// The (device, inode) of the file behind a loop device, from sysfs; `None` for anything else.
fn loop_backing(meta: &Metadata) -> Option<(u64, u64)> {
    if !meta.file_type().is_block_device() {
        return None;
    }
    let rdev = meta.rdev();
    // The glibc encoding of `dev_t`.
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    let sys = format!("/sys/dev/block/{major}:{minor}/loop/backing_file");
    let backing = std::fs::read_to_string(sys).ok()?;
    let backing = std::fs::metadata(backing.trim_end_matches('\n')).ok()?;
    Some((backing.dev(), backing.ino()))
}

/// Files a VM's build created (overlay files), removed again when this is dropped, unless
/// [`CreatedFiles::keep`] was called: a build that fails leaves behind nothing it created.
/// A file is removed only if its path still names the file that was created (same device and
/// inode), so a file someone put there since is left alone.
#[derive(Default)]
pub(crate) struct CreatedFiles {
    files: Vec<(PathBuf, (u64, u64))>,
}

impl CreatedFiles {
    fn record(&mut self, path: &Path, meta: &Metadata) {
        self.files
            .push((path.to_path_buf(), (meta.dev(), meta.ino())));
    }

    /// The build succeeded: the files stay.
    pub(crate) fn keep(mut self) {
        self.files.clear();
    }
}

impl Drop for CreatedFiles {
    fn drop(&mut self) {
        for (path, id) in self.files.drain(..) {
            let still_ours =
                std::fs::symlink_metadata(&path).is_ok_and(|meta| (meta.dev(), meta.ino()) == id);
            if still_ours {
                // Best effort: a failed build is being reported already.
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn net(config: NetConfig) -> Result<Net, DeviceError> {
    let backend = net_backend(config.backend)?;
    let mut net_config = zygote_devices::virtio::net::NetConfig::default();
    if let Some(mac) = config.mac {
        net_config.mac = mac;
    }
    Ok(Net::new(net_config, backend)?)
}

/// Opens the backend a net device's frames go through.
pub(crate) fn net_backend(config: NetBackendConfig) -> Result<Box<dyn NetBackend>, DeviceError> {
    Ok(match config {
        NetBackendConfig::Tap(name) => Box::new(Tap::open(&name)?),
        NetBackendConfig::Packet(backend) => Box::new(backend),
    })
}
