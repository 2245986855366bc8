//! Test-only behaviour for the `hostile` workload (`crate::hostile`): read requests no
//! well-behaved driver sends, and the reset that follows one the device cannot answer.
//! Nothing else calls this.

use zygote_guest_proto::agent::SECTOR_SIZE;
use zygote_guest_proto::HostileOutcome;

use super::{Blk, T_IN};
use crate::arena::Arena;
use crate::clock::Clock;
use crate::virtio::queue::Buf;
use crate::virtio::transport::VirtioError;

/// Where `OutsideRam` points its data buffer: 12 GiB, far past the RAM of the test guests
/// (the device must check, since the guest never touches it).
const OUTSIDE_RAM: u64 = 0x3_0000_0000;
/// What `HugeLen` claims for its data buffer: a multiple of 512 just below 4 GiB.
const HUGE_LEN: u32 = 0xffff_f000;
/// How long the device gets to give a bad request back.
const WAIT_MS: u64 = 5_000;

/// A read of one sector (header, data, status) with one thing wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRead {
    /// The data buffer lies outside guest RAM.
    OutsideRam,
    /// The read starts at the disk's capacity.
    PastEnd,
    /// The header is device-writable.
    WrongDirection,
    /// The header descriptor is zero bytes long.
    ZeroLen,
    /// The data descriptor is zero bytes long.
    ZeroData,
    /// The data descriptor claims [`HUGE_LEN`] bytes.
    HugeLen,
    /// The status descriptor's `next` points back at the header.
    Loop,
}

impl Blk {
    /// Sends `case`, its data buffer (when it has a real one) at `data` (SECTOR_SIZE bytes
    /// the caller owns for good), and reports how the device answered: [`HostileOutcome::Timeout`]
    /// when it never gave the chain back, [`HostileOutcome::NeedsReset`] when it did and set
    /// DEVICE_NEEDS_RESET, else the status byte. Reads the status register once (a VM exit).
    pub fn bad_read(&mut self, clock: &Clock, case: BadRead, data: *mut u8) -> HostileOutcome {
        let sector = match case {
            BadRead::PastEnd => self.capacity,
            _ => 0,
        };
        self.write_header(T_IN, sector);
        let header = Buf::read(self.header, 16);
        let data = Buf::write(data, SECTOR_SIZE);
        let status = Buf::write(self.status, 1);
        let chain = match case {
            BadRead::OutsideRam => [
                header,
                Buf {
                    addr: OUTSIDE_RAM,
                    ..data
                },
                status,
            ],
            BadRead::PastEnd | BadRead::Loop => [header, data, status],
            BadRead::WrongDirection => [
                Buf {
                    writable: true,
                    ..header
                },
                data,
                status,
            ],
            BadRead::ZeroLen => [Buf { len: 0, ..header }, data, status],
            BadRead::ZeroData => [header, Buf { len: 0, ..data }, status],
            BadRead::HugeLen => [
                header,
                Buf {
                    len: HUGE_LEN,
                    ..data
                },
                status,
            ],
        };
        let head = match case {
            BadRead::Loop => self.queue.add_looped(&chain),
            _ => self.queue.add(&chain),
        };
        // Only after a chain the device kept (a timeout) can descriptors run out.
        let Some(head) = head else {
            return HostileOutcome::Timeout;
        };
        self.queue.notify();
        let completed = self.wait_for(clock, head);
        if !completed {
            HostileOutcome::Timeout
        } else if self.mmio.check().is_err() {
            HostileOutcome::NeedsReset
        } else {
            // SAFETY: the device has given the chain back; the status byte is ours again.
            HostileOutcome::from_blk_status(unsafe { self.status.read_volatile() })
        }
    }

    /// Polls the used ring (memory only) until `head` comes back; false after [`WAIT_MS`].
    fn wait_for(&mut self, clock: &Clock, head: u16) -> bool {
        let deadline = clock.deadline_ms(WAIT_MS);
        loop {
            while let Some(used) = self.queue.pop_used() {
                if used.head == head {
                    return true;
                }
            }
            if deadline.passed() {
                return false;
            }
            core::hint::spin_loop();
        }
    }

    /// Resets the device (status 0) and sets it up from scratch with a fresh queue, as after
    /// DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2). The old queue page and header stay allocated.
    pub fn reinit(&mut self, arena: &mut Arena) -> Result<(), VirtioError> {
        *self = Blk::new(self.mmio, arena)?;
        Ok(())
    }
}
