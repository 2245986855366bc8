//! Letting an idle guest's vCPU sleep: the idle port and the VM's doorbell.
//!
//! Zygote's guest polls its virtqueues at CPL3 rather than taking interrupts (CPL0 is emulated
//! on the hosts this runs on, so `sti; hlt` and an interrupt handler cost milliseconds). When
//! it has found no work for a while it writes the longest it wants to sleep, in microseconds,
//! to [`IDLE_PORT`]; the vCPU thread then waits on the VM's [`Doorbell`] instead of entering
//! the guest again. Whatever can give the guest work rings the doorbell: a virtio device
//! returning used buffers or raising its interrupt ([`DoorbellLine`]), serial input reaching
//! the UART, and the VM's own control when it wants its vCPUs (pause, stop: `VmControl`
//! rings it with every kick). The wait also ends after the guest's timeout, at most
//! [`IDLE_MAX_WAIT_US`].
//!
//! No wake-up is lost: each vCPU remembers how many rings it had seen when its last wait
//! ended, and a wait returns at once if there were more since, so a ring that comes between
//! the guest's last look at its rings and its write to the port is not missed. The price is
//! an early return now and then, after which the guest looks again and idles again.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zygote_devices::virtio::{EventFdInterrupt, InterruptLine};
pub use zygote_guest_proto::{IDLE_MAX_WAIT_US, IDLE_PORT};

#[derive(Default)]
struct Bell {
    /// Rings so far.
    rings: u64,
    /// vCPU threads waiting now (a ring with none skips the wake-up call).
    sleepers: usize,
}

/// One VM's doorbell: rung by whatever may give its guest work, waited on by its idle vCPUs.
#[derive(Default)]
pub(crate) struct Doorbell {
    bell: Mutex<Bell>,
    rung: Condvar,
}

/// Why an idle wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The doorbell rang (before or during the wait).
    Rung,
    /// The guest's timeout ran out.
    TimedOut,
}

impl Doorbell {
    fn lock(&self) -> MutexGuard<'_, Bell> {
        self.bell.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every idle vCPU (and makes the next idle wait of every other one return at once).
    pub(crate) fn ring(&self) {
        let mut bell = self.lock();
        bell.rings = bell.rings.wrapping_add(1);
        if bell.sleepers > 0 {
            drop(bell);
            self.rung.notify_all();
        }
    }

    /// How many vCPU threads are waiting now.
    #[cfg(test)]
    pub(crate) fn sleepers(&self) -> usize {
        self.lock().sleepers
    }

    /// The waiting side for one vCPU thread.
    pub(crate) fn waiter(self: &Arc<Self>) -> IdleWaiter {
        IdleWaiter {
            seen: self.lock().rings,
            doorbell: self.clone(),
        }
    }
}

/// One vCPU thread's side of the doorbell.
pub(crate) struct IdleWaiter {
    doorbell: Arc<Doorbell>,
    /// The ring count when this vCPU's last wait ended.
    seen: u64,
}

impl IdleWaiter {
    /// Handles the guest's write of `data` (the wait in µs, little-endian, narrower writes
    /// zero-extended) to [`IDLE_PORT`]: sleeps until the doorbell rings or the wait, capped at
    /// [`IDLE_MAX_WAIT_US`], runs out.
    pub(crate) fn idle(&mut self, data: &[u8]) -> Wake {
        self.wait(requested_wait(data))
    }

    /// Sleeps until the doorbell rings (or has rung since the last wait) or `timeout` passes.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Wake {
        let deadline = Instant::now() + timeout;
        let doorbell = &*self.doorbell;
        let mut bell = doorbell.lock();
        bell.sleepers += 1;
        let wake = loop {
            if bell.rings != self.seen {
                break Wake::Rung;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break Wake::TimedOut;
            };
            bell = match doorbell.rung.wait_timeout(bell, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        };
        bell.sleepers -= 1;
        self.seen = bell.rings;
        wake
    }
}

