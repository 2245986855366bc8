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
//! inner epoll whose fd the VMM's event loop watches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{ConnState, Connection};
use super::packet::{Header, Op, HOST_CID, TYPE_STREAM};
use super::socket_file::SocketFile;

/// Most connections (established or handshaking) one device keeps. Each holds a host fd, so
/// this stays well below the usual soft limit of 1024 open files.
pub const MAX_CONNECTIONS: usize = 512;
/// Most control packets (answers to the guest's packets, connection requests) that wait for rx
/// buffers. While this many wait, the device takes no more packets from the guest (they stay
/// in its tx queue): a guest that posts no rx buffers is throttled, and host memory stays
/// bounded. Host events add at most a few per connection on top (see [`Muxer::queue_control`]).
pub const CONTROL_QUEUE_LEN: usize = 256;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_HANDSHAKE_LINE: usize = 32;
/// First port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A connection key: (host-side port, guest-side port).
type Key = (u32, u32);

enum Target {
    Listener,
    Handshake(RawFd),
    Conn(Key),
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
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
        };
        let fd = muxer.listener.as_raw_fd();
        muxer.watch(fd, EventSet::IN, Target::Listener)?;
        Ok(muxer)
    }

    /// The inner epoll fd: readable when some host socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
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

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.start_handshake(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // Out of fds (EMFILE) or similar: the connection stays in the backlog and
                    // the listener stays readable, so retrying now would only spin.
                    self.pause_accepting();
                    return;
                }
            }
        }
    }

    fn start_handshake(&mut self, stream: UnixStream) {
        if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS
            || stream.set_nonblocking(true).is_err()
        {
            return;
        }
        let fd = stream.as_raw_fd();
        let handshake = Handshake {
            stream,
            line: Vec::new(),
        };
        if self.watch(fd, EventSet::IN, Target::Handshake(fd)).is_ok() {
            self.handshakes.insert(fd, handshake);
        }
    }

    /// Stops watching the listener until a connection closes ([`Muxer::resume_accepting`]).
    fn pause_accepting(&mut self) {
        if self.set_listener_events(EventSet::empty()) {
            self.accepting = false;
        }
    }

    /// Watches the listener again after [`Muxer::pause_accepting`]; connections that waited
    /// in the backlog are then reported by the epoll.
    fn resume_accepting(&mut self) {
        if !self.accepting && self.set_listener_events(EventSet::IN) {
            self.accepting = true;
        }
    }

    fn set_listener_events(&mut self, events: EventSet) -> bool {
        let fd = self.listener.as_raw_fd();
        let Some(&token) = self.tokens.get(&fd) else {
            return false;
        };
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
            .is_ok()
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time, so no stream data is consumed.
    fn read_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8];
        let outcome = loop {
            match hs.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&hs.line),
                Ok(1) if hs.line.len() < MAX_HANDSHAKE_LINE => hs.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break None,
            }
        };
        self.unwatch(fd);
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        match outcome {
            Some(port) => self.connect_to_guest(hs.stream, port),
            None => {
                drop(hs);
                self.resume_accepting();
            }
        }
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    /// Asks the guest to accept a host program's connection. Refused (the host sees its
    /// socket close) while the guest leaves a full control queue unread.
    fn connect_to_guest(&mut self, stream: UnixStream, peer_port: u32) {
        if !self.can_take_packet() {
            drop(stream);
            self.resume_accepting();
            return;
        }
        let local_port = self.allocate_local_port(peer_port);
        let key = (local_port, peer_port);
        let conn = Connection::new(stream, local_port, peer_port, ConnState::Connecting);
        if self.add_conn(key, conn).is_ok() {
            self.queue_control(key, Op::Request, 0);
        } else {
            self.resume_accepting();
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
        let hung_up = set.intersects(EventSet::READ_HANG_UP | EventSet::HANG_UP);
        if hung_up && conn.state == ConnState::Connecting {
            // The host program gave up before the guest answered: drop the half-made
            // connection (and tell the guest) rather than keep it until the guest replies.
            self.reset(key);
            return;
        }
        if hung_up || set.contains(EventSet::IN) {
            conn.host_readable = true;
        }
        if set.contains(EventSet::OUT) {
            self.flush(key);
        }
    }

    /// Writes what is queued for the host and shuts the socket's write side once the guest
    /// shut its sending side and all it sent is written. Resets the connection when writing
    /// fails (the host can take nothing more) and when both directions are done.
    fn flush(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let written = conn
            .flush_to_host()
            .and_then(|()| conn.shut_host_write_when_flushed());
        if written.is_err() || conn.finished() {
            self.reset(key);
        } else if conn.wants_credit_update() {
            conn.credit_update_pending = true;
        }
    }

    /// Queues a packet of connection `key` for the guest.
    ///
    /// The guest's own packets add at most one each, and [`Muxer::can_take_packet`] stops
    /// taking them at [`CONTROL_QUEUE_LEN`]. Host events add at most a REQUEST (refused while
    /// the queue is full), a SHUTDOWN and an RST per connection, and a connection slot is only
    /// reused after the guest's packets, so the queue stays bounded.
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

fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

mod guest;
mod rx;

#[cfg(test)]
mod tests;

#[cfg(test)]
use rx::RxPacket;
