//! Packets from the guest (the tx queue): connection requests, data, credit and teardown.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::super::connection::{ConnState, Connection};
use super::super::packet::{Header, Op, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::{Key, Muxer, MAX_CONNECTIONS};

impl Muxer {
    /// Handles one packet the guest sent. Anything malformed or out of place is answered with
    /// `RST` (or dropped, when it is not even addressed from this guest to the host).
    pub fn recv_from_guest(&mut self, header: &Header, payload: &[u8]) {
        if header.src_cid != self.guest_cid || header.dst_cid != HOST_CID {
            return;
        }
        if header.type_ != TYPE_STREAM {
            self.queue_rst_reply(header);
            return;
        }
        let key: Key = (header.dst_port, header.src_port);
        let Some(op) = header.op() else {
            self.reset_or_refuse(key, header);
            return;
        };
        if op == Op::Request {
            self.guest_connect(key, header);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if op != Op::Rst {
                self.queue_rst_reply(header);
            }
            return;
        };
        conn.update_peer_credit(header);
        match op {
            Op::Response => self.guest_accepted(key),
            Op::Rw => self.guest_data(key, payload),
            Op::CreditRequest => conn.credit_update_pending = true,
            Op::CreditUpdate => {}
            Op::Shutdown => self.guest_shutdown(key, header.flags),
            Op::Rst => self.remove_conn(key),
            Op::Request => {}
        }
    }

    /// A packet from the guest could not be read whole: reset its connection (the stream has
    /// lost data) or, with no connection, answer RST. Packets not from this guest to the host
    /// are dropped, as in [`Muxer::recv_from_guest`].
    pub fn reject(&mut self, header: &Header) {
        if header.src_cid != self.guest_cid || header.dst_cid != HOST_CID {
            return;
        }
        self.reset_or_refuse((header.dst_port, header.src_port), header);
    }

    fn reset_or_refuse(&mut self, key: Key, header: &Header) {
        if self.conns.contains_key(&key) {
            self.reset(key);
        } else {
            self.queue_rst_reply(header);
        }
    }

    /// The guest connects to host port `key.0`: connect to `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: Key, header: &Header) {
        if self.conns.contains_key(&key) {
            self.reset(key);
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            self.queue_rst_reply(header);
            return;
        }
        let mut path = PathBuf::from(&self.uds_path).into_os_string();
        path.push(format!("_{}", key.0));
        let Ok(stream) = connect_nonblocking(Path::new(&path)) else {
            self.queue_rst_reply(header);
            return;
        };
        let mut conn = Connection::new(stream, key.0, key.1, ConnState::Established);
        conn.update_peer_credit(header);
        // A new socket may already hold data: check it once the guest can take it.
        conn.host_readable = true;
        if self.add_conn(key, conn).is_ok() {
            self.queue_control(key, Op::Response, 0);
        } else {
            self.queue_rst_reply(header);
        }
    }

    /// The guest accepted a host-initiated connection: tell the host program (unless it
    /// already closed its socket; what it sent before still goes to the guest).
    fn guest_accepted(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state != ConnState::Connecting {
            self.reset(key);
            return;
        }
        conn.state = ConnState::Established;
        conn.deadline = None;
        conn.host_readable = true;
        conn.push_reply(format!("OK {}\n", key.0).as_bytes());
        self.flush(key);
    }

    fn guest_data(&mut self, key: Key, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        // Data after the guest's own SHUTDOWN(SEND), or after it was told the host receives
        // no more, breaks the protocol, like a credit overrun.
        if conn.state != ConnState::Established
            || conn.guest_send_shut()
            || conn.told_guest & SHUTDOWN_RCV != 0
        {
            self.reset(key);
            return;
        }
        if conn.host_closed {
            // Sent before the guest could know the host program is gone: nobody reads it.
            return;
        }
        if conn.push_to_host(payload).is_err() {
            self.reset(key);
            return;
        }
        self.flush(key);
    }

    /// The guest shuts one or both directions down (flags accumulate; virtio 1.2 §5.10.6.5).
    /// After SEND, what it sent is written and then the host socket's write side is shut,
    /// while data from the host still flows to the guest; after RCV, nothing more goes to the
    /// guest and the host socket's read side is shut. See [`Muxer::settle`] for the end. A
    /// SHUTDOWN before the guest accepted the connection is out of place: RST.
    fn guest_shutdown(&mut self, key: Key, flags: u32) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state != ConnState::Established {
            self.reset(key);
            return;
        }
        conn.peer_shutdown |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        conn.shut_host_read_if_guest_rcv_shut();
        self.flush(key);
    }
}

/// Connects to the Unix socket at `path` without ever blocking: a listener whose backlog is
/// full (a guest opening connections nobody accepts, a muxer at its connection limit) refuses
/// at once with `EAGAIN` instead of stalling the caller (the device's event loop, or a host
/// client with a deadline). The returned stream is non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: `sockaddr_un` is plain C data for which all zeroes is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid `sockaddr_un` and `len` does not exceed its size.
    let ret = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}
