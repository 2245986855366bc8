//! Typed agent operations, one method per request.

use std::io::{Read, Write};
use std::time::Duration;

use zygote_guest_proto::agent::{
    GuestKind, Request, Response, StreamChecksum, DISK_ID_LEN, PROTOCOL_VERSION, VM_ID_LEN,
};

use super::{AgentClient, AgentError};

/// The agent's answer to [`AgentClient::identity`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestIdentity {
    /// The generation on the guest's identity page (0: booted from scratch; a clone's is one
    /// more than its parent's).
    pub generation: u64,
    /// The VM id on that page.
    pub id: [u8; VM_ID_LEN],
    /// The seed of the agent's random state: new when the agent starts and whenever the
    /// generation changes, the same otherwise.
    pub seed: u64,
    /// One fresh value from that random state.
    pub random: u64,
}

fn unexpected(response: &Response<'_>) -> AgentError {
    AgentError::Unexpected(response.opcode())
}

/// Bytes streamed per write or read during `sink` and `source`.
const CHUNK: usize = 64 * 1024;

impl AgentClient {
    /// Round trip with no payload.
    pub fn ping(&mut self) -> Result<(), AgentError> {
        match self.call(&Request::Ping)? {
            Response::Pong => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Exchanges protocol versions: the guest's version and kind.
    pub fn hello(&mut self) -> Result<(u32, GuestKind), AgentError> {
        match self.call(&Request::Hello {
            version: PROTOCOL_VERSION,
        })? {
            Response::Hello { version, guest } => Ok((version, guest)),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends `data` and returns what the agent echoed.
    pub fn echo(&mut self, data: &[u8]) -> Result<Vec<u8>, AgentError> {
        match self.call(&Request::Echo(data))? {
            Response::Echo(bytes) => Ok(bytes.to_vec()),
            other => Err(unexpected(&other)),
        }
    }

    /// Has the guest write `mib` MiB of `pattern` and read it back: (address, checksum).
    pub fn touch(&mut self, mib: u32, pattern: u64) -> Result<(u64, u64), AgentError> {
        match self.call(&Request::Touch { mib, pattern })? {
            Response::Touched { addr, checksum } => Ok((addr, checksum)),
            other => Err(unexpected(&other)),
        }
    }

    /// The guest's checksum of `len` bytes of its memory at `addr` (both multiples of 8).
    pub fn checksum(&mut self, addr: u64, len: u64) -> Result<u64, AgentError> {
        match self.call(&Request::Checksum { addr, len })? {
            Response::Checksum(sum) => Ok(sum),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes whole 512-byte sectors at `sector`.
    pub fn disk_write(&mut self, sector: u64, data: &[u8]) -> Result<(), AgentError> {
        match self.call(&Request::DiskWrite { sector, data })? {
            Response::DiskWritten => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads `count` sectors at `sector`.
    pub fn disk_read(&mut self, sector: u64, count: u32) -> Result<Vec<u8>, AgentError> {
        match self.call(&Request::DiskRead { sector, count })? {
            Response::DiskData(bytes) => Ok(bytes.to_vec()),
            other => Err(unexpected(&other)),
        }
    }

    /// Flushes the guest's disk.
    pub fn disk_flush(&mut self) -> Result<(), AgentError> {
        match self.call(&Request::DiskFlush)? {
            Response::DiskFlushed => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The disk's ID string as the guest reads it.
    pub fn disk_id(&mut self) -> Result<[u8; DISK_ID_LEN], AgentError> {
        match self.call(&Request::DiskId)? {
            Response::DiskId(id) => Ok(id),
            other => Err(unexpected(&other)),
        }
    }

    /// Has the guest send one Ethernet frame.
    pub fn net_send(&mut self, frame: &[u8]) -> Result<(), AgentError> {
        match self.call(&Request::NetSend(frame))? {
            Response::NetSent => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The next frame the guest receives within `timeout_ms`, or `None`.
    pub fn net_recv(&mut self, timeout_ms: u32) -> Result<Option<Vec<u8>>, AgentError> {
        self.extend_timeout(Duration::from_millis(u64::from(timeout_ms)))?;
        let frame = match self.call(&Request::NetRecv { timeout_ms }) {
            Ok(Response::NetFrame(frame)) => Ok(Some(frame.to_vec())),
            Err(AgentError::Guest(super::ErrorCode::NoFrame)) => Ok(None),
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(e),
        };
        // The request's own error comes first: once it broke the connection, restoring the
        // timeout can only report that.
        let restored = self.extend_timeout(Duration::ZERO);
        let frame = frame?;
        restored?;
        Ok(frame)
    }

    /// Adds `value` to the guest's counter; returns the new value.
    pub fn counter_add(&mut self, value: u64) -> Result<u64, AgentError> {
        match self.call(&Request::CounterAdd(value))? {
            Response::Counter(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// The guest's counter.
    pub fn counter_get(&mut self) -> Result<u64, AgentError> {
        match self.call(&Request::CounterGet)? {
            Response::Counter(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// Streams `data` to the guest; returns the length and checksum the guest computed.
    pub fn sink(&mut self, data: &[u8]) -> Result<(u64, u64), AgentError> {
        self.send(&Request::Sink {
            len: data.len() as u64,
        })?;
        self.guarded(|client| {
            for chunk in data.chunks(CHUNK) {
                client.stream.get_mut().write_all(chunk)?;
            }
            Ok(())
        })?;
        match self.receive()? {
            Response::Sunk { len, checksum } => Ok((len, checksum)),
            other => Err(unexpected(&other)),
        }
    }

    /// Has the guest stream `len` bytes of its pattern with `seed`; returns their checksum.
    pub fn source(&mut self, len: u64, seed: u64) -> Result<u64, AgentError> {
        match self.call(&Request::Source { len, seed })? {
            Response::Sourcing { len: l } if l == len => {}
            other => return Err(unexpected(&other)),
        }
        self.guarded(|client| {
            let mut checksum = StreamChecksum::new();
            let mut buf = vec![0u8; CHUNK];
            let mut left = len;
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = client.stream.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
                checksum.update(&buf[..n]);
                left -= n as u64;
            }
            Ok(checksum.value())
        })
    }

    /// Has the guest connect to host vsock `port`, send `payload` and return the reply.
    pub fn connect_host(&mut self, port: u32, payload: &[u8]) -> Result<Vec<u8>, AgentError> {
        match self.call(&Request::ConnectHost { port, payload })? {
            Response::HostReply(bytes) => Ok(bytes.to_vec()),
            other => Err(unexpected(&other)),
        }
    }

    /// What the guest knows of its identity (`zygote_guest_proto::VmIdentity`, read from the
    /// identity page) and its random state: see [`GuestIdentity`].
    pub fn identity(&mut self) -> Result<GuestIdentity, AgentError> {
        match self.call(&Request::Identity)? {
            Response::Identity {
                generation,
                id,
                seed,
                random,
            } => Ok(GuestIdentity {
                generation,
                id,
                seed,
                random,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the guest to exit with `code` (the VM then stops with that exit code).
    pub fn exit(&mut self, code: u32) -> Result<(), AgentError> {
        match self.call(&Request::Exit(code))? {
            Response::Exiting(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}
