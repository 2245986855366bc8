//! Packets for the guest (the rx queue): control packets first, then data from host sockets
//! in round-robin order, within each connection's credit.

use std::ops::Bound;

use super::super::packet::{Header, Op};
use super::{Key, Muxer};

/// One packet for the guest: its header; the payload is in the caller's buffer.
pub struct RxPacket {
    /// The header to write before the payload.
    pub header: Header,
    /// Payload length, at the start of the buffer given to [`Muxer::next_rx`].
    pub len: usize,
}

impl Muxer {
    /// Whether a packet for the guest may be waiting (control packets, credit updates or
    /// readable sockets).
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty()
            || self
                .conns
                .values()
                .any(|c| c.credit_update_pending || c.can_send_to_guest())
    }

    /// The next packet for the guest, with up to `buf.len()` payload bytes read into `buf`:
    /// queued control packets first, then owed credit updates, then data.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<RxPacket> {
        if let Some(header) = self.control.pop_front() {
            return Some(RxPacket { header, len: 0 });
        }
        if let Some(conn) = self.conns.values_mut().find(|c| c.credit_update_pending) {
            let header = conn.header(self.guest_cid, Op::CreditUpdate, 0, 0);
            conn.credit_sent();
            return Some(RxPacket { header, len: 0 });
        }
        if buf.is_empty() {
            return None;
        }
        while let Some(key) = self.next_sender() {
            self.cursor = key;
            if let Some(packet) = self.read_data(key, buf) {
                return Some(packet);
            }
        }
        None
    }

    /// The next connection after the cursor that can send to the guest.
    fn next_sender(&self) -> Option<Key> {
        let after = self
            .conns
            .range((Bound::Excluded(self.cursor), Bound::Unbounded));
        let before = self.conns.range(..=self.cursor);
        after
            .chain(before)
            .find(|(_, conn)| conn.can_send_to_guest())
            .map(|(key, _)| *key)
    }

    fn read_data(&mut self, key: Key, buf: &mut [u8]) -> Option<RxPacket> {
        let conn = self.conns.get_mut(&key)?;
        match conn.read_from_host(buf) {
            Ok(Some(0)) => {
                // The host program will send no more: the guest is told (SHUTDOWN with SEND,
                // and RCV too if the host can take nothing either), or the connection ends
                // if the guest is done too; see `Muxer::settle`.
                conn.host_readable = false;
                conn.host_eof = true;
                if conn.host_hung_up() {
                    conn.host_closed = true;
                }
                self.flush(key);
                self.control
                    .pop_back()
                    .map(|header| RxPacket { header, len: 0 })
            }
            Ok(Some(len)) => {
                let header = conn.header(self.guest_cid, Op::Rw, len as u32, 0);
                conn.credit_sent();
                Some(RxPacket { header, len })
            }
            Ok(None) => None,
            Err(_) => {
                self.reset(key);
                self.control
                    .pop_back()
                    .map(|header| RxPacket { header, len: 0 })
            }
        }
    }
}
