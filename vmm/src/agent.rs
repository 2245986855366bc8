//! A client for the agent in Zygote's guest kernel, spoken over vsock through the device's
//! Unix socket (`CONNECT <port>` handshake, then length-prefixed frames).

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use zygote_guest_proto::agent::{
    frame_len, DecodeError, Opcode, Request, Response, LEN_PREFIX, MAX_FRAME,
};
pub use zygote_guest_proto::agent::{ErrorCode, AGENT_COUNTER_ADDR, AGENT_PORT, DISK_ID_LEN};

/// Errors from talking to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The VM has no vsock device.
    #[error("the VM has no vsock device, so no agent can be reached")]
    NoVsock,
    /// The vsock socket could not be reached or the guest did not accept in time.
    #[error("cannot connect to the agent on vsock port {port}: {source}")]
    Connect {
        /// The guest port.
        port: u32,
        /// What went wrong on the last attempt.
        source: io::Error,
    },
    /// Reading from or writing to the connection failed.
    #[error("agent connection failed: {0}")]
    Io(#[from] io::Error),
    /// The request could not be encoded (too large for a frame).
    #[error("the request does not fit an agent frame")]
    Encode,
    /// The agent sent something that is not a valid response.
    #[error("invalid response from the agent: {0}")]
    Decode(DecodeError),
    /// The agent reported an error.
    #[error("the agent refused the request: {0}")]
    Guest(ErrorCode),
    /// The agent answered with a response of the wrong kind (named by its opcode).
    #[error("the agent answered with the wrong kind of response ({0:?})")]
    Unexpected(Option<Opcode>),
    /// An earlier request failed part-way, so the stream's framing is lost; connect again.
    #[error("the agent connection lost its framing after an earlier error; connect again")]
    Desynchronized,
}

/// A connection to the guest agent.
///
/// Each read or write on the connection waits at most [`IO_TIMEOUT`] (plus a request's own
/// wait, for `net_recv`). After any error in the middle of a request the client refuses
/// further requests with [`AgentError::Desynchronized`]: a late answer would otherwise be
/// taken for the answer to the next request.
pub struct AgentClient {
    stream: BufReader<UnixStream>,
    frame: Vec<u8>,
    broken: bool,
}

/// Longest a single read or write on the agent connection waits.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

