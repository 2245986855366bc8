//! Test-only behaviour for the `hostile` workload (`crate::hostile`): RW packets on no
//! connection, some malformed, and a record of the RSTs that answer them. Nothing else sends
//! these; the record only notes RSTs to the ports below, which nothing else uses.

use zygote_guest_proto::{BadBuf, HostileOutcome};

use super::conn::Conn;
use super::packet::{Header, HEADER, OP_RW, TYPE_STREAM};
use super::{Vsock, CONN_BUF, DATA, EVENT_SIZE, HEADER_ROOM, HOST_CID, SLOT, TX_SLOTS};
use crate::arena::Arena;
use crate::clock::Clock;
use crate::virtio::queue::{outcome, Buf, Used};
use crate::virtio::transport::VirtioError;

/// The local ports stray packets come from: 32 ports below the ephemeral range, which no
/// listener uses.
pub const STRAY_PORTS: u32 = 40_000;
/// The host port stray packets go to (nothing listens there; it does not matter).
pub const STRAY_PEER_PORT: u32 = 9;
/// Payload bytes the bad-payload packets claim and carry.
const BAD_PAYLOAD: usize = 16;
/// How long the device gets to give a bad receive or event chain back (it keeps event
/// buffers while it owes no event, so that case always waits this long).
const WAIT_MS: u64 = 1_000;

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
        let header = self.stray_header(local_port, peer_port, claimed);
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

impl Vsock {
    /// The header of an RW from `local_port` to the host's `peer_port` on no connection,
    /// claiming `claimed` payload bytes.
    fn stray_header(&self, local_port: u32, peer_port: u32, claimed: u32) -> Header {
        Header {
            src_cid: self.guest_cid,
            dst_cid: HOST_CID,
            src_port: local_port,
            dst_port: peer_port,
            len: claimed,
            kind: TYPE_STREAM,
            op: OP_RW,
            buf_alloc: CONN_BUF as u32,
            ..Header::default()
        }
    }

    /// Sends an RW from `local_port` (one of [`STRAY_PORTS`]) to the host's `peer_port` on
    /// no connection: a good header claiming [`BAD_PAYLOAD`] bytes, and a payload buffer bad
    /// as `case` says. False when no transmit slot is free. After `Loop` the caller resets
    /// the device once the chain is back.
    pub fn send_bad_rw(&mut self, local_port: u32, peer_port: u32, case: BadBuf) -> bool {
        let Some(slot) = self.take_tx_slot() else {
            return false;
        };
        let base = self.tx_slot(slot);
        // SAFETY: HEADER_ROOM + BAD_PAYLOAD <= SLOT.
        let payload = unsafe { base.add(HEADER_ROOM) };
        // SAFETY: the slot is free (not with the device) and holds the payload after the
        // header room.
        unsafe { payload.write_bytes(0, BAD_PAYLOAD) };
        self.stray_header(local_port, peer_port, BAD_PAYLOAD as u32)
            .write(base);
        let header = Buf::read(base, HEADER);
        match self
            .tx
            .add_bad(&[header], case, Buf::read(payload, BAD_PAYLOAD))
        {
            Some(head) => self.tx_slot_of[usize::from(head)] = slot as u8,
            None => {
                self.tx_free |= 1 << slot;
                return false;
            }
        }
        self.tx.notify();
        true
    }

    /// Resets the device and sets it up again on the same buffers with fresh queues (as
    /// after DEVICE_NEEDS_RESET, virtio 1.2 §2.1.2), posting receive buffers when `rx` and
    /// event buffers when `events`. Connections and queued packets are gone; the record of
    /// stray RSTs stays.
    pub fn reinit(&mut self, arena: &mut Arena, rx: bool, events: bool) -> Result<(), VirtioError> {
        (self.rx, self.tx, self.events) = Self::begin(self.mmio, arena)?;
        self.tx_free = u32::MAX;
        self.conns.fill(Conn::FREE);
        self.pending_head = 0;
        self.pending_len = 0;
        self.go_live(rx, events);
        Ok(())
    }

    /// Resets the device with one receive chain (one SLOT-byte buffer bad as `case` says) and
    /// no other, sends a stray RW from `local_port` so the device has an RST to deliver, and
    /// reports how the device answered. The caller resets the device afterwards.
    pub fn bad_receive(
        &mut self,
        clock: &Clock,
        arena: &mut Arena,
        case: BadBuf,
        local_port: u32,
    ) -> HostileOutcome {
        if self.reinit(arena, false, true).is_err() {
            return HostileOutcome::Timeout;
        }
        let Some(head) = self.rx.add_bad(&[], case, Buf::write(self.rx_slots, SLOT)) else {
            return HostileOutcome::Timeout;
        };
        self.rx.notify();
        if !self.send_stray_rw(local_port, STRAY_PEER_PORT, 16, 16) {
            return HostileOutcome::Timeout;
        }
        let used = self.rx.wait_head(clock, head, WAIT_MS);
        outcome(used, &self.mmio)
    }

    /// Resets the device with receive buffers and, on the event queue, one chain per case of
    /// `BadBuf::ALL` (an EVENT_SIZE buffer bad as the case says) and no good one; waits
    /// [`WAIT_MS`] for the device to give any back and reports each. The caller resets the
    /// device afterwards.
    pub fn bad_events(&mut self, clock: &Clock, arena: &mut Arena) -> [HostileOutcome; 6] {
        if self.reinit(arena, true, false).is_err() {
            return [HostileOutcome::Timeout; 6];
        }
        let mut heads = [None; 6];
        for (i, case) in BadBuf::ALL.into_iter().enumerate() {
            // Transmit slots are idle memory here: nothing is sent until the next reset.
            let buf = Buf::write(self.tx_slot(i), EVENT_SIZE);
            heads[i] = self.events.add_bad(&[], case, buf);
        }
        self.events.notify();
        let mut used: [Option<Used>; 6] = [None; 6];
        let deadline = clock.deadline_ms(WAIT_MS);
        while !deadline.passed() {
            while let Some(back) = self.events.pop_used() {
                if let Some(i) = heads.iter().position(|&h| h == Some(back.head)) {
                    used[i] = Some(back);
                }
            }
            core::hint::spin_loop();
        }
        core::array::from_fn(|i| match heads[i] {
            Some(_) => outcome(used[i], &self.mmio),
            None => HostileOutcome::Timeout,
        })
    }
}
