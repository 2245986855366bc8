//! The host side of virtio-vsock: guest stream connections multiplexed onto Unix sockets, in
//! the hybrid scheme Firecracker uses so existing tooling works.
//!
//! - Host to guest: a program connects to the socket at `uds_path` and writes
//!   `CONNECT <port>\n`; once the guest accepts, it reads `OK <host port>\n` and the stream is
//!   connected to guest port `<port>`.
//! - Guest to host: a guest connection to host port `P` is connected to the Unix socket at
//!   `<uds_path>_<P>`, which a host program listens on.
//!
//! All host sockets are non-blocking and registered (edge-triggered for connections) on one
//! inner epoll whose fd the VMM's event loop watches, together with a timer for the deadlines
//! below (`expiry`).
//!
//! Nothing waits on a peer without a bound: a host program has [`HANDSHAKE_TIMEOUT`] to send
//! its `CONNECT` line and at most [`MAX_HANDSHAKES`] connections wait for theirs; the guest
//! has [`RESPONSE_TIMEOUT`] to answer a REQUEST and [`CLOSE_TIMEOUT`] to answer a clean
//! disconnect with RST (virtio 1.2 §5.10.6.5), after which the muxer sends its own RST.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnState, Connection};
use super::packet::{Header, Op, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::socket_file::SocketFile;
use handshake::Handshake;

/// Most connections (established or handshaking) one device keeps. Each holds a host fd, so
/// this stays well below the usual soft limit of 1024 open files.
pub const MAX_CONNECTIONS: usize = 512;
/// Most control packets (answers to the guest's packets, connection requests) that wait for rx
/// buffers. While this many wait, the device takes no more packets from the guest (they stay
/// in its tx queue): a guest that posts no rx buffers is throttled, and host memory stays
/// bounded. Host events add at most a few per connection on top (see [`Muxer::queue_control`]).
pub const CONTROL_QUEUE_LEN: usize = 256;
/// Longest a host program's connection may wait for its whole `CONNECT <port>\n` line, from
/// being accepted; then it is closed. Host programs send the line right after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most host connections waiting for their `CONNECT` line. A connection arriving beyond this
/// closes the one that has waited longest, so a program that opens connections and stays
/// silent cannot keep others out (it holds at most this many slots, each for at most
/// [`HANDSHAKE_TIMEOUT`]).
pub const MAX_HANDSHAKES: usize = 64;
/// Longest the guest may take to answer a host connection's REQUEST (with RESPONSE or RST);
/// then the muxer cancels it with RST and closes the host socket (Firecracker allows 2 s).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection waits for the guest's RST once the guest was told both directions
/// are shut (virtio 1.2 §5.10.6.5: RST "within an implementation-specific amount of time"),
/// and for what the guest sent before it shut both of its own to be written to the host
/// socket. Then the muxer sends RST itself and the connection is gone.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// First port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A connection key: (host-side port, guest-side port).
type Key = (u32, u32);

enum Target {
    Listener,
    Timer,
    Handshake(RawFd),
    Conn(Key),
}

/// Multiplexes the guest's stream connections onto host Unix sockets.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    /// Removes the listening socket's file when the muxer goes, if it is still ours.
    _socket_file: SocketFile,
    listener: UnixListener,
    epoll: Epoll,
    targets: HashMap<u64, Target>,
    tokens: HashMap<RawFd, u64>,
    next_token: u64,
    handshakes: HashMap<RawFd, Handshake>,
    conns: BTreeMap<Key, Connection>,
    /// Where the round-robin over connections with data for the guest resumes.
    cursor: Key,
    /// Control packets waiting for an rx buffer (credit updates are flags on connections).
    control: VecDeque<Header>,
    next_local_port: u32,
    /// Whether the listener is watched; accepting pauses when `accept` fails (e.g. out of fds)
    /// and resumes when a connection closes.
    accepting: bool,
    /// Fires at the earliest deadline of a handshake or connection (see `expiry`).
    timer: TimerFd,
    /// The deadline the timer is armed for, if any.
    timer_armed_for: Option<Instant>,
}

