//! The TAP backend against the kernel, in a network namespace of its own: a frame written to
//! the TAP fd arrives on a packet socket bound to the interface, and the other way round.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use super::frame;
use crate::virtio::net::tap::ifreq_named;
use crate::virtio::net::{NetBackend, Recv, Tap, TapError};

#[test]
fn a_tap_exchanges_frames_with_the_kernel() {
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("skipping a_tap_exchanges_frames_with_the_kernel: /dev/net/tun is missing");
        return;
    }
    // A thread of its own, so the namespace (and the TAP in it) goes away with it.
    std::thread::spawn(|| {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread to a new,
        // empty network namespace.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            ret,
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
        exchange_frames();
    })
    .join()
    .unwrap();
}

fn exchange_frames() {
    let mut tap = Tap::open("zyg%d").unwrap();
    assert!(tap.name().starts_with("zyg"), "{}", tap.name());
    set_up(tap.name());
    let sock = packet_socket(tap.name());

    let to_guest = frame(60, 0x11);
    send(&sock, &to_guest);
    let mut buf = vec![0u8; 2048];
    let got = wait_for(&to_guest, || match tap.recv(&mut buf).unwrap() {
        Recv::Frame(len) => Some(buf[..len].to_vec()),
        Recv::Empty => None,
        Recv::Closed => panic!("TAP closed"),
    });
    assert!(got, "the frame the kernel sent never came out of the TAP");

    let from_guest = frame(60, 0x22);
    tap.send(&from_guest).unwrap();
    let got = wait_for(&from_guest, || recv(&sock));
    assert!(
        got,
        "the frame written to the TAP never reached the packet socket"
    );
}

#[test]
fn invalid_tap_names_are_refused() {
    for name in ["", "sixteen-bytes-xx", "nul\0"] {
        assert!(
            matches!(Tap::open(name), Err(TapError::InvalidName(_))),
            "{name:?}"
        );
    }
}

/// Polls `next` until it yields `want` (other traffic, e.g. IPv6 autoconfiguration, is
/// skipped), for at most five seconds.
fn wait_for(want: &[u8], mut next: impl FnMut() -> Option<Vec<u8>>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match next() {
            Some(frame) if frame == want => return true,
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    false
}

fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> OwnedFd {
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: the fd was just opened and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `ip link set <name> up`.
fn set_up(name: &str) {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
    let mut req = ifreq_named(name).unwrap();
    // SAFETY: SIOCGIFFLAGS fills the flags of the `ifreq` it is given.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    assert_eq!(ret, 0, "SIOCGIFFLAGS: {}", io::Error::last_os_error());
    // SAFETY: SIOCGIFFLAGS set `ifru_flags`, so that union member is initialised.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the `ifreq` it is given.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    assert_eq!(ret, 0, "SIOCSIFFLAGS: {}", io::Error::last_os_error());
}

/// A raw, non-blocking packet socket bound to interface `name`, for every protocol.
fn packet_socket(name: &str) -> OwnedFd {
    let all = (libc::ETH_P_ALL as u16).to_be();
    let sock = socket(
        libc::AF_PACKET,
        libc::SOCK_RAW | libc::SOCK_NONBLOCK,
        all.into(),
    );
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: `cname` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert_ne!(index, 0, "if_nametoindex: {}", io::Error::last_os_error());
    // SAFETY: `sockaddr_ll` is plain C data for which all zeroes is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a valid sockaddr_ll and we pass its exact size.
    let ret = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(ret, 0, "bind: {}", io::Error::last_os_error());
    sock
}

fn send(sock: &OwnedFd, frame: &[u8]) {
    // SAFETY: `frame` is valid for `frame.len()` bytes during the call.
    let ret = unsafe { libc::send(sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        ret,
        frame.len() as isize,
        "send: {}",
        io::Error::last_os_error()
    );
}

fn recv(sock: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    // SAFETY: `buf` is writable for `buf.len()` bytes during the call.
    let ret = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let len = usize::try_from(ret).ok()?;
    buf.truncate(len);
    Some(buf)
}
