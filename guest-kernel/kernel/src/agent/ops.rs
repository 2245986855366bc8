//! Requests: decoding a frame, carrying the request out (or handing it to the handler that
//! knows it) and sending the response.

use zygote_guest_proto::agent::{
    DecodeError, EncodeError, ErrorCode, GuestKind, Request, Response, StreamChecksum,
    PROTOCOL_VERSION,
};

use super::memory::counter_add;
use super::Agent;
use crate::exit::exit;
use crate::virtio::vsock::ConnId;

/// How long a response may wait for the host's credit before the connection is dropped.
const SEND_TIMEOUT_MS: u64 = 10_000;

impl Agent {
    /// Decodes and carries out one request frame, sending its response.
    pub(super) fn handle(&mut self, id: ConnId, frame: &[u8]) {
        let request = match Request::decode(frame) {
            Ok((request, _)) => request,
            Err(DecodeError::UnknownOpcode(_)) => {
                return self.respond(id, &Response::Error(ErrorCode::UnknownOpcode))
            }
            Err(_) => return self.respond(id, &Response::Error(ErrorCode::Malformed)),
        };
        match request {
            Request::Sink { len } if len > 0 => self.start_sink(id, len),
            Request::Source { len, seed } => self.start_source(id, len, seed),
            Request::Exit(code) => {
                self.respond(id, &Response::Exiting(code));
                self.vsock().drain(1_000);
                exit(code)
            }
            other => {
                let out: *mut [u8] = &mut *self.response;
                let encoded = {
                    let response = self.execute(other);
                    // SAFETY: `execute` never touches the response buffer (the response it
                    // returns may borrow the data buffer or the request, never this one), and
                    // nothing else refers to it until `send_encoded`.
                    response.encode(unsafe { &mut *out })
                };
                self.send_encoded(id, encoded);
            }
        }
    }

    /// Sends `response` on connection `id`.
    pub(super) fn respond(&mut self, id: ConnId, response: &Response<'_>) {
        let encoded = response.encode(self.response);
        self.send_encoded(id, encoded);
    }

    /// Sends the response encoded in the response buffer (or `InvalidArgument` if it could
    /// not be); hangs up when the host takes too long to make room for it.
    fn send_encoded(&mut self, id: ConnId, encoded: Result<usize, EncodeError>) {
        let len = match encoded {
            Ok(len) => len,
            Err(_) => Response::Error(ErrorCode::InvalidArgument)
                .encode(self.response)
                .unwrap_or(0),
        };
        let Agent {
            devices, response, ..
        } = self;
        let vsock = devices.vsock.as_mut().expect("checked at start");
        if vsock
            .send_all(id, &response[..len], SEND_TIMEOUT_MS)
            .is_err()
        {
            self.hang_up(id);
        }
    }

    /// What the identity page says now, the random seed, and a fresh random value.
    fn identity(&mut self) -> Response<'static> {
        self.identity.check();
        let current = self.identity.current();
        Response::Identity {
            generation: current.generation,
            id: current.id,
            seed: self.identity.seed(),
            random: self.identity.next_u64(),
        }
    }

    /// Carries out a request that answers with one response frame.
    fn execute<'r>(&'r mut self, request: Request<'r>) -> Response<'r> {
        match request {
            Request::Ping => Response::Pong,
            Request::Echo(data) => Response::Echo(data),
            Request::Touch { mib, pattern } => self.touch(mib, pattern),
            Request::Checksum { addr, len } => self.checksum(addr, len),
            Request::CounterAdd(value) => Response::Counter(counter_add(value)),
            Request::CounterGet => Response::Counter(counter_add(0)),
            Request::Sink { .. } => Response::Sunk {
                len: 0,
                checksum: StreamChecksum::new().value(),
            },
            Request::DiskWrite { sector, data } => self.disk_write(sector, data),
            Request::DiskRead { sector, count } => self.disk_read(sector, count),
            Request::DiskFlush => self.disk_flush(),
            Request::DiskId => self.disk_id(),
            Request::NetSend(frame) => self.net_send(frame),
            Request::NetRecv { timeout_ms } => self.net_recv(timeout_ms),
            Request::ConnectHost { port, payload } => self.connect_host(port, payload),
            Request::Identity => self.identity(),
            Request::Hello { .. } => Response::Hello {
                version: PROTOCOL_VERSION,
                guest: GuestKind::Zygote,
            },
            // The Linux agent's operations: a typed refusal, the connection stays usable.
            Request::Exec(_)
            | Request::Signal { .. }
            | Request::WriteFile { .. }
            | Request::ReadFile { .. }
            | Request::Stat(_)
            | Request::List { .. }
            | Request::Remove { .. }
            | Request::Mkdir { .. }
            | Request::Ports
            | Request::WaitPort { .. }
            | Request::Bridge { .. } => Response::Error(ErrorCode::Unsupported),
            // Handled by `handle`.
            Request::Source { .. } | Request::Exit(_) => {
                Response::Error(ErrorCode::InvalidArgument)
            }
        }
    }
}
