//! A client for the agent in Zygote's guest kernel, spoken over vsock through the device's
//! Unix socket (`CONNECT <port>` handshake, then length-prefixed frames).

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use zygote_guest_proto::agent::{frame_len, DecodeError, Request, Response, LEN_PREFIX, MAX_FRAME};
pub use zygote_guest_proto::agent::{ErrorCode, AGENT_COUNTER_ADDR, AGENT_PORT, DISK_ID_LEN};

/// Errors from talking to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The VM has no vsock device.
    #[error("the VM has no vsock device, so no agent can be reached")]
    NoVsock,
    /// The vsock socket could not be reached or the guest did not accept in time.
    #[error("cannot connect to the agent on vsock port {port}: {reason}")]
    Connect {
        /// The guest port.
        port: u32,
        /// What went wrong last.
        reason: String,
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
    /// The agent answered with a response of the wrong kind.
    #[error("unexpected agent response: {0}")]
    Unexpected(String),
}

/// A connection to the guest agent.
pub struct AgentClient {
    stream: BufReader<UnixStream>,
    frame: Vec<u8>,
}

/// How long a request may take before the connection gives up.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

impl AgentClient {
    /// Connects through the vsock Unix socket at `uds_path` to guest `port`, retrying until
    /// the guest accepts or `timeout` passes (the agent may still be starting).
    pub fn connect(uds_path: &Path, port: u32, timeout: Duration) -> Result<Self, AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            match handshake(uds_path, port) {
                Ok(stream) => {
                    return Ok(Self {
                        stream: BufReader::new(stream),
                        frame: Vec::new(),
                    })
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(AgentError::Connect {
                        port,
                        reason: e.to_string(),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Sends `request` and returns the agent's response (an error status is an `Err`).
    pub fn call(&mut self, request: &Request<'_>) -> Result<Response<'_>, AgentError> {
        self.send(request)?;
        self.receive()
    }

    fn send(&mut self, request: &Request<'_>) -> Result<(), AgentError> {
        let mut out = vec![0u8; request.encoded_len()];
        let n = request.encode(&mut out).map_err(|_| AgentError::Encode)?;
        self.stream.get_mut().write_all(&out[..n])?;
        Ok(())
    }

    fn receive(&mut self) -> Result<Response<'_>, AgentError> {
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
        match Response::decode(&self.frame).map_err(AgentError::Decode)? {
            (Response::Error(code), _) => Err(AgentError::Guest(code)),
            (response, _) => Ok(response),
        }
    }

    /// The raw connection, for streaming bytes after a `Sink` or `Source` request.
    fn stream(&mut self) -> &mut BufReader<UnixStream> {
        &mut self.stream
    }
}

/// Connects, sends `CONNECT <port>\n` and waits for `OK <host port>\n`.
fn handshake(uds_path: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds_path)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
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
