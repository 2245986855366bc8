//! Test-only behaviour for the `hostile` workload (`crate::hostile`): RW packets on no
//! connection, some malformed, and a record of the RSTs that answer them. Nothing else sends
//! these; the record only notes RSTs to the ports below, which nothing else uses.

use super::packet::{Header, HEADER, OP_RW, TYPE_STREAM};
use super::{Vsock, CONN_BUF, DATA, HEADER_ROOM, HOST_CID, TX_SLOTS};
use crate::virtio::queue::Buf;

/// The local ports stray packets come from: 32 ports below the ephemeral range, which no
/// listener uses.
pub const STRAY_PORTS: u32 = 40_000;

impl Vsock {
    /// Sends an RW from local port `local_port` (in `STRAY_PORTS..STRAY_PORTS + 32`) to the
    /// host's `peer_port`, on no connection: its header claims `claimed` payload bytes, the
    /// chain carries `carried` zero bytes (at most 4096). False when no transmit slot is free.
    pub fn send_stray_rw(
        &mut self,
        local_port: u32,
        peer_port: u32,
        claimed: u32,
        carried: usize,
    ) -> bool {
        let Some(slot) = self.take_tx_slot() else {
            return false;
        };
        let carried = carried.min(DATA);
        let base = self.tx_slot(slot);
        // SAFETY: HEADER_ROOM + carried <= SLOT.
        let payload = unsafe { base.add(HEADER_ROOM) };
        // SAFETY: the slot is free (not with the device) and holds `carried` bytes after the
        // header room.
        unsafe { payload.write_bytes(0, carried) };
        let header = Header {
            src_cid: self.guest_cid,
            dst_cid: HOST_CID,
            src_port: local_port,
            dst_port: peer_port,
            len: claimed,
            kind: TYPE_STREAM,
            op: OP_RW,
            buf_alloc: CONN_BUF as u32,
            ..Header::default()
        };
        header.write(base);
        self.submit(
            slot,
            &[Buf::read(base, HEADER), Buf::read(payload, carried)],
        );
        self.tx.notify();
        true
    }

    /// Whether an RST for no connection arrived at `local_port` (one of [`STRAY_PORTS`]).
    pub fn stray_rst(&self, local_port: u32) -> bool {
        match local_port.checked_sub(STRAY_PORTS) {
            Some(bit) if bit < 32 => self.stray_rsts & 1 << bit != 0,
            _ => false,
        }
    }

    /// Whether every transmit slot came back from the device and nothing is queued.
    pub fn tx_idle(&self) -> bool {
        self.pending_len == 0 && self.tx_free.count_ones() as usize == TX_SLOTS
    }

    /// Whether the device set DEVICE_NEEDS_RESET (one VM exit).
    pub fn needs_reset(&self) -> bool {
        self.mmio.check().is_err()
    }

    /// Notes an RST that matched no connection (the receive path drops it otherwise).
    pub(super) fn note_stray_rst(&mut self, h: &Header) {
        if let Some(bit) = h.dst_port.checked_sub(STRAY_PORTS).filter(|&bit| bit < 32) {
            self.stray_rsts |= 1 << bit;
        }
    }
}
