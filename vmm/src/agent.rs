//! A client for the agent in Zygote's guest kernel, spoken over vsock through the device's
//! Unix socket (`CONNECT <port>` handshake, then length-prefixed frames).

use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use zygote_guest_proto::agent::{
    frame_len, DecodeError, Opcode, Request, Response, LEN_PREFIX, MAX_FRAME,
};
pub use zygote_guest_proto::agent::{ErrorCode, AGENT_COUNTER_ADDR, AGENT_PORT, DISK_ID_LEN};

use crate::exit::ExitReason;
use conn::{connect_unix, Conn, StopCheck, Stopped};

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
    /// The VM stopped (before or during a connect or a request), so no agent can answer.
    #[error("the VM stopped ({0:?}), so the agent cannot answer")]
    VmStopped(ExitReason),
    /// A request timeout of zero was asked for.
    #[error("the agent request timeout must be longer than zero")]
    ZeroTimeout,
    /// Reading from or writing to the connection failed (`TimedOut` when the request timeout
    /// passed without progress).
    #[error("agent connection failed: {0}")]
    Io(io::Error),
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

impl From<io::Error> for AgentError {
    /// An I/O error, or [`AgentError::VmStopped`] when the wait ended because the VM stopped.
    fn from(e: io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Stopped>())
        {
            Some(Stopped(reason)) => Self::VmStopped(reason.clone()),
            None => Self::Io(e),
        }
    }
}

/// A connection to the guest agent.
///
/// Two timeouts, never mixed: the connect deadline bounds connecting only (socket, handshake
/// and retries); after that, each read or write of a request waits at most the request
/// timeout ([`REQUEST_TIMEOUT`] unless [`AgentClient::set_request_timeout`] changed it) for
/// progress, plus a request's own wait for `net_recv`. A client made with a stop check
/// ([`AgentClient::connect_watching`], or [`crate::RunningVm::agent`]) also stops waiting
/// with [`AgentError::VmStopped`] once the VM has stopped. After any error in the middle of a
/// request the client refuses further requests with [`AgentError::Desynchronized`]: a late
/// answer would otherwise be taken for the answer to the next request.
pub struct AgentClient {
    stream: BufReader<Conn>,
    frame: Vec<u8>,
    broken: bool,
    request_timeout: Duration,
}

/// The default request timeout: the longest one read or write of a request waits for
/// progress (a slow request such as a large `touch` makes progress only when it answers).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl AgentClient {
    /// Connects through the vsock Unix socket at `uds_path` to guest `port`, retrying until
    /// the guest accepts or `timeout` passes (the agent may still be starting). `timeout`
    /// bounds connecting only; requests then use [`REQUEST_TIMEOUT`].
    ///
    /// Errors: [`AgentError::Connect`] with the last attempt's error once `timeout` passed.
    pub fn connect(uds_path: &Path, port: u32, timeout: Duration) -> Result<Self, AgentError> {
        Self::connect_inner(uds_path, port, timeout, None)
    }

    /// [`AgentClient::connect`] for a VM that may stop: `stopped` says whether it has (and
    /// why). It is asked before every attempt and every 50 ms while one waits, and later while
    /// requests wait, so a stopped VM fails them at once with [`AgentError::VmStopped`]
    /// instead of after their timeouts.
    pub fn connect_watching(
        uds_path: &Path,
        port: u32,
        timeout: Duration,
        stopped: impl FnMut() -> Option<ExitReason> + Send + 'static,
    ) -> Result<Self, AgentError> {
        Self::connect_inner(uds_path, port, timeout, Some(Box::new(stopped)))
    }

    fn connect_inner(
        uds_path: &Path,
        port: u32,
        timeout: Duration,
        mut stopped: Option<StopCheck>,
    ) -> Result<Self, AgentError> {
        let deadline = Instant::now().checked_add(timeout);
        // Retries back off: every attempt is a connection the device must set up and tear down.
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(reason) = stopped.as_mut().and_then(|check| check()) {
                return Err(AgentError::VmStopped(reason));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match handshake(uds_path, port, left.unwrap_or(REQUEST_TIMEOUT), stopped) {
                Ok(mut conn) => {
                    conn.set_timeout(REQUEST_TIMEOUT)
                        .map_err(|source| AgentError::Connect { port, source })?;
                    return Ok(Self {
                        stream: BufReader::new(conn),
                        frame: Vec::new(),
                        broken: false,
                        request_timeout: REQUEST_TIMEOUT,
                    });
                }
                Err((e, check)) => {
                    let source = match AgentError::from(e) {
                        AgentError::VmStopped(reason) => return Err(AgentError::VmStopped(reason)),
                        AgentError::Io(source) => source,
                        other => io::Error::other(other.to_string()),
                    };
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if left.is_some_and(|l| l.is_zero()) {
                        return Err(AgentError::Connect { port, source });
                    }
                    stopped = check;
                    std::thread::sleep(pause.min(left.unwrap_or(pause)));
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// How long one read or write of a request waits for progress.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sets how long one read or write of a request waits for progress before the request
    /// fails with [`AgentError::Io`] (`TimedOut`); the connection is then desynchronized.
    ///
    /// Errors: [`AgentError::ZeroTimeout`] for zero; [`AgentError::Io`] if the socket refuses.
    pub fn set_request_timeout(&mut self, timeout: Duration) -> Result<(), AgentError> {
        if timeout.is_zero() {
            return Err(AgentError::ZeroTimeout);
        }
        self.stream.get_mut().set_timeout(timeout)?;
        self.request_timeout = timeout;
        Ok(())
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
        if matches!(
            result,
            Err(AgentError::Io(_) | AgentError::Decode(_) | AgentError::VmStopped(_))
        ) {
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

    /// Lets reads and writes wait `extra` longer than the request timeout (for requests that
    /// wait in the guest), or restores the request timeout with `Duration::ZERO`.
    fn extend_timeout(&mut self, extra: Duration) -> Result<(), AgentError> {
        let timeout = self.request_timeout.saturating_add(extra);
        self.guarded(|client| Ok(client.stream.get_mut().set_timeout(timeout)?))
    }
}

/// The error of a failed handshake, with the stop check handed back for the next attempt.
type Refused = (io::Error, Option<StopCheck>);

/// Connects, sends `CONNECT <port>\n` and waits for `OK <host port>\n`, every step bounded by
/// `wait` (the connect deadline's remainder, never the request timeout).
fn handshake(
    uds_path: &Path,
    port: u32,
    wait: Duration,
    stopped: Option<StopCheck>,
) -> Result<Conn, Refused> {
    let stream = match connect_unix(uds_path) {
        Ok(stream) => stream,
        Err(e) => return Err((e, stopped)),
    };
    let mut conn = Conn::new(stream, wait.max(Duration::from_millis(1)), stopped)?;
    match exchange(&mut conn, port) {
        Ok(()) => Ok(conn),
        Err(e) => Err((e, conn.into_stop_check())),
    }
}

/// The handshake's request and reply on a connected socket (Firecracker's host-initiated vsock
/// handshake: `CONNECT <port>\n`, then `OK <host port>\n`). Shared with the sandbox client.
pub(crate) fn exchange<S: Read + Write>(conn: &mut S, port: u32) -> io::Result<()> {
    conn.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = String::new();
    // Byte by byte, so nothing past the reply line is consumed.
    let mut byte = [0u8];
    while !line.ends_with('\n') {
        if conn.read(&mut byte)? == 0 {
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
    Ok(())
}

mod conn;
mod ops;
pub use ops::GuestIdentity;

#[cfg(test)]
mod tests;
