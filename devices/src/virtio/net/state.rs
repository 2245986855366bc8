//! The device's state as plain data, and its validated restore. The queues are the
//! transport's ([`crate::virtio::mmio::MmioTransportState`]); the backend is handed in anew.

use super::backend::NetBackend;
use super::device::{Net, NetConfig, NetError};
use super::{NetStats, NetStatsSnapshot, MAX_FRAME_LEN};

/// What a [`Net`] device holds besides its queues and backend.
///
/// Plain, untrusted data: [`Net::restore`] checks all of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetState {
    /// The MAC address.
    pub mac: [u8; 6],
    /// The counters.
    pub stats: NetStatsSnapshot,
    /// A frame taken from the backend and not yet delivered to the guest.
    pub pending_frame: Option<Vec<u8>>,
}

/// Why a saved net state was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetRestoreError {
    /// The configuration is invalid.
    #[error("invalid net device configuration: {0}")]
    Config(#[from] NetError),
    /// The waiting frame is empty or longer than [`MAX_FRAME_LEN`].
    #[error("saved pending frame of {0} bytes is empty or over the limit")]
    PendingFrameLen(usize),
}

impl Net {
    /// The device's state.
    pub fn save(&self) -> NetState {
        NetState {
            mac: self.mac(),
            stats: self.stats().snapshot(),
            pending_frame: self.pending_frame().map(<[u8]>::to_vec),
        }
    }

    /// A device from a saved state, exchanging frames through `backend`. The counters start
    /// from the saved ones in a new [`NetStats`] (take it with [`Net::stats`]). The transport's
    /// restore activates the device afterwards if the driver had.
    pub fn restore(
        backend: Box<dyn NetBackend>,
        state: &NetState,
    ) -> Result<Self, NetRestoreError> {
        if let Some(frame) = &state.pending_frame {
            if frame.is_empty() || frame.len() > MAX_FRAME_LEN {
                return Err(NetRestoreError::PendingFrameLen(frame.len()));
            }
        }
        let mut net = Net::new(NetConfig { mac: state.mac }, backend)?;
        net.set_stats(NetStats::from_snapshot(&state.stats));
        if let Some(frame) = &state.pending_frame {
            net.set_pending_frame(frame);
        }
        Ok(net)
    }
}
