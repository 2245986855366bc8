//! The device's counters, shared with the host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Frame, byte, error and drop counters of one device. Cloning shares them: the VMM keeps a
/// clone and reads a [`NetStatsSnapshot`] whenever it likes, from any thread.
#[derive(Clone, Debug, Default)]
pub struct NetStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_errors: AtomicU64,
    tx_dropped: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_errors: AtomicU64,
    rx_dropped: AtomicU64,
}

/// The counters at one moment, as plain data. Bytes count Ethernet frames, without the
/// virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStatsSnapshot {
    /// Frames the guest sent that reached the backend.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Transmit chains the device rejected as malformed (short header, device-writable
    /// buffer, empty or oversized frame, buffer outside guest memory).
    pub tx_errors: u64,
    /// Well-formed frames the backend did not take (full, closed or failing).
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames that did not fit the guest's buffer, and receive chains rejected as malformed.
    pub rx_errors: u64,
    /// Frames from the backend that could not be delivered: empty, over [`super::MAX_FRAME_LEN`],
    /// or still waiting in the device when it was reset.
    pub rx_dropped: u64,
}

impl NetStats {
    /// The counters as they stand now.
    pub fn snapshot(&self) -> NetStatsSnapshot {
        let c = &self.inner;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        NetStatsSnapshot {
            tx_frames: get(&c.tx_frames),
            tx_bytes: get(&c.tx_bytes),
            tx_errors: get(&c.tx_errors),
            tx_dropped: get(&c.tx_dropped),
            rx_frames: get(&c.rx_frames),
            rx_bytes: get(&c.rx_bytes),
            rx_errors: get(&c.rx_errors),
            rx_dropped: get(&c.rx_dropped),
        }
    }

    /// Counters starting from a saved snapshot (not shared with any other).
    pub(super) fn from_snapshot(s: &NetStatsSnapshot) -> Self {
        Self {
            inner: Arc::new(Counters {
                tx_frames: s.tx_frames.into(),
                tx_bytes: s.tx_bytes.into(),
                tx_errors: s.tx_errors.into(),
                tx_dropped: s.tx_dropped.into(),
                rx_frames: s.rx_frames.into(),
                rx_bytes: s.rx_bytes.into(),
                rx_errors: s.rx_errors.into(),
                rx_dropped: s.rx_dropped.into(),
            }),
        }
    }

    pub(super) fn tx_frame(&self, len: usize) {
        add(&self.inner.tx_frames, 1);
        add(&self.inner.tx_bytes, len as u64);
    }

    pub(super) fn tx_error(&self) {
        add(&self.inner.tx_errors, 1);
    }

    pub(super) fn tx_dropped(&self) {
        add(&self.inner.tx_dropped, 1);
    }

    pub(super) fn rx_frame(&self, len: usize) {
        add(&self.inner.rx_frames, 1);
        add(&self.inner.rx_bytes, len as u64);
    }

    pub(super) fn rx_error(&self) {
        add(&self.inner.rx_errors, 1);
    }

    pub(super) fn rx_dropped(&self) {
        add(&self.inner.rx_dropped, 1);
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
