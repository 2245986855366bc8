//! What a virtio-net device needs from the host side of its link.

use std::io;
use std::os::fd::RawFd;

/// The outcome of a non-blocking receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// A frame of this many bytes arrived. If that is more than the buffer held, the frame
    /// was truncated (backends that can tell report the full length) and must be dropped.
    Frame(usize),
    /// Nothing is waiting.
    Empty,
    /// The other side is gone; nothing will ever arrive again.
    Closed,
}

/// The host side of a virtio-net link: whole Ethernet frames in, whole frames out.
pub trait NetBackend: Send {
    /// Sends one frame without blocking; `ErrorKind::WouldBlock` when the backend is full.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Receives one frame into `buf` without blocking.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Recv>;

    /// An fd that is readable while a frame is waiting in [`NetBackend::recv`].
    fn raw_fd(&self) -> RawFd;
}