impl AgentClient {
    /// Connects through the vsock Unix socket at `uds_path` to guest `port`, retrying until
    /// the guest accepts or `timeout` passes (the agent may still be starting).
    pub fn connect(uds_path: &Path, port: u32, timeout: Duration) -> Result<Self, AgentError> {
        let deadline = Instant::now().checked_add(timeout);
        // Retries back off: every attempt is a connection the device must set up and tear down.
        let mut pause = Duration::from_millis(2);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match handshake(uds_path, port, left.unwrap_or(IO_TIMEOUT)) {
                Ok(stream) => {
                    return Ok(Self {
                        stream: BufReader::new(stream),
                        frame: Vec::new(),
                        broken: false,
                    })
                }
                Err(source) if left.is_some_and(|l| l.is_zero()) => {
                    return Err(AgentError::Connect { port, source })
                }
                Err(_) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// Sends `request` and returns the agent's response (an error status is an `Err`).
    pub fn call(&mut self, request: &Request<'_>) -> Result<Response<'_>, AgentError> {
        self.send(request)?;
        self.receive()
    }

    /// Runs `io` on the connection; any failure leaves the client desynchronized.
    fn guarded<T>(
        &mut self,
        io: impl FnOnce(&mut Self) -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        if self.broken {
            return Err(AgentError::Desynchronized);
        }
        let result = io(self);
        if matches!(result, Err(AgentError::Io(_) | AgentError::Decode(_))) {
            self.broken = true;
        }
        result
    }

    fn send(&mut self, request: &Request<'_>) -> Result<(), AgentError> {
        let mut out = vec![0u8; request.encoded_len()];
        let n = request.encode(&mut out).map_err(|_| AgentError::Encode)?;
        self.guarded(|client| Ok(client.stream.get_mut().write_all(&out[..n])?))
    }

    fn receive(&mut self) -> Result<Response<'_>, AgentError> {
        self.guarded(Self::read_frame)?;
        match Response::decode(&self.frame) {
            Ok((Response::Error(code), _)) => Err(AgentError::Guest(code)),
            Ok((response, _)) => Ok(response),
            Err(e) => {
                self.broken = true;
                Err(AgentError::Decode(e))
            }
        }
    }

    /// Reads one whole frame into `self.frame`.
    fn read_frame(&mut self) -> Result<(), AgentError> {
        let mut prefix = [0u8; LEN_PREFIX];
        self.stream.read_exact(&mut prefix)?;
        let body = u32::from_le_bytes(prefix) as usize;
        if body == 0 || body > MAX_FRAME {
            return Err(AgentError::Decode(DecodeError::BadLength(body as u32)));
        }
        self.frame.clear();
        self.frame.extend_from_slice(&prefix);
        self.frame.resize(LEN_PREFIX + body, 0);
        self.stream.read_exact(&mut self.frame[LEN_PREFIX..])?;
        debug_assert_eq!(frame_len(&self.frame), Ok(self.frame.len()));
        Ok(())
    }

    /// Lets reads wait `extra` longer than [`IO_TIMEOUT`] (for requests that wait in the
    /// guest), or restores the default with `Duration::ZERO`.
    fn extend_read_timeout(&mut self, extra: Duration) -> Result<(), AgentError> {
        let timeout = IO_TIMEOUT.saturating_add(extra);
        self.guarded(|client| Ok(client.stream.get_ref().set_read_timeout(Some(timeout))?))
    }
}

/// Connects, sends `CONNECT <port>\n` and waits at most `wait` for `OK <host port>\n`.
fn handshake(uds_path: &Path, port: u32, wait: Duration) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds_path)?;
    // A zero timeout means "none" to the socket API: wait at least a millisecond.
    stream.set_read_timeout(Some(wait.max(Duration::from_millis(1)).min(IO_TIMEOUT)))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = String::new();
    // Byte by byte, so nothing past the reply line is consumed.
    let mut byte = [0u8];
    while !line.ends_with('\n') {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "guest refused",
            ));
        }
        line.push(byte[0] as char);
        if line.len() > 32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad handshake reply",
            ));
        }
    }
    if !line.starts_with("OK ") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            line.trim().to_string(),
        ));
    }
    Ok(stream)
}

mod ops;
pub use ops::GuestIdentity;

#[cfg(test)]
mod tests {
    use super::*;

    fn client(stream: UnixStream) -> AgentClient {
        AgentClient {
            stream: BufReader::new(stream),
            frame: Vec::new(),
            broken: false,
        }
    }

    #[test]
    fn a_request_cut_short_desynchronizes_the_client() {
        let (ours, mut agent) = UnixStream::pair().unwrap();
        let mut client = client(ours);
        // The agent answers half a frame, then goes quiet.
        let server = std::thread::spawn(move || {
            let mut request = [0u8; 5];
            agent.read_exact(&mut request).unwrap();
            agent.write_all(&[6, 0, 0, 0, 0]).unwrap();
            agent
        });
        client
            .stream
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(matches!(client.ping(), Err(AgentError::Io(_))));
        // Whatever arrives later must not be taken for the next answer.
        let _agent = server.join().unwrap();
        assert!(matches!(client.ping(), Err(AgentError::Desynchronized)));
    }

    #[test]
    fn a_garbled_length_desynchronizes_the_client() {
        let (ours, mut agent) = UnixStream::pair().unwrap();
        let mut client = client(ours);
        agent.write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(matches!(client.ping(), Err(AgentError::Decode(_))));
        assert!(matches!(client.ping(), Err(AgentError::Desynchronized)));
    }
}
