//! `Sink` and `Source`: raw byte streams outside frames, advanced a chunk per pass so they
//! never hold the other connections up.

use zygote_guest_proto::agent::{fill_source, Response, StreamChecksum};

use super::session::Session;
use super::Agent;
use crate::virtio::vsock::ConnId;

/// Bytes of the `Source` stream generated per pass.
pub(super) const SOURCE_CHUNK: usize = 64 * 1024;

impl Agent {
    /// After `Sink { len }` (`len` > 0): the next `len` bytes are the stream.
    pub(super) fn start_sink(&mut self, id: ConnId, len: u64) {
        self.sessions[id] = Session::Sink {
            left: len,
            sum: StreamChecksum::new(),
        };
    }

    /// Answers `Source { len, seed }`, then sends the stream on later passes.
    pub(super) fn start_source(&mut self, id: ConnId, len: u64, seed: u64) {
        self.respond(id, &Response::Sourcing { len });
        if len > 0 && matches!(self.sessions[id], Session::Idle) {
            self.sessions[id] = Session::Source {
                left: len,
                offset: 0,
                seed,
            };
        }
    }

    /// Takes what arrived of a `Sink` (`left` bytes to go); answers `Sunk` after the last.
    pub(super) fn step_sink(&mut self, id: ConnId, left: u64, mut sum: StreamChecksum) {
        let want = (left.min(self.scratch.len() as u64)) as usize;
        let n = {
            let Agent {
                devices, scratch, ..
            } = self;
            let vsock = devices.vsock.as_mut().expect("checked at start");
            vsock.recv(id, &mut scratch[..want])
        };
        sum.update(&self.scratch[..n]);
        let left = left - n as u64;
        if left == 0 {
            self.sessions[id] = Session::Idle;
            let response = Response::Sunk {
                len: sum.len(),
                checksum: sum.value(),
            };
            self.respond(id, &response);
        } else {
            self.sessions[id] = Session::Sink { left, sum };
            if self.vsock().at_eof(id) {
                self.hang_up(id);
            }
        }
    }

    /// Sends up to [`SOURCE_CHUNK`] more bytes of a `Source` (`left` to go from `offset`), as
    /// many as the peer's credit takes now.
    pub(super) fn step_source(&mut self, id: ConnId, left: u64, offset: u64, seed: u64) {
        let n = (left.min(SOURCE_CHUNK as u64)) as usize;
        fill_source(seed, offset, &mut self.scratch[..n]);
        let sent = {
            let Agent {
                devices, scratch, ..
            } = self;
            let vsock = devices.vsock.as_mut().expect("checked at start");
            vsock.send(id, &scratch[..n])
        };
        match sent {
            Ok(sent) if sent as u64 == left => self.sessions[id] = Session::Idle,
            Ok(sent) => {
                self.sessions[id] = Session::Source {
                    left: left - sent as u64,
                    offset: offset + sent as u64,
                    seed,
                }
            }
            Err(_) => self.hang_up(id),
        }
    }
}
