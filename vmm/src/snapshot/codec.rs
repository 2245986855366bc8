//! The snapshot file's encoding of device state: serde mirrors of the plain-data state types
//! of `zygote-devices` (which stays serde-free), converted at this edge.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;
use zygote_devices::legacy::SerialState;
use zygote_devices::virtio::block::{
    BlockState, FileOverlayState, MemoryOverlayState, OverlayState,
};
use zygote_devices::virtio::mmio::MmioTransportState;
use zygote_devices::virtio::net::{NetState, NetStatsSnapshot};
use zygote_devices::virtio::vsock::{VsockConfig, VsockState};

use crate::state::{DeviceStates, VirtioState};

#[derive(Serialize, Deserialize)]
#[serde(remote = "QueueState")]
struct QueueDef {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

#[derive(Serialize, Deserialize)]
struct Queue(#[serde(with = "QueueDef")] QueueState);

#[derive(Serialize, Deserialize)]
struct Transport {
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    queues: Vec<Queue>,
}

impl From<&MmioTransportState> for Transport {
    fn from(s: &MmioTransportState) -> Self {
        Self {
            device_features_sel: s.device_features_sel,
            driver_features_sel: s.driver_features_sel,
            driver_features: s.driver_features,
            queue_sel: s.queue_sel,
            status: s.status,
            interrupt_status: s.interrupt_status,
            config_generation: s.config_generation,
            queues: s.queues.iter().map(|q| Queue(*q)).collect(),
        }
    }
}

impl From<Transport> for MmioTransportState {
    fn from(s: Transport) -> Self {
        Self {
            device_features_sel: s.device_features_sel,
            driver_features_sel: s.driver_features_sel,
            driver_features: s.driver_features,
            queue_sel: s.queue_sel,
            status: s.status,
            interrupt_status: s.interrupt_status,
            config_generation: s.config_generation,
            queues: s.queues.into_iter().map(|q| q.0).collect(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
struct SerialDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "BlockState")]
struct BlockDef {
    read_only: bool,
    id: [u8; 20],
    capacity: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "NetStatsSnapshot")]
struct NetStatsDef {
    tx_frames: u64,
    tx_bytes: u64,
    tx_errors: u64,
    tx_dropped: u64,
    rx_frames: u64,
    rx_bytes: u64,
    rx_errors: u64,
    rx_dropped: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "NetState")]
struct NetDef {
    mac: [u8; 6],
    #[serde(with = "NetStatsDef")]
    stats: NetStatsSnapshot,
    pending_frame: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "VsockConfig")]
struct VsockConfigDef {
    guest_cid: u64,
    uds_path: std::path::PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "VsockState")]
struct VsockDef {
    #[serde(with = "VsockConfigDef")]
    config: VsockConfig,
}

#[derive(Serialize, Deserialize)]
struct Block {
    transport: Transport,
    #[serde(with = "BlockDef")]
    device: BlockState,
}

#[derive(Serialize, Deserialize)]
struct Net {
    transport: Transport,
    #[serde(with = "NetDef")]
    device: NetState,
}

#[derive(Serialize, Deserialize)]
struct Vsock {
    transport: Transport,
    #[serde(with = "VsockDef")]
    device: VsockState,
}

/// [`DeviceStates`] as the snapshot file stores it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Devices {
    #[serde(with = "SerialDef")]
    serial: SerialState,
    blocks: Vec<Block>,
    nets: Vec<Net>,
    vsock: Option<Vsock>,
}

impl From<&DeviceStates> for Devices {
    fn from(s: &DeviceStates) -> Self {
        Self {
            serial: s.serial.clone(),
            blocks: s
                .blocks
                .iter()
                .map(|b| Block {
                    transport: (&b.transport).into(),
                    device: b.device.clone(),
                })
                .collect(),
            nets: s
                .nets
                .iter()
                .map(|n| Net {
                    transport: (&n.transport).into(),
                    device: n.device.clone(),
                })
                .collect(),
            vsock: s.vsock.as_ref().map(|v| Vsock {
                transport: (&v.transport).into(),
                device: v.device.clone(),
            }),
        }
    }
}

impl From<Devices> for DeviceStates {
    fn from(s: Devices) -> Self {
        Self {
            serial: s.serial,
            blocks: s
                .blocks
                .into_iter()
                .map(|b| VirtioState {
                    transport: b.transport.into(),
                    device: b.device,
                })
                .collect(),
            nets: s
                .nets
                .into_iter()
                .map(|n| VirtioState {
                    transport: n.transport.into(),
                    device: n.device,
                })
                .collect(),
            vsock: s.vsock.map(|v| VirtioState {
                transport: v.transport.into(),
                device: v.device,
            }),
        }
    }
}

#[derive(Serialize, Deserialize)]
enum Overlay {
    Memory {
        disk_size: u64,
        sectors: Vec<u64>,
        data: Vec<u8>,
    },
    File {
        disk_size: u64,
        present: Vec<u64>,
    },
}

/// Each disk's overlay as the snapshot file stores it (checked on restore by the overlays'
/// own `restore`).
#[derive(Serialize, Deserialize)]
pub(crate) struct Overlays(Vec<Option<Overlay>>);

impl From<&[Option<OverlayState>]> for Overlays {
    fn from(all: &[Option<OverlayState>]) -> Self {
        Self(
            all.iter()
                .map(|o| {
                    o.as_ref().map(|o| match o {
                        OverlayState::Memory(m) => Overlay::Memory {
                            disk_size: m.disk_size,
                            sectors: m.sectors.clone(),
                            data: m.data.clone(),
                        },
                        OverlayState::File(f) => Overlay::File {
                            disk_size: f.disk_size,
                            present: f.present.clone(),
                        },
                    })
                })
                .collect(),
        )
    }
}

impl From<Overlays> for Vec<Option<OverlayState>> {
    fn from(all: Overlays) -> Self {
        all.0
            .into_iter()
            .map(|o| {
                o.map(|o| match o {
                    Overlay::Memory {
                        disk_size,
                        sectors,
                        data,
                    } => OverlayState::Memory(MemoryOverlayState {
                        disk_size,
                        sectors,
                        data,
                    }),
                    Overlay::File { disk_size, present } => {
                        OverlayState::File(FileOverlayState { disk_size, present })
                    }
                })
            })
            .collect()
    }
}

impl Devices {
    /// How many disks the state has.
    pub(crate) fn block_count(&self) -> usize {
        self.blocks.len()
    }
}
