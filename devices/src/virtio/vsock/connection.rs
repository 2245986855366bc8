//! One stream connection between a guest port and a host Unix socket: its state, the credit
//! accounting of both directions (virtio 1.2 §5.10.6.3), and the bytes waiting for the host.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{Header, Op, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Receive buffer the host side of every connection advertises to the guest.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once the host has forwarded this much since the last one it sent.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;

/// Where a connection is in its life. How far each side has shut it down is kept apart, in
/// [`Connection::peer_shutdown`], [`Connection::host_eof`], [`Connection::host_closed`] and
/// [`Connection::told_guest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: `REQUEST` sent to the guest, waiting for `RESPONSE`.
    Connecting,
    /// Data flows, in each direction until that direction is shut down.
    Established,
}

/// A stream connection. `local_port` is the host side's port, `peer_port` the guest's.
pub struct Connection {
    pub(super) stream: UnixStream,
    pub(super) local_port: u32,
    pub(super) peer_port: u32,
    pub(super) state: ConnState,
    /// The host's socket has more to read than was delivered (edge-triggered readiness).
    pub(super) host_readable: bool,
    /// The guest's SHUTDOWN flags so far (`SHUTDOWN_RCV`, `SHUTDOWN_SEND`); they accumulate.
    pub(super) peer_shutdown: u32,
    /// The host program will send no more: its socket reached end of stream.
    pub(super) host_eof: bool,
    /// The host program can take no more: it closed its socket (hang-up) or writing to it
    /// failed. What the guest sends from then on is dropped.
    pub(super) host_closed: bool,
    /// The SHUTDOWN flags sent to the guest so far; they accumulate, like the guest's.
    pub(super) told_guest: u32,
    /// When the muxer stops waiting for the guest (its RESPONSE, its RST after a clean
    /// disconnect) and resets the connection; `None` while nothing is awaited.
    pub(super) deadline: Option<Instant>,
    /// The host socket's write side was shut (the guest shut SEND and all it sent was written).
    host_write_shut: bool,
    /// The host socket's read side was shut (the guest shut RCV), so the host program's
    /// writes fail instead of piling up unread.
    host_read_shut: bool,
    /// A CREDIT_UPDATE is owed to the guest (it asked, or much was forwarded since the last).
    /// One flag, not a queued packet per request, so a guest cannot pile them up.
    pub(super) credit_update_pending: bool,
    /// The guest's receive buffer size and how much of it the guest has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest so far (wrapping).
    tx_cnt: u32,
    /// Bytes received from the guest and written to the host socket (wrapping).
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: u32,
    /// The handshake reply (`OK <port>\n`) not yet written; it is not guest data.
    reply: Vec<u8>,
    /// Bytes from the guest not yet written to the host socket.
    to_host: VecDeque<u8>,
}

