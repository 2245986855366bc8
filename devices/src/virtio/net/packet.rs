//! The in-process backend: one end of a `socketpair(AF_UNIX, SOCK_SEQPACKET)` in the device,
//! the other in the host program, so frames flow without any host networking or privileges.
//! `SOCK_SEQPACKET` keeps frame boundaries: one `send` is one frame.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::backend::{NetBackend, Recv};

/// The device's end of a packet socket pair.
#[derive(Debug)]
pub struct PacketBackend {
    fd: OwnedFd,
}

/// The host's end of a packet socket pair: what the guest transmits arrives here, and what is
/// sent here reaches the guest.
#[derive(Debug)]
pub struct PacketEndpoint {
    fd: OwnedFd,
}

impl PacketBackend {
    /// A connected pair: the backend for a [`super::Net`] device and the endpoint for the host.
    pub fn pair() -> io::Result<(PacketBackend, PacketEndpoint)> {
        let mut fds = [-1 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints that socketpair fills on success.
        let ret = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socketpair succeeded, so both fds are open and owned by nobody else.
        let (device, host) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((PacketBackend { fd: device }, PacketEndpoint { fd: host }))
    }
}

impl NetBackend for PacketBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        send(self.fd.as_fd(), frame, libc::MSG_DONTWAIT)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Recv> {
        match recv(self.fd.as_fd(), buf)? {
            Some(0) if hung_up(self.fd.as_fd())? => Ok(Recv::Closed),
            Some(len) => Ok(Recv::Frame(len)),
            None => Ok(Recv::Empty),
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for PacketBackend {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PacketEndpoint {
    /// Sends one frame to the guest, waiting while the device's socket buffer is full.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        send(self.fd.as_fd(), frame, 0)
    }

    /// Waits up to `timeout` for a frame from the guest and copies it into `buf`.
    ///
    /// Returns `Ok(None)` on timeout, `ErrorKind::UnexpectedEof` once the device end is closed,
    /// and `ErrorKind::InvalidData` (dropping the frame) when the frame is longer than `buf`.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        if !poll_readable(self.fd.as_fd(), timeout)? {
            return Ok(None);
        }
        match recv(self.fd.as_fd(), buf)? {
            None => Ok(None),
            Some(0) if hung_up(self.fd.as_fd())? => Err(io::ErrorKind::UnexpectedEof.into()),
            Some(len) if len > buf.len() => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "frame of {len} bytes does not fit a {}-byte buffer",
                    buf.len()
                ),
            )),
            Some(len) => Ok(Some(len)),
        }
    }
}

impl AsFd for PacketEndpoint {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn send(fd: BorrowedFd<'_>, frame: &[u8], flags: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: `frame` is a valid buffer of `frame.len()` bytes for the duration of the call.
        let ret = unsafe {
            libc::send(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                flags | libc::MSG_NOSIGNAL,
            )
        };
        if ret >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// One message without blocking: its full length (`MSG_TRUNC`), or `None` if none is waiting.
fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes during the call.
        let ret = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if let Ok(len) = usize::try_from(ret) {
            return Ok(Some(len));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// Whether the peer closed its end (tells a zero-length message from end of stream).
fn hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(poll(fd, 0)? & libc::POLLHUP != 0)
}

fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    Ok(poll(fd, ms)? & (libc::POLLIN | libc::POLLHUP) != 0)
}

fn poll(fd: BorrowedFd<'_>, timeout_ms: libc::c_int) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd, and we pass a count of 1.
        let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if ret >= 0 {
            return Ok(pfd.revents);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_their_boundaries_both_ways() {
        let (mut backend, host) = PacketBackend::pair().unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(backend.recv(&mut buf).unwrap(), Recv::Empty);
        host.send(b"first").unwrap();
        host.send(b"second frame").unwrap();
        assert_eq!(backend.recv(&mut buf).unwrap(), Recv::Frame(5));
        assert_eq!(&buf[..5], b"first");
        assert_eq!(backend.recv(&mut buf).unwrap(), Recv::Frame(12));
        backend.send(b"to host").unwrap();
        let got = host.recv(&mut buf, Duration::from_secs(5)).unwrap();
        assert_eq!(got, Some(7));
        assert_eq!(&buf[..7], b"to host");
        assert_eq!(host.recv(&mut buf, Duration::from_millis(1)).unwrap(), None);
    }

    #[test]
    fn oversized_frames_report_their_full_length() {
        let (mut backend, host) = PacketBackend::pair().unwrap();
        host.send(&[7u8; 100]).unwrap();
        let mut small = [0u8; 10];
        assert_eq!(backend.recv(&mut small).unwrap(), Recv::Frame(100));
        backend.send(&[1u8; 100]).unwrap();
        let err = host.recv(&mut small, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_closed_peer_is_reported() {
        let (mut backend, host) = PacketBackend::pair().unwrap();
        drop(host);
        let mut buf = [0u8; 16];
        assert_eq!(backend.recv(&mut buf).unwrap(), Recv::Closed);
        assert!(backend.send(b"x").is_err());

        let (backend, host) = PacketBackend::pair().unwrap();
        drop(backend);
        let err = host.recv(&mut buf, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
