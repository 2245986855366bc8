//! The agent connection's socket. Every read and write waits at most the connection's current
//! timeout, and gives up early once the VM behind it has stopped (nothing would ever answer).
//! The connect deadline and the request timeout are separate: the handshake waits on the
//! first, each request on the second.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::exit::ExitReason;

/// Says whether the VM behind a connection has stopped, and why.
pub(super) type StopCheck = Box<dyn FnMut() -> Option<ExitReason> + Send>;

/// How often a wait on the socket asks a [`StopCheck`] whether the VM stopped.
pub(super) const STOP_POLL: Duration = Duration::from_millis(50);

/// The payload of the `io::Error` a wait returns when the VM stopped.
#[derive(Debug)]
pub(super) struct Stopped(pub(super) ExitReason);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the VM stopped ({:?})", self.0)
    }
}

impl std::error::Error for Stopped {}

/// A connected agent socket with a per-operation timeout and an optional stop check.
pub(super) struct Conn {
    stream: UnixStream,
    timeout: Duration,
    stopped: Option<StopCheck>,
}

impl Conn {
    /// Wraps `stream`; every read and write then waits at most `timeout` (not zero). On
    /// failure the stop check comes back with the error.
    pub(super) fn new(
        stream: UnixStream,
        timeout: Duration,
        stopped: Option<StopCheck>,
    ) -> Result<Self, (io::Error, Option<StopCheck>)> {
        let mut conn = Self {
            stream,
            timeout,
            stopped,
        };
        match conn.set_timeout(timeout) {
            Ok(()) => Ok(conn),
            Err(e) => Err((e, conn.stopped)),
        }
    }

    /// How long one read or write waits for progress.
    #[cfg(test)]
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets how long one read or write waits for progress (`timeout` must not be zero).
    pub(super) fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        let slice = socket_slice(timeout, self.stopped.is_some());
        self.stream.set_read_timeout(Some(slice))?;
        self.stream.set_write_timeout(Some(slice))?;
        self.timeout = timeout;
        Ok(())
    }

    /// The stop check, handed back when a handshake fails so the next attempt can use it.
    pub(super) fn into_stop_check(self) -> Option<StopCheck> {
        self.stopped
    }

    /// Runs `op` until it makes progress, the timeout passes (`TimedOut`) or the VM stops
    /// (an error carrying [`Stopped`]).
    fn wait<T>(&mut self, mut op: impl FnMut(&mut UnixStream) -> io::Result<T>) -> io::Result<T> {
        let deadline = Instant::now().checked_add(self.timeout);
        loop {
            match op(&mut self.stream) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Some(reason) = self.stopped.as_mut().and_then(|check| check()) {
                        return Err(io::Error::other(Stopped(reason)));
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no progress within {:?}", self.timeout),
                        ));
                    }
                }
                other => return other,
            }
        }
    }
}

/// The socket's own timeout: the whole wait, or a slice of it when a stop check must be
/// asked in between. Never zero, which the socket API takes as "no timeout".
fn socket_slice(timeout: Duration, polled: bool) -> Duration {
    let slice = if polled {
        timeout.min(STOP_POLL)
    } else {
        timeout
    };
    slice.max(Duration::from_millis(1))
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.wait(|stream| stream.read(buf))
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wait(|stream| stream.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects to the Unix socket at `path` without blocking: a listener whose backlog is full
/// (a muxer at its connection limit, say) refuses at once with `WouldBlock`, so the caller's
/// deadline holds instead of a blocking `connect(2)` waiting for as long as the peer likes.
/// The returned stream is blocking.
pub(super) fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    let stream = zygote_devices::virtio::vsock::connect_nonblocking(path)?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}
