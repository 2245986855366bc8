//! The virtio devices a VM can have, as the builder takes them, and their creation.

use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use zygote_devices::virtio::block::{
    Block, BlockBackend, BlockError, FileOverlay, Overlay, RawFile,
};
use zygote_devices::virtio::mmio::MmioTransport;
use zygote_devices::virtio::net::{Net, NetBackend, NetError, PacketBackend, Tap, TapError};
use zygote_devices::virtio::vsock::{Vsock, VsockError};
use zygote_devices::virtio::Memory;
use zygote_devices::Bus;

pub use zygote_devices::virtio::net::{NetStatsSnapshot, PacketEndpoint};
pub use zygote_devices::virtio::vsock::VsockConfig;

use crate::virtio::{VirtioDevices, VirtioError};

/// A virtio-blk disk backed by a raw image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// The raw image.
    pub path: PathBuf,
    /// The guest may not write.
    pub read_only: bool,
    /// Where the guest's writes go instead of the image, which is then never modified (for
    /// forks); `None` writes to the image.
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
    /// VM, so the file alone is not a disk image.
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
    /// exists), leaving the image untouched.
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
    /// The overlay file is the disk image itself (the same file, under any name).
    #[error("block: the overlay file {overlay} is the disk image {image}; choose another path")]
    OverlayIsImage {
        /// The overlay file path.
        overlay: PathBuf,
        /// The image path.
        image: PathBuf,
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
    /// Frame and byte counters of net device `index` (in the order they were added).
    pub fn net_stats(&self, index: usize) -> Option<NetStatsSnapshot> {
        let net = self.nets.get(index)?;
        let transport = net.lock().unwrap_or_else(|p| p.into_inner());
        Some(transport.device().stats().snapshot())
    }
}

/// Creates every configured device and attaches it.
pub(crate) fn attach_all(
    configs: DeviceConfigs,
    vm: &VmFd,
    mmio: &mut Bus,
    memory: &Memory,
    devices: &mut VirtioDevices,
) -> Result<DeviceHandles, DeviceError> {
    let mut handles = DeviceHandles::default();
    for config in configs.blocks {
        handles
            .blocks
            .push(devices.attach(vm, mmio, memory, block(&config)?)?);
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
    use std::os::unix::fs::FileTypeExt;
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

pub(crate) fn block(config: &BlockConfig) -> Result<Block, DeviceError> {
    let backend = block_backend(config)?;
    Ok(Block::new(backend, config.read_only, &config.id)?)
}

/// Opens a disk's image and its overlay, as `config` says.
pub(crate) fn block_backend(config: &BlockConfig) -> Result<Box<dyn BlockBackend>, DeviceError> {
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
    Ok(match &config.overlay {
        None => Box::new(raw),
        Some(BlockOverlay::Memory) => Box::new(Overlay::new(raw)),
        Some(BlockOverlay::File(path)) => {
            let overlay = overlay_file(path, &image, &config.path)?;
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
/// (`image` is the image's metadata).
fn overlay_file(path: &Path, image: &Metadata, image_path: &Path) -> Result<File, DeviceError> {
    let create_error = |source| DeviceError::OverlayCreate {
        path: path.to_path_buf(),
        source,
    };
    // Not truncated on open: the image must be told apart first, or truncating would wipe it.
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(create_error)?;
    let ours = file.metadata().map_err(create_error)?;
    if (ours.dev(), ours.ino()) == (image.dev(), image.ino()) {
        return Err(DeviceError::OverlayIsImage {
            overlay: path.to_path_buf(),
            image: image_path.to_path_buf(),
        });
    }
    file.set_len(0).map_err(create_error)?;
    Ok(file)
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