/// The wait a write of `data` to [`IDLE_PORT`] asks for, capped at [`IDLE_MAX_WAIT_US`].
fn requested_wait(data: &[u8]) -> Duration {
    let mut bytes = [0u8; 4];
    let n = data.len().min(4);
    bytes[..n].copy_from_slice(&data[..n]);
    let us = u32::from_le_bytes(bytes).min(IDLE_MAX_WAIT_US);
    Duration::from_micros(u64::from(us))
}

/// A virtio device's interrupt line that also rings the VM's doorbell: when the device raises
/// its irqfd, and when it returns used buffers to a driver that asked for no interrupt.
pub(crate) struct DoorbellLine {
    line: EventFdInterrupt,
    doorbell: Arc<Doorbell>,
}

impl DoorbellLine {
    pub(crate) fn new(line: EventFdInterrupt, doorbell: Arc<Doorbell>) -> Self {
        Self { line, doorbell }
    }
}

impl InterruptLine for DoorbellLine {
    fn trigger(&self) -> io::Result<()> {
        let raised = self.line.trigger();
        self.doorbell.ring();
        raised
    }

    fn used_buffers(&self) {
        self.doorbell.ring();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn a_ring_wakes_a_sleeping_vcpu() {
        let doorbell = Arc::new(Doorbell::default());
        let mut waiter = doorbell.waiter();
        let sleeper = std::thread::spawn(move || waiter.wait(LONG));
        while doorbell.sleepers() == 0 {
            std::thread::yield_now();
        }
        doorbell.ring();
        assert_eq!(sleeper.join().unwrap(), Wake::Rung);
    }

    #[test]
    fn a_ring_before_the_wait_is_not_lost_and_counts_once() {
        let doorbell = Arc::new(Doorbell::default());
        let mut waiter = doorbell.waiter();
        doorbell.ring();
        doorbell.ring();
        assert_eq!(waiter.wait(LONG), Wake::Rung);
        assert_eq!(waiter.wait(Duration::from_millis(1)), Wake::TimedOut);
    }

    #[test]
    fn every_vcpu_sees_a_ring() {
        let doorbell = Arc::new(Doorbell::default());
        let mut first = doorbell.waiter();
        let mut second = doorbell.waiter();
        doorbell.ring();
        assert_eq!(first.wait(LONG), Wake::Rung);
        assert_eq!(second.wait(LONG), Wake::Rung);
    }

    #[test]
    fn the_guest_wait_is_read_little_endian_and_capped() {
        let us = Duration::from_micros;
        assert_eq!(requested_wait(&100_000u32.to_le_bytes()), us(100_000));
        assert_eq!(requested_wait(&[0x10, 0x27]), us(10_000), "16-bit out");
        assert_eq!(requested_wait(&[]), Duration::ZERO);
        // u32::MAX µs would be over an hour.
        let cap = us(u64::from(IDLE_MAX_WAIT_US));
        assert_eq!(requested_wait(&u32::MAX.to_le_bytes()), cap);
        let doorbell = Arc::new(Doorbell::default());
        assert_eq!(doorbell.waiter().idle(&[0; 4]), Wake::TimedOut);
    }

    #[test]
    fn a_device_line_raises_its_irqfd_and_rings() {
        let doorbell = Arc::new(Doorbell::default());
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let line = DoorbellLine::new(
            EventFdInterrupt::new(fd.try_clone().unwrap()),
            doorbell.clone(),
        );
        let mut waiter = doorbell.waiter();
        line.trigger().unwrap();
        assert_eq!(fd.read().unwrap(), 1);
        assert_eq!(waiter.wait(LONG), Wake::Rung);
        line.used_buffers();
        assert_eq!(waiter.wait(LONG), Wake::Rung);
        assert!(fd.read().is_err(), "quiet used buffers raise no interrupt");
    }
}
