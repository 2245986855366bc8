//! Test-only behaviour for the `hostile` workload (`crate::hostile`): frames sent from a chain
//! with one bad buffer, receive chains with one bad buffer on a device that has no others,
//! and the reset that follows. Nothing else calls this.
//!
//! A receive chain is only used when a frame arrives, so each receive case sends a frame the
//! host echoes back (the host test runs the echo); the echo lands in the bad chain.

use zygote_guest_proto::{BadBuf, HostileOutcome};

use super::{Net, BUF_SIZE, HEADER, RX_BUFFERS};
use crate::arena::Arena;
use crate::clock::Clock;
use crate::virtio::queue::{outcome, Buf};
use crate::virtio::transport::VirtioError;

/// How long the device gets to give a bad chain back (it keeps a receive chain with no room,
/// so that case always waits this long).
const WAIT_MS: u64 = 1_000;
/// How long the host's echo of the recovery frame may take.
const ECHO_WAIT_MS: u64 = 5_000;
/// Length of the frames the cases send (Ethernet minimum without FCS).
const FRAME: usize = 60;
/// EtherType of the frames the cases send (IEEE local experimental).
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// What a case's frame is for: its first payload byte (offset 14), so the host can tell
/// them apart. The next byte is the case's number.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum FrameKind {
    /// Sent from a bad transmit chain: must never reach the host.
    BadTx = b'T',
    /// Sent well to have the host echo it into a bad receive chain.
    Trigger = b'R',
    /// Sent after the reset; its echo must come back whole.
    Recovery = b'G',
}

impl Net {
    /// Resets the device and sets it up again on the same buffers with fresh queues (as
    /// after DEVICE_NEEDS_RESET, virtio 1.2 §2.1.2), posting the receive buffers when `post`.
    pub fn reinit(&mut self, arena: &mut Arena, post: bool) -> Result<(), VirtioError> {
        *self = Net::setup(self.mmio, arena, self.buffers, post)?;
        Ok(())
    }

    /// A broadcast frame of `kind` for case number `n`, from this device's MAC.
    fn case_frame(&self, kind: FrameKind, n: u8) -> [u8; FRAME] {
        let mut frame = [0u8; FRAME];
        frame[..6].fill(0xff);
        frame[6..12].copy_from_slice(&self.mac);
        frame[12..14].copy_from_slice(&ETHERTYPE);
        frame[14] = kind as u8;
        frame[15] = n;
        frame
    }

    /// Puts a zeroed header and `frame` into the transmit buffer; the buffer covering both.
    fn load_tx(&mut self, frame: &[u8; FRAME]) -> Buf {
        let tx = self.buffer(RX_BUFFERS);
        // SAFETY: the transmit buffer is BUF_SIZE bytes of arena memory only this driver
        // uses, idle between sends; HEADER + FRAME < BUF_SIZE.
        unsafe {
            tx.write_bytes(0, HEADER);
            core::ptr::copy_nonoverlapping(frame.as_ptr(), tx.add(HEADER), FRAME);
        }
        Buf::read(tx, HEADER + FRAME)
    }

    /// Sends a frame whose one transmit buffer is bad as `case` says, and reports how the
    /// device answered. After `Loop` the caller resets the device.
    pub fn bad_send(&mut self, clock: &Clock, case: BadBuf) -> HostileOutcome {
        let frame = self.case_frame(FrameKind::BadTx, case as u8);
        let buf = self.load_tx(&frame);
        let Some(head) = self.tx.add_bad(&[], case, buf) else {
            return HostileOutcome::Timeout;
        };
        self.tx.notify();
        let used = self.tx.wait_head(clock, head, WAIT_MS);
        outcome(used, &self.mmio)
    }

    /// Resets the device, posts one receive chain bad as `case` says and nothing else, sends
    /// a frame for the host to echo into it, and reports how the device answered. The device
    /// is left with no good receive buffers: the caller resets it.
    pub fn bad_receive(
        &mut self,
        clock: &Clock,
        arena: &mut Arena,
        case: BadBuf,
    ) -> HostileOutcome {
        if self.reinit(arena, false).is_err() {
            return HostileOutcome::Timeout;
        }
        let buf = Buf::write(self.buffer(0), BUF_SIZE);
        let Some(head) = self.rx.add_bad(&[], case, buf) else {
            return HostileOutcome::Timeout;
        };
        self.rx.notify();
        let trigger = self.case_frame(FrameKind::Trigger, case as u8);
        if self.send(clock, &trigger).is_err() {
            return outcome(None, &self.mmio);
        }
        let used = self.rx.wait_head(clock, head, WAIT_MS);
        outcome(used, &self.mmio)
    }

    /// Resets the device with every receive buffer posted, sends a recovery frame and waits
    /// for the host's echo of it (other frames are skipped): whether it came back whole.
    pub fn recover(&mut self, clock: &Clock, arena: &mut Arena) -> bool {
        if self.reinit(arena, true).is_err() {
            return false;
        }
        let sent = self.case_frame(FrameKind::Recovery, 0);
        if self.send(clock, &sent).is_err() {
            return false;
        }
        let deadline = clock.deadline_ms(ECHO_WAIT_MS);
        let mut got = [0u8; BUF_SIZE];
        while !deadline.passed() {
            match self.try_recv(&mut got) {
                Some(len) if got[..len] == sent[..] => return true,
                Some(_) => {}
                None => core::hint::spin_loop(),
            }
        }
        false
    }
}
