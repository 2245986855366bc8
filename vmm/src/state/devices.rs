//! Saving every device of a VM as plain data, and rebuilding them in a new VM.

use std::sync::{Arc, Mutex, MutexGuard};

use kvm_ioctls::VmFd;
use zygote_devices::legacy::SerialState;
use zygote_devices::virtio::block::{Block, BlockRestoreError, BlockState, OverlayState};
use zygote_devices::virtio::mmio::{MmioTransport, MmioTransportState, RestoreError};
use zygote_devices::virtio::net::{Net, NetRestoreError, NetState};
use zygote_devices::virtio::vsock::{Vsock, VsockError, VsockState};
use zygote_devices::virtio::{Memory, VirtioDevice};
use zygote_devices::Bus;

use crate::devices::{
    block_backend_with, net_backend, BlockConfig, CreatedFiles, DeviceError, DeviceHandles,
    NetConfig, VsockConfig,
};
use crate::virtio::{VirtioDevices, VirtioError};

/// A virtio device's transport (registers, queues) and its own state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioState<S> {
    /// The virtio-mmio transport.
    pub transport: MmioTransportState,
    /// The device behind it.
    pub device: S,
}

/// Every device of a VM, in attach order. Plain data; checked on restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceStates {
    /// The 16550 UART (vm-superio's state).
    pub serial: SerialState,
    /// Disks, in the order they were added.
    pub blocks: Vec<VirtioState<BlockState>>,
    /// NICs, in the order they were added.
    pub nets: Vec<VirtioState<NetState>>,
    /// The vsock device.
    pub vsock: Option<VirtioState<VsockState>>,
}

