//! Thin wrappers over the few libc calls the crate needs.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

/// A random u64 from the kernel (`getrandom(2)`), for ids and temporary names.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    fill_random(&mut buf);
    u64::from_le_bytes(buf)
}

/// Fills `buf` from `getrandom(2)`; falls back to the clock and pid if the call fails.
pub fn fill_random(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which we own.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n <= 0 {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let seed = t.as_nanos() ^ (u128::from(std::process::id()) << 64);
            for (i, b) in buf[done..].iter_mut().enumerate() {
                *b = (seed >> ((i % 16) * 8)) as u8;
            }
            return;
        }
        done += n as usize;
    }
}

/// A new memfd of `len` bytes, sealed against shrinking and growing (a shrink under a mapping
/// would SIGBUS the VMM).
pub fn sealed_memfd(name: &str, len: u64) -> io::Result<File> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `cname` is a valid NUL-terminated string; the flags are plain constants.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len)?;
    // SAFETY: F_ADD_SEALS on a memfd we own with a constant argument.
    let rc = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// `lseek(fd, from, whence)` for SEEK_DATA / SEEK_HOLE; `Ok(None)` at ENXIO (no more data).
pub fn seek(file: &File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek on a valid fd has no memory effects.
    let r = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// An eventfd used to stop a service thread.
pub fn eventfd() -> io::Result<File> {
    // SAFETY: eventfd with constant flags.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Signals an eventfd made by [`eventfd`].
pub fn eventfd_signal(file: &File) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a local buffer to an eventfd we own.
    unsafe { libc::write(file.as_raw_fd(), one.as_ptr().cast(), 8) };
}

/// Polls `fds` for readability for at most `timeout_ms`; returns the revents of each.
pub fn poll_readable(fds: &[i32], timeout_ms: i32) -> io::Result<Vec<i16>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            return Ok(pfds.iter().map(|p| p.revents).collect());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
