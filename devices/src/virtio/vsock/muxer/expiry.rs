//! Deadlines: handshakes that never complete and connections that wait on the guest in vain
//! are dropped when theirs passes. One timer on the muxer's epoll is armed for the earliest.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use super::{Key, Muxer};

/// A timer that never blocks when read: a re-arm between its readiness and the read resets
/// its expiry count, and a blocking read would then stall the event loop.
pub(super) fn nonblocking_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    let fd = timer.as_raw_fd();
    // SAFETY: fcntl on an fd we own; F_GETFL takes no argument and the result is checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL takes an int of flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

impl Muxer {
    /// Makes sure the timer fires no later than `deadline`.
    pub(super) fn schedule(&mut self, deadline: Instant) {
        if self.timer_armed_for.is_some_and(|armed| armed <= deadline) {
            return;
        }
        // Zero would disarm the timer: a deadline already past fires after a nanosecond.
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        if self.timer.reset(wait, None).is_ok() {
            self.timer_armed_for = Some(deadline);
        }
    }

    /// Makes the muxer's epoll fd readable again no later than `deadline`, so the device is
    /// served again then (it re-checks work it had to hold back).
    pub fn wake_at(&mut self, deadline: Instant) {
        self.schedule(deadline);
    }

    pub(super) fn timer_fired(&mut self) {
        // Only clears the readiness; how often it expired does not matter.
        let _ = self.timer.wait();
        self.timer_armed_for = None;
        self.expire(Instant::now());
    }

    /// Drops every handshake and resets every connection whose deadline is `now` or earlier,
    /// then arms the timer for the earliest deadline left.
    pub(super) fn expire(&mut self, now: Instant) {
        let late_handshakes: Vec<_> = self
            .handshakes
            .iter()
            .filter(|(_, hs)| hs.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late_handshakes {
            self.drop_handshake(fd);
        }
        let late_conns: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.deadline.is_some_and(|d| d <= now))
            .map(|(key, _)| *key)
            .collect();
        for key in late_conns {
            self.reset(key);
        }
        let next = self
            .handshakes
            .values()
            .map(|hs| hs.deadline)
            .chain(self.conns.values().filter_map(|conn| conn.deadline))
            .min();
        if let Some(next) = next {
            self.timer_armed_for = None;
            self.schedule(next);
        }
    }
}
