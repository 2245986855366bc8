//! Requests on guest memory: `Touch`, `Checksum`, and the counter at `AGENT_COUNTER_ADDR`.

use zygote_guest_proto::agent::{ErrorCode, Response, AGENT_COUNTER_ADDR};
use zygote_guest_proto::Checksum;

use super::Agent;
use crate::workloads::fill_and_checksum;

impl Agent {
    /// Writes `mib` MiB of the pattern from `touch_start` and reads it back.
    pub(super) fn touch(&mut self, mib: u32, pattern: u64) -> Response<'static> {
        let start = self.touch_start;
        let end = u64::from(mib)
            .checked_mul(1 << 20)
            .and_then(|len| start.checked_add(len));
        match end {
            Some(end) if end <= self.touch_limit && self.is_ram(start, end) => {
                let checksum = fill_and_checksum(start, u64::from(mib) << 17, pattern);
                Response::Touched {
                    addr: start,
                    checksum,
                }
            }
            _ => Response::Error(ErrorCode::OutOfRange),
        }
    }

    /// The checksum of `len` bytes of RAM at `addr` (both 8-byte aligned).
    pub(super) fn checksum(&self, addr: u64, len: u64) -> Response<'static> {
        if addr % 8 != 0 || len % 8 != 0 {
            return Response::Error(ErrorCode::InvalidArgument);
        }
        match addr.checked_add(len) {
            Some(end) if self.is_ram(addr, end) => {
                let mut sum = Checksum::new();
                for index in 0..len / 8 {
                    // SAFETY: `addr..end` is usable RAM (e820), identity-mapped; reading it
                    // disturbs nothing. Volatile: the host or a device may change it.
                    sum.update(unsafe { ((addr + index * 8) as *const u64).read_volatile() });
                }
                Response::Checksum(sum.value())
            }
            _ => Response::Error(ErrorCode::OutOfRange),
        }
    }

    /// Whether `start..end` is identity-mapped usable RAM, in one e820 entry.
    fn is_ram(&self, start: u64, end: u64) -> bool {
        end <= zygote_guest_proto::IDENTITY_MAP_LIMIT
            && self.boot.e820().any(|entry| entry.covers(start, end))
    }
}

/// Adds `value` to the counter at AGENT_COUNTER_ADDR (wrapping); the new value.
pub(super) fn counter_add(value: u64) -> u64 {
    let counter = AGENT_COUNTER_ADDR as *mut u64;
    // SAFETY: the page at AGENT_COUNTER_ADDR is reserved for the counter (see `run`).
    unsafe {
        let new = counter.read_volatile().wrapping_add(value);
        counter.write_volatile(new);
        new
    }
}