/// Why devices could not be rebuilt from saved state.
#[derive(Debug, thiserror::Error)]
pub enum DeviceRestoreError {
    /// The restore was given a different number of devices of a kind than were saved.
    #[error("{kind}: {saved} saved, {given} given to the restore")]
    Count {
        /// `block` or `net`.
        kind: &'static str,
        /// Devices in the saved state.
        saved: usize,
        /// Devices the caller gave.
        given: usize,
    },
    /// A device's backend could not be opened.
    #[error(transparent)]
    Open(#[from] DeviceError),
    /// A disk does not match the saved device.
    #[error("block {index}: {source}")]
    Block {
        /// Position among the disks.
        index: usize,
        /// Why.
        source: BlockRestoreError,
    },
    /// A NIC's state was refused.
    #[error("net {index}: {source}")]
    Net {
        /// Position among the NICs.
        index: usize,
        /// Why.
        source: NetRestoreError,
    },
    /// The vsock device could not be rebuilt.
    #[error("vsock: {0}")]
    Vsock(#[source] VsockError),
    /// A transport's saved registers or queues were refused.
    #[error("virtio device {index}: {source}")]
    Transport {
        /// Position in attach order.
        index: usize,
        /// Why.
        source: RestoreError,
    },
    /// The device could not be placed in the new VM.
    #[error(transparent)]
    Virtio(#[from] VirtioError),
}

fn lock<D: VirtioDevice>(t: &Mutex<MmioTransport<D>>) -> MutexGuard<'_, MmioTransport<D>> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Saves every device; the VM must be paused (no vCPU or event-loop thread in them).
pub(crate) fn save_devices(handles: &DeviceHandles, serial: SerialState) -> DeviceStates {
    fn one<D: VirtioDevice, S>(t: &Mutex<MmioTransport<D>>, f: impl Fn(&D) -> S) -> VirtioState<S> {
        let transport = lock(t);
        VirtioState {
            transport: transport.save(),
            device: f(transport.device()),
        }
    }
    DeviceStates {
        serial,
        blocks: handles.blocks.iter().map(|t| one(t, Block::save)).collect(),
        nets: handles.nets.iter().map(|t| one(t, Net::save)).collect(),
        vsock: handles.vsock_device.as_deref().map(|t| one(t, Vsock::save)),
    }
}

/// The host resources a restored VM's devices get: nothing of them is in a snapshot.
#[derive(Default)]
pub struct DeviceResources {
    /// One disk per saved disk, in order (same sizes).
    pub blocks: Vec<BlockConfig>,
    /// One backend per saved NIC, in order; `mac: None` keeps the saved MAC.
    pub nets: Vec<NetConfig>,
    /// The vsock device's CID and socket path; `None` keeps the saved ones.
    pub vsock: Option<VsockConfig>,
}

/// Where restored devices go: the new VM, its MMIO bus, its memory, its virtio list.
pub(crate) struct Placement<'a> {
    pub(crate) vm: &'a VmFd,
    pub(crate) mmio: &'a mut Bus,
    pub(crate) memory: &'a Memory,
    pub(crate) virtio: &'a mut VirtioDevices,
}

/// Where restored disks come from besides their configurations.
pub(crate) struct Disks<'a> {
    /// Overlay files created on the way, removed if the restore fails.
    pub(crate) created: &'a mut CreatedFiles,
    /// A fork's child disks, ready made, in order.
    pub(crate) forked: Vec<Block>,
    /// A snapshot's saved overlays, one entry per disk.
    pub(crate) overlays: &'a [Option<OverlayState>],
}

/// Rebuilds the virtio devices of `saved` in a new VM, in their saved order (so each gets its
/// saved MMIO window and interrupt line), over `resources`.
pub(crate) fn restore_virtio(
    saved: &DeviceStates,
    resources: DeviceResources,
    disks: Disks<'_>,
    place: &mut Placement<'_>,
) -> Result<DeviceHandles, DeviceRestoreError> {
    let Disks {
        created,
        forked: forked_blocks,
        overlays,
    } = disks;
    let count = |kind, saved: usize, given: usize| {
        if saved == given {
            Ok(())
        } else {
            Err(DeviceRestoreError::Count { kind, saved, given })
        }
    };
    let mut forked_blocks = forked_blocks.into_iter();
    let given_blocks = resources.blocks.len() + forked_blocks.len();
    count("block", saved.blocks.len(), given_blocks)?;
    count("net", saved.nets.len(), resources.nets.len())?;
    let mut handles = DeviceHandles::default();
    let mut position = 0;
    let mut configs = resources.blocks.iter();
    for (index, state) in saved.blocks.iter().enumerate() {
        // A fork hands over the child's disks ready made (overlays over the parent's frozen
        // disk); a restore opens them from their configuration.
        let device = match forked_blocks.next() {
            Some(device) => device,
            None => {
                let config = configs.next().ok_or(DeviceRestoreError::Count {
                    kind: "block",
                    saved: saved.blocks.len(),
                    given: given_blocks,
                })?;
                let saved_overlay = overlays.get(index).and_then(Option::as_ref);
                let backend = block_backend_with(config, created, saved_overlay)?;
                Block::restore(backend, &state.device)
                    .map_err(|source| DeviceRestoreError::Block { index, source })?
            }
        };
        handles
            .blocks
            .push(attach(place, device, &state.transport, position)?);
        position += 1;
    }
    for (index, (state, config)) in saved.nets.iter().zip(resources.nets).enumerate() {
        let mut device_state = state.device.clone();
        if let Some(mac) = config.mac {
            device_state.mac = mac;
        }
        let backend = net_backend(config.backend)?;
        let device = Net::restore(backend, &device_state)
            .map_err(|source| DeviceRestoreError::Net { index, source })?;
        handles
            .nets
            .push(attach(place, device, &state.transport, position)?);
        position += 1;
    }
    if let Some(state) = &saved.vsock {
        let mut device_state = state.device.clone();
        if let Some(config) = resources.vsock {
            device_state.config = config;
        }
        let device = Vsock::restore(&device_state).map_err(DeviceRestoreError::Vsock)?;
        handles.vsock = Some(device_state.config.clone());
        handles.vsock_device = Some(attach(place, device, &state.transport, position)?);
    }
    Ok(handles)
}

fn attach<D: VirtioDevice + 'static>(
    place: &mut Placement<'_>,
    device: D,
    state: &MmioTransportState,
    index: usize,
) -> Result<Arc<Mutex<MmioTransport<D>>>, DeviceRestoreError> {
    let Placement {
        vm,
        mmio,
        memory,
        virtio,
    } = place;
    let transport = virtio.attach_with(vm, mmio, memory, |memory, line| {
        MmioTransport::restore(device, memory, line, state)
            .map_err(|source| DeviceRestoreError::Transport { index, source })
    })?;
    {
        // Chains the driver posted before the snapshot was taken are served now: the
        // notification that announced them went to the old VM.
        let mut transport = lock(&transport);
        if transport.is_activated() {
            for queue in 0..transport.queue_count() as u32 {
                transport.queue_notify(queue);
            }
        }
    }
    Ok(transport)
}
