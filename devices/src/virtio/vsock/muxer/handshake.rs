//! Host programs connecting to `uds_path`: accepting them, reading their `CONNECT <port>\n`
//! line within [`HANDSHAKE_TIMEOUT`] (at most [`MAX_HANDSHAKES`] at once), and asking the
//! guest to accept the connection.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::super::connection::{ConnState, Connection};
use super::super::packet::Op;
use super::{Muxer, Target, HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, MAX_HANDSHAKES, RESPONSE_TIMEOUT};

/// Longest `CONNECT <port>\n` line accepted.
const MAX_HANDSHAKE_LINE: usize = 32;

/// A host connection whose `CONNECT` line has not arrived whole yet.
pub(super) struct Handshake {
    pub(super) stream: UnixStream,
    line: Vec<u8>,
    /// When it is closed if the line is still incomplete.
    pub(super) deadline: Instant,
}

impl Muxer {
    pub(super) fn accept_all(&mut self) {
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

    /// Starts reading a new connection's `CONNECT` line. When [`MAX_HANDSHAKES`] connections
    /// already wait for theirs, or all [`MAX_CONNECTIONS`] slots are taken and some wait,
    /// the one that has waited longest is closed to make room; with every slot established,
    /// the new connection is refused (closed).
    fn start_handshake(&mut self, stream: UnixStream) {
        if self.handshakes.len() >= MAX_HANDSHAKES
            || self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS
        {
            self.drop_oldest_handshake();
        }
        if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS
            || stream.set_nonblocking(true).is_err()
        {
            return;
        }
        let fd = stream.as_raw_fd();
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let handshake = Handshake {
            stream,
            line: Vec::new(),
            deadline,
        };
        if self.watch(fd, EventSet::IN, Target::Handshake(fd)).is_ok() {
            self.handshakes.insert(fd, handshake);
            self.schedule(deadline);
            // The line usually arrives with the connection: read it now, before a flood of
            // later connections could push this one out.
            self.read_handshake(fd);
        }
    }

    fn drop_oldest_handshake(&mut self) {
        let oldest = self
            .handshakes
            .iter()
            .min_by_key(|(_, hs)| hs.deadline)
            .map(|(fd, _)| *fd);
        if let Some(fd) = oldest {
            self.drop_handshake(fd);
        }
    }

    /// Closes a host connection that never completed its handshake.
    pub(super) fn drop_handshake(&mut self, fd: RawFd) {
        self.unwatch(fd);
        if self.handshakes.remove(&fd).is_some() {
            self.resume_accepting();
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
    pub(super) fn resume_accepting(&mut self) {
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
    pub(super) fn read_handshake(&mut self, fd: RawFd) {
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
            self.next_local_port = self
                .next_local_port
                .wrapping_add(1)
                .max(super::FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    /// Asks the guest to accept a host program's connection, within [`RESPONSE_TIMEOUT`].
    /// Refused (the host sees its socket close) while the guest leaves a full control queue
    /// unread.
    fn connect_to_guest(&mut self, stream: UnixStream, peer_port: u32) {
        if !self.can_take_packet() {
            drop(stream);
            self.resume_accepting();
            return;
        }
        let local_port = self.allocate_local_port(peer_port);
        let key = (local_port, peer_port);
        let mut conn = Connection::new(stream, local_port, peer_port, ConnState::Connecting);
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        conn.deadline = Some(deadline);
        if self.add_conn(key, conn).is_ok() {
            self.queue_control(key, Op::Request, 0);
            self.schedule(deadline);
        } else {
            self.resume_accepting();
        }
    }
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}