impl Muxer {
    /// Listens at `uds_path` for host connections to guest `guest_cid`. A stale socket file
    /// there is replaced; any other file is an error.
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Self> {
        let (listener, socket_file) = SocketFile::bind(uds_path)?;
        let mut muxer = Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            _socket_file: socket_file,
            listener,
            epoll: Epoll::new()?,
            targets: HashMap::new(),
            tokens: HashMap::new(),
            next_token: 0,
            handshakes: HashMap::new(),
            conns: BTreeMap::new(),
            cursor: (0, 0),
            control: VecDeque::with_capacity(CONTROL_QUEUE_LEN),
            next_local_port: FIRST_LOCAL_PORT,
            accepting: true,
            timer: expiry::nonblocking_timer()?,
            timer_armed_for: None,
        };
        let fd = muxer.listener.as_raw_fd();
        muxer.watch(fd, EventSet::IN, Target::Listener)?;
        let fd = muxer.timer.as_raw_fd();
        muxer.watch(fd, EventSet::IN, Target::Timer)?;
        Ok(muxer)
    }

    /// The inner epoll fd: readable when some host socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Host ports for new host connections start at `seed` folded into the host port range.
    pub fn start_ports_at(&mut self, seed: u32) {
        self.next_local_port = FIRST_LOCAL_PORT | (seed & (FIRST_LOCAL_PORT - 1));
    }

    /// Drops every connection (the device was reset); host programs see their sockets close.
    pub fn reset_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key);
        }
        self.control.clear();
    }

    /// The guest's context ID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Number of connections (established, connecting or closing).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether the muxer can take another packet from the guest: each one adds at most one
    /// control packet, and those wait until the guest posts rx buffers.
    pub fn can_take_packet(&self) -> bool {
        self.control.len() < CONTROL_QUEUE_LEN
    }

    fn watch(&mut self, fd: RawFd, events: EventSet, target: Target) -> io::Result<()> {
        let token = self.next_token;
        self.next_token += 1;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))?;
        self.targets.insert(token, target);
        self.tokens.insert(fd, token);
        Ok(())
    }

    fn unwatch(&mut self, fd: RawFd) {
        if let Some(token) = self.tokens.remove(&fd) {
            self.targets.remove(&token);
        }
        // The fd is closed right after; failing to remove it first changes nothing.
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Handles everything the host sockets have ready, without blocking.
    pub fn process_events(&mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            for event in &events[..n] {
                self.handle_event(event.data(), event.event_set());
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn handle_event(&mut self, token: u64, set: EventSet) {
        match self.targets.get(&token) {
            Some(Target::Listener) => self.accept_all(),
            Some(Target::Timer) => self.timer_fired(),
            Some(Target::Handshake(fd)) => {
                let fd = *fd;
                self.read_handshake(fd);
            }
            Some(Target::Conn(key)) => {
                let key = *key;
                self.conn_ready(key, set);
            }
            None => {}
        }
    }

    fn add_conn(&mut self, key: Key, conn: Connection) -> io::Result<()> {
        let events =
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP;
        self.watch(conn.stream.as_raw_fd(), events, Target::Conn(key))?;
        self.conns.insert(key, conn);
        Ok(())
    }

    fn remove_conn(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            self.unwatch(conn.stream.as_raw_fd());
            drop(conn);
            self.resume_accepting();
        }
    }

    /// Resets a connection: tells the guest and closes the host socket.
    pub fn reset(&mut self, key: Key) {
        if self.conns.contains_key(&key) {
            self.queue_control(key, Op::Rst, 0);
            self.remove_conn(key);
        }
    }

    fn conn_ready(&mut self, key: Key, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            conn.host_readable = true;
        }
        if set.contains(EventSet::HANG_UP) {
            // Closed both ways: the host program can take nothing more.
            conn.host_closed = true;
            if conn.state == ConnState::Connecting && !conn.host_data_waiting() {
                // It gave up before the guest answered and left nothing to deliver: cancel
                // the request now rather than keep it until the guest replies.
                self.reset(key);
                return;
            }
        }
        // A half-close (READ_HANG_UP alone) changes nothing yet: what the host sent is
        // delivered once the guest can take it, and then its end of stream (`rx`).
        self.flush(key);
    }

    /// Writes what is queued for the host and shuts the socket's write side once the guest
    /// shut its sending side and all it sent is written; a write that fails means the host
    /// program can take nothing more. Then [`Muxer::settle`].
    fn flush(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let written = conn
            .flush_to_host()
            .and_then(|()| conn.shut_host_write_when_flushed());
        if written.is_err() {
            conn.host_closed = true;
            // Drops what can no longer be written.
            let _ = conn.flush_to_host();
        }
        self.settle(key);
    }

    /// Acts on how far both sides have shut connection `key` down (virtio 1.2 §5.10.6.5):
    /// - both directions done by the guest's doing (it shut SEND and all it sent was written,
    ///   and it shut RCV or the host's stream ended): RST, the connection is gone;
    /// - the host program can take nothing more and nothing more goes to the guest (its
    ///   stream ended, or the guest shut RCV): SHUTDOWN(RCV|SEND), a clean disconnect the
    ///   guest answers with RST within [`CLOSE_TIMEOUT`];
    /// - the host's stream ended (a half-close) and the guest was not told yet:
    ///   SHUTDOWN(SEND), and the guest can still answer;
    /// - the guest shut both directions but what it sent is not all written yet: that has
    ///   [`CLOSE_TIMEOUT`].
    ///
    /// Only an established connection is settled; a connecting one waits for the guest's
    /// answer first.
    fn settle(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state != ConnState::Established {
            return;
        }
        if conn.finished() {
            self.reset(key);
            return;
        }
        let tell = if conn.host_closed && conn.host_to_guest_done() {
            SHUTDOWN_RCV | SHUTDOWN_SEND
        } else if conn.host_eof {
            SHUTDOWN_SEND
        } else {
            0
        };
        if tell & !conn.told_guest != 0 {
            conn.told_guest |= tell;
            let flags = conn.told_guest;
            self.queue_control(key, Op::Shutdown, flags);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.wants_credit_update() {
            conn.credit_update_pending = true;
        }
        let awaiting_close = conn.told_guest_all() || conn.guest_shut_all();
        if awaiting_close && conn.deadline.is_none() {
            let deadline = Instant::now() + CLOSE_TIMEOUT;
            conn.deadline = Some(deadline);
            self.schedule(deadline);
        }
    }

    /// Queues a packet of connection `key` for the guest.
    ///
    /// The guest's own packets add at most one each, and [`Muxer::can_take_packet`] stops
    /// taking them at [`CONTROL_QUEUE_LEN`]. Host events add at most a REQUEST (refused while
    /// the queue is full), two SHUTDOWNs (SEND, then RCV|SEND) and an RST per connection, and
    /// a connection slot is only reused after the guest's packets, so the queue stays bounded.
    fn queue_control(&mut self, key: Key, op: Op, flags: u32) {
        if let Some(conn) = self.conns.get_mut(&key) {
            self.control
                .push_back(conn.header(self.guest_cid, op, 0, flags));
            conn.credit_sent();
        }
    }

    fn queue_rst_reply(&mut self, to: &Header) {
        self.control.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: Op::Rst as u16,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }
}

mod expiry;
pub(super) mod guest;
mod handshake;
mod rx;

#[cfg(test)]
mod tests;

#[cfg(test)]
use rx::RxPacket;
