//! Per connection: what it is doing ([`Session`]), and reading the next request frame, small
//! (through the scratch buffer) or big (streamed into the one big buffer).

use zygote_guest_proto::agent::{frame_len, ErrorCode, Response, StreamChecksum, LEN_PREFIX};

use super::Agent;
use crate::virtio::vsock::{ConnId, ConnState, CONN_BUF};

/// What a connection is doing.
#[derive(Clone, Copy)]
pub(super) enum Session {
    /// No connection (or one the agent is done with).
    None,
    /// Waiting for the next request frame.
    Idle,
    /// Streaming a large frame of `total` bytes into the big buffer; `have` so far.
    Big { have: usize, total: usize },
    /// Receiving `left` more raw bytes of a `Sink`.
    Sink { left: u64, sum: StreamChecksum },
    /// Sending `left` more bytes of a `Source` from stream offset `offset`.
    Source { left: u64, offset: u64, seed: u64 },
}

impl Agent {
    /// Advances connection `id` as far as its data allows.
    pub(super) fn step(&mut self, id: ConnId) {
        match self.vsock().state(id) {
            ConnState::Established => {}
            ConnState::Free | ConnState::Closing | ConnState::Connecting => {
                self.end_session(id);
                return;
            }
            // The peer is gone and can take no response.
            ConnState::Closed => return self.hang_up(id),
        }
        match self.sessions[id] {
            Session::None => {}
            Session::Idle => self.next_frame(id),
            Session::Big { have, total } => self.step_big(id, have, total),
            Session::Sink { left, sum } => self.step_sink(id, left, sum),
            Session::Source { left, offset, seed } => self.step_source(id, left, offset, seed),
        }
    }

    /// Starts on the next request frame of connection `id`, if enough of it arrived.
    fn next_frame(&mut self, id: ConnId) {
        let mut prefix = [0u8; LEN_PREFIX];
        let vsock = self.vsock();
        let available = vsock.available(id);
        if available < LEN_PREFIX {
            if vsock.at_eof(id) {
                self.hang_up(id);
            }
            return;
        }
        vsock.peek(id, &mut prefix);
        let total = match frame_len(&prefix) {
            Ok(total) => total,
            Err(_) => {
                // The stream cannot be resynchronized: say why, then hang up.
                self.respond(id, &Response::Error(ErrorCode::FrameTooLarge));
                return self.hang_up(id);
            }
        };
        if total <= CONN_BUF {
            if available >= total {
                self.handle_small(id, total);
            }
        } else if self.big_owner.is_none() {
            self.big_owner = Some(id);
            self.sessions[id] = Session::Big { have: 0, total };
        }
    }

    /// Handles a whole frame of `total` bytes (it fits a ring and has arrived), read into the
    /// scratch buffer.
    fn handle_small(&mut self, id: ConnId, total: usize) {
        let n = {
            let Agent {
                devices, scratch, ..
            } = self;
            let vsock = devices.vsock.as_mut().expect("checked at start");
            vsock.recv(id, &mut scratch[..total])
        };
        let frame: &[u8] = {
            let scratch: *const [u8] = &self.scratch[..n];
            // SAFETY: `scratch` lives for the whole run; `handle` never writes it
            // before it is done with the request (Sink and Source use it only on
            // later passes).
            unsafe { &*scratch }
        };
        self.handle(id, frame);
    }

    /// Streams more of a big frame (`have` of `total` bytes so far) into the big buffer; once
    /// all of it is there, handles it.
    fn step_big(&mut self, id: ConnId, have: usize, total: usize) {
        let n = {
            let Agent { devices, big, .. } = self;
            let vsock = devices.vsock.as_mut().expect("checked at start");
            vsock.recv(id, &mut big[have..total])
        };
        let have = have + n;
        if have == total {
            self.end_session(id);
            self.sessions[id] = Session::Idle;
            self.big_owner = Some(id);
            let frame: &[u8] = {
                let big: *const [u8] = &self.big[..total];
                // SAFETY: `big` lives for the whole run and only this connection,
                // which owns it (`big_owner`), uses it until `handle` returns.
                unsafe { &*big }
            };
            self.handle(id, frame);
            if self.big_owner == Some(id) {
                self.big_owner = None;
            }
        } else {
            self.sessions[id] = Session::Big { have, total };
            if self.vsock().at_eof(id) {
                self.hang_up(id);
            }
        }
    }
}
