//! One connection to the Linux agent: the vsock device's `CONNECT` handshake, then frames.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use zygote_guest_proto::agent::{Request, Response, AGENT_PORT, LEN_PREFIX, MAX_FRAME};

use super::SandboxError;

/// Longest a read or write on an agent connection waits unless an operation says otherwise.
/// Generous: on a host that emulates the guest kernel a 256 KiB chunk takes seconds, and
/// tens of seconds when the host is busy.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to the agent with its frame buffers.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(super) stream: UnixStream,
    frame: Vec<u8>,
    out: Vec<u8>,
}

impl Connection {
    /// Connects to the agent through the vsock device's socket at `uds_path`, retrying until
    /// the guest accepts or `timeout` passes; [`SandboxError::NotAnswering`] then.
    pub(super) fn open(uds_path: &Path, timeout: Duration) -> Result<Self, SandboxError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match handshake(uds_path, left.max(Duration::from_millis(1))) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(IO_TIMEOUT))?;
                    stream.set_write_timeout(Some(IO_TIMEOUT))?;
                    return Ok(Connection {
                        stream,
                        frame: Vec::new(),
                        out: Vec::new(),
                    });
                }
                Err(source) if left.is_zero() => {
                    return Err(SandboxError::NotAnswering {
                        waited: timeout,
                        source,
                    })
                }
                Err(_) => {
                    std::thread::sleep(pause.min(left));
                    // Every attempt costs a booting guest an interrupt and a reset packet,
                    // handled by emulated kernel code here: back off to a second.
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Lets reads wait `timeout` (`None`: forever).
    pub(super) fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), SandboxError> {
        Ok(self.stream.set_read_timeout(timeout)?)
    }

    pub(super) fn send(&mut self, request: &Request<'_>) -> Result<(), SandboxError> {
        self.out.clear();
        self.out.resize(request.encoded_len(), 0);
        let n = request
            .encode(&mut self.out)
            .map_err(|_| SandboxError::InvalidArgument("the request does not fit a frame"))?;
        self.stream.write_all(&self.out[..n]).map_err(io_error)
    }

    /// The next response; an error status is an `Ok(Response::Error)` here.
    pub(super) fn receive(&mut self) -> Result<Response<'_>, SandboxError> {
        let mut prefix = [0u8; LEN_PREFIX];
        self.stream.read_exact(&mut prefix).map_err(io_error)?;
        let body = u32::from_le_bytes(prefix) as usize;
        if body == 0 || body > MAX_FRAME {
            return Err(SandboxError::Protocol("frame length out of range"));
        }
        self.frame.clear();
        self.frame.extend_from_slice(&prefix);
        self.frame.resize(LEN_PREFIX + body, 0);
        self.stream
            .read_exact(&mut self.frame[LEN_PREFIX..])
            .map_err(io_error)?;
        Response::decode(&self.frame)
            .map(|(response, _)| response)
            .map_err(|_| SandboxError::Protocol("undecodable response"))
    }

    pub(super) fn call(&mut self, request: &Request<'_>) -> Result<Response<'_>, SandboxError> {
        self.send(request)?;
        self.receive()
    }
}

/// A read that timed out means the guest stopped answering; anything else is the connection.
fn io_error(error: io::Error) -> SandboxError {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => SandboxError::NotAnswering {
            waited: IO_TIMEOUT,
            source: error,
        },
        _ => SandboxError::Io(error),
    }
}

/// Connects, sends `CONNECT <AGENT_PORT>\n` and waits at most `wait` for `OK <port>\n`
/// (Firecracker's host-initiated vsock handshake).
pub(super) fn handshake(uds_path: &Path, wait: Duration) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds_path)?;
    stream.set_read_timeout(Some(wait.min(IO_TIMEOUT)))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    crate::agent::exchange(&mut stream, AGENT_PORT)?;
    Ok(stream)
}
