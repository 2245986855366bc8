//! The TAP backend: a Linux TAP interface, opened through `/dev/net/tun`.
//!
//! The device is opened with `IFF_TAP | IFF_NO_PI` and without `IFF_VNET_HDR`: the device
//! offers no offloads, so the virtio-net header carries nothing the kernel needs, and frames
//! on the TAP fd are plain Ethernet frames (the device strips the header on transmit and writes
//! a zero one on receive). The fd is non-blocking and closed on drop; a TAP the open created
//! disappears then, unless it was made persistent beforehand (`ip tuntap add`).

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::backend::{NetBackend, Recv};

/// Why a TAP device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long for an interface name (15 bytes) or contains a NUL.
    #[error("invalid TAP interface name {0:?}: 1 to 15 bytes, no NUL")]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened (missing `tun` module, or not permitted).
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// The kernel refused to attach to or create the interface (`TUNSETIFF`): not permitted,
    /// or an interface of that name exists and is not a TAP this user may use.
    #[error("cannot attach to TAP interface {name:?}: {source}")]
    SetInterface {
        /// The requested name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// An open TAP interface; frames are plain Ethernet frames, without packet information.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the TAP interface `name`, creating it if it does not exist (which needs
    /// `CAP_NET_ADMIN`). A `%d` in the name lets the kernel pick a free number (`"zyg%d"`).
    /// The interface still has to be brought up (`ip link set <name> up`) to carry frames.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let mut req = ifreq_named(name).ok_or_else(|| TapError::InvalidName(name.to_owned()))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is, and the fd is
        // an open /dev/net/tun.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            return Err(TapError::SetInterface {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: the kernel wrote the interface's NUL-terminated name into `ifr_name`.
        let name = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) };
        Ok(Tap {
            file,
            name: name.to_string_lossy().into_owned(),
        })
    }

    /// The interface's name, as the kernel assigned it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// An `ifreq` with `ifr_name` set, or `None` for a name the kernel cannot take.
pub(super) fn ifreq_named(name: &str) -> Option<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return None;
    }
    // SAFETY: `ifreq` is plain C data (arrays, integers, pointers in a union) for which all
    // zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Some(req)
}

impl NetBackend for Tap {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        loop {
            match self.file.write(frame) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Recv> {
        loop {
            match self.file.read(buf) {
                Ok(len) => return Ok(Recv::Frame(len)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Recv::Empty),
                Err(e) => return Err(e),
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
