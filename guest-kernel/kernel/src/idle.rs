//! Sleeping when there is nothing to do. The guest polls its devices at CPL3 (interrupts and
//! `hlt` would need CPL0, which is emulated on the project's machines), which would keep a
//! host core busy forever; so after [`SPIN_US`] of passes that found no work, it writes the
//! longest it wants to sleep to the VMM's idle port ([`IDLE_PORT`]), and the VMM parks the
//! vCPU until a device has something for the guest, the wait runs out, or the VMM wants the
//! vCPU. One VM exit per sleep.
//!
//! Spinning first keeps request round trips as fast as pure polling: a host that sends its
//! next request within [`SPIN_US`] of the last answer never finds the guest asleep. After a
//! sleep the guest looks once more and, finding nothing, sleeps again at once (a wake-up that
//! brought no work, such as a timeout or a pause, costs one pass, not another spin).

use zygote_guest_proto::IDLE_PORT;

use crate::arch::port;
use crate::clock::Clock;

/// How long passes must find no work before the guest sleeps: 200 µs.
pub const SPIN_US: u64 = 200;

/// Decides when the guest sleeps, from a fingerprint `T` of what its devices and the
/// application did (any change = work was found).
pub struct Idle<T> {
    last: T,
    /// TSC when the fingerprint last changed.
    quiet_since: u64,
    spin_ticks: u64,
    /// The last pass ended in a sleep and nothing changed since.
    slept: bool,
    wait_us: u32,
}

impl<T: PartialEq> Idle<T> {
    /// Starts out busy (spinning); sleeps at most `wait_us` µs at a time.
    pub fn new(clock: &Clock, first: T, wait_us: u32) -> Self {
        Idle {
            last: first,
            quiet_since: Clock::now(),
            spin_ticks: clock.ticks_us(SPIN_US),
            slept: false,
            wait_us,
        }
    }

    /// Called after every pass with the fingerprint it ended on: returns at once if something
    /// changed or the spin is not over, else after a sleep.
    pub fn after_pass(&mut self, fingerprint: T) {
        let now = Clock::now();
        if fingerprint != self.last {
            self.last = fingerprint;
            self.quiet_since = now;
            self.slept = false;
            return;
        }
        if self.slept || now.wrapping_sub(self.quiet_since) >= self.spin_ticks {
            sleep(self.wait_us);
            self.slept = true;
        }
    }
}

/// Asks the VMM to park this vCPU for at most `wait_us` µs, or until there may be work.
pub fn sleep(wait_us: u32) {
    // SAFETY: the idle port only makes the VMM wait before resuming the guest; it affects no
    // memory. Ports below 0x400 are granted to user mode in the TSS I/O bitmap.
    unsafe { port::outl(IDLE_PORT, wait_us) };
}