impl Connection {
    /// A connection over `stream` in `state`, with the guest's credit from `peer` (if known).
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            host_readable: false,
            peer_shutdown: 0,
            host_eof: false,
            host_closed: false,
            told_guest: 0,
            deadline: None,
            host_write_shut: false,
            host_read_shut: false,
            credit_update_pending: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            reply: Vec::new(),
            to_host: VecDeque::new(),
        }
    }

    /// Records the guest's credit from any packet it sent on this connection.
    pub fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
    }

    /// How many bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// A header from the host side of this connection to the guest.
    pub fn header(&self, guest_cid: u64, op: Op, len: u32, flags: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Notes that a header carrying the current `fwd_cnt` went to the guest (which also
    /// settles a pending credit update).
    pub fn credit_sent(&mut self) {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.credit_update_pending = false;
    }

    /// Whether the guest should be told about freed buffer space.
    pub fn wants_credit_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD
    }

    /// Queues bytes for the host socket. Fails if the guest overran the credit it was given.
    pub fn push_to_host(&mut self, data: &[u8]) -> Result<(), CreditOverrun> {
        if self.to_host.len() + data.len() > CONN_BUF_ALLOC as usize {
            return Err(CreditOverrun);
        }
        self.to_host.extend(data);
        Ok(())
    }

    /// Queues the handshake reply for a host-initiated connection (not counted as guest data).
    pub fn push_reply(&mut self, reply: &[u8]) {
        self.reply.extend_from_slice(reply);
    }

    /// Writes as much queued data to the host socket as it takes now: the handshake reply
    /// first, then the guest's data (which is what `fwd_cnt` counts). Once the host program
    /// can take nothing more ([`Connection::host_closed`]) queued data is dropped instead.
    pub fn flush_to_host(&mut self) -> io::Result<()> {
        if self.host_closed {
            self.reply.clear();
            self.to_host.clear();
            return Ok(());
        }
        while !self.reply.is_empty() {
            match send_nosignal(&self.stream, &self.reply) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => drop(self.reply.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match send_nosignal(&self.stream, front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether everything the guest sent has reached the host socket.
    pub fn flushed(&self) -> bool {
        self.reply.is_empty() && self.to_host.is_empty()
    }

    /// Whether the host socket is hung up both ways (the host program closed it), so it takes
    /// no more data either. Only meaningful once reading it reached end of stream.
    pub fn host_hung_up(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for an open fd, and the count is 1; a zero timeout
        // never blocks.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        ready > 0 && pfd.revents & libc::POLLHUP != 0
    }

    /// Whether bytes the host program sent are waiting in its socket. Used once it hung up
    /// before the guest accepted: they must still reach the guest.
    pub fn host_data_waiting(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: the buffer is one valid byte for recv to fill; MSG_PEEK leaves the data in
        // the socket and MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n > 0
    }

    /// Whether the guest said it will send no more (SHUTDOWN with `SHUTDOWN_SEND`).
    pub fn guest_send_shut(&self) -> bool {
        self.peer_shutdown & SHUTDOWN_SEND != 0
    }

    /// Once the guest shut its sending side and everything it sent reached the host socket,
    /// shuts the socket's write side, so the host program reads end of stream (and can still
    /// answer).
    pub fn shut_host_write_when_flushed(&mut self) -> io::Result<()> {
        if self.guest_send_shut() && self.flushed() && !self.host_write_shut {
            self.stream.shutdown(Shutdown::Write)?;
            self.host_write_shut = true;
        }
        Ok(())
    }

    /// Once the guest said it will receive no more, shuts the host socket's read side: the
    /// host program's writes then fail (`EPIPE`) rather than wait for a reader that is gone.
    pub fn shut_host_read_if_guest_rcv_shut(&mut self) {
        if self.peer_shutdown & SHUTDOWN_RCV != 0 && !self.host_read_shut {
            // Failing (the host program already closed) changes nothing: nobody writes.
            let _ = self.stream.shutdown(Shutdown::Read);
            self.host_read_shut = true;
        }
    }

    /// Whether nothing more goes from the host to the guest: the host's stream ended (and
    /// the guest was told) or the guest will receive no more.
    pub fn host_to_guest_done(&self) -> bool {
        self.host_eof || self.peer_shutdown & SHUTDOWN_RCV != 0
    }

    /// Whether the guest was told both directions are shut (a clean disconnect the guest
    /// answers with RST, virtio 1.2 §5.10.6.5).
    pub fn told_guest_all(&self) -> bool {
        self.told_guest & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND
    }

    /// Whether the guest shut both of its directions (it closed its socket).
    pub fn guest_shut_all(&self) -> bool {
        self.peer_shutdown & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND
    }

    /// Whether both directions are done, so the connection ends with RST (virtio 1.2
    /// §5.10.6.5): the guest will send no more and all it sent was written, and either it will
    /// receive no more or the host has nothing more to send.
    pub fn finished(&self) -> bool {
        let guest_done = self.guest_send_shut() && self.flushed();
        guest_done && (self.peer_shutdown & SHUTDOWN_RCV != 0 || self.host_eof)
    }

    /// Reads up to `buf.len()` bytes (bounded by the guest's credit) from the host socket.
    /// `Ok(None)` when nothing is waiting; `Ok(Some(0))` at end of stream.
    pub fn read_from_host(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let want = buf.len().min(self.peer_credit() as usize);
        if want == 0 {
            return Ok(None);
        }
        loop {
            match self.stream.read(&mut buf[..want]) {
                Ok(n) => {
                    self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                    return Ok(Some(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The host program closed its socket without reading all we wrote: Linux
                // reports that after the last byte it sent, in place of end of stream.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.host_closed = true;
                    return Ok(Some(0));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether data from the host could go to the guest now.
    pub fn can_send_to_guest(&self) -> bool {
        self.state == ConnState::Established
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && !self.host_eof
            && self.host_readable
            && self.peer_credit() > 0
    }
}

/// `send(2)` with `MSG_NOSIGNAL`: a host program that closed its socket makes this fail with
/// `EPIPE` instead of raising `SIGPIPE` in the VMM's process.
fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes and the fd is open.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The guest sent more than the buffer space the host advertised.
#[derive(Debug, PartialEq, Eq)]
pub struct CreditOverrun;

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (
            Connection::new(ours, 1000, 2000, ConnState::Established),
            theirs,
        )
    }

    #[test]
    fn credit_limits_what_goes_to_the_guest() {
        let (mut conn, mut host) = pair();
        host.write_all(b"hello world").unwrap();
        conn.host_readable = true;
        let mut buf = [0u8; 64];
        // No credit yet: nothing is read.
        assert_eq!(conn.read_from_host(&mut buf).unwrap(), None);
        let credit = Header::from_bytes(&[0; 44]);
        conn.update_peer_credit(&Header {
            buf_alloc: 5,
            ..credit
        });
        assert_eq!(conn.read_from_host(&mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(conn.peer_credit(), 0);
        conn.update_peer_credit(&Header {
            buf_alloc: 5,
            fwd_cnt: 5,
            ..credit
        });
        assert_eq!(conn.read_from_host(&mut buf).unwrap(), Some(5));
    }

    #[test]
    fn guest_data_is_flushed_and_counted_and_overruns_are_caught() {
        let (mut conn, mut host) = pair();
        conn.push_to_host(b"abc").unwrap();
        conn.push_reply(b"OK 1000\n");
        conn.flush_to_host().unwrap();
        let mut got = [0u8; 11];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"OK 1000\nabc");
        assert!(conn.flushed());
        let big = vec![0u8; CONN_BUF_ALLOC as usize + 1];
        assert_eq!(conn.push_to_host(&big), Err(CreditOverrun));
        let header = conn.header(3, Op::CreditUpdate, 0, 0);
        assert_eq!(header.fwd_cnt, 3);
        assert_eq!(header.buf_alloc, CONN_BUF_ALLOC);
    }
}
