//! The sandbox surface of a Linux guest: run commands, move files, watch and forward ports,
//! through the Linux agent (`zygote-linux-agent`) over vsock.
//!
//! [`Sandbox`] speaks the agent protocol of `zygote-guest-proto` (the same frames as
//! [`crate::agent::AgentClient`] for Zygote's own guest) on connections it opens through the
//! VM's vsock device (`CONNECT 1024`). Short requests reuse idle connections; a running
//! command or a forwarded TCP connection has one of its own.
//!
//! ```no_run
//! # fn demo(vm: &zygote::RunningVm) -> Result<(), zygote::sandbox::SandboxError> {
//! use std::time::Duration;
//! use zygote::sandbox::Command;
//!
//! let sandbox = vm.sandbox(Duration::from_secs(60))?;
//! sandbox.write_file("/tmp/index.html", b"<h1>hi</h1>")?;
//! let output = sandbox.exec(&Command::shell("cat /tmp/index.html"))?;
//! assert_eq!(output.stdout, b"<h1>hi</h1>");
//! sandbox.exec(&Command::shell("busybox httpd -p 3000 -h /tmp"))?;
//! sandbox.wait_for_port(3000, Duration::from_secs(30))?;
//! let preview = sandbox.forward_port(3000, "127.0.0.1:0")?;
//! println!("http://{}/index.html", preview.local_addr());
//! # Ok(()) }
//! ```

mod conn;
mod exec;
mod files;
mod forward;
mod ports;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use zygote_guest_proto::agent::{
    ErrorCode, GuestKind, Opcode, Request, Response, PROTOCOL_VERSION,
};

use crate::vm::RunningVm;
use conn::Connection;
pub use exec::{Command, ExecEvent, ExecStream, Output};
pub use files::DirEntry;
pub use forward::PortForward;
pub use zygote_guest_proto::agent::{ExitStatus, FileKind, FileStat};

/// Errors from the sandbox surface.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The VM has no vsock device, so no agent can be reached.
    #[error("the VM has no vsock device, so no agent can be reached")]
    NoVsock,
    /// The agent did not accept a connection, or stopped answering one, within `waited`.
    #[error("the guest agent did not answer within {waited:?}: {source}")]
    NotAnswering {
        /// How long the host waited.
        waited: Duration,
        /// The last failure.
        source: io::Error,
    },
    /// The command ran past its timeout and the agent killed it; what it printed until then.
    #[error("the command timed out and was killed ({status:?})", status = output.status)]
    TimedOut {
        /// Its output up to the kill, and the kill's status.
        output: Output,
    },
    /// The path, or the program to run, does not exist in the guest.
    #[error("not found in the guest: {path}")]
    NotFound {
        /// The path (or program) as given.
        path: String,
    },
    /// A guest TCP port did not start listening in time.
    #[error("guest port {port} did not open within {waited:?}")]
    PortNeverOpened {
        /// The port.
        port: u16,
        /// How long the host waited.
        waited: Duration,
    },
    /// The agent refused the request for another reason.
    #[error("the guest agent refused the request: {0}")]
    Refused(ErrorCode),
    /// The guest's agent is not the Linux agent, or speaks an older protocol.
    #[error("the guest agent is {guest:?} with protocol version {version}; need the Linux agent, version {PROTOCOL_VERSION}")]
    WrongAgent {
        /// Which agent answered.
        guest: GuestKind,
        /// Its protocol version.
        version: u32,
    },
    /// An argument cannot be sent (a NUL byte in an argument or path, say).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The agent sent something the protocol does not allow here.
    #[error("protocol error from the guest agent: {0}")]
    Protocol(&'static str),
    /// The connection to the agent failed.
    #[error("agent connection failed: {0}")]
    Io(#[from] io::Error),
}

/// A Linux guest's agent, reached through the VM's vsock device.
#[derive(Debug)]
pub struct Sandbox {
    uds_path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Longest a new connection waits for the agent once it has answered before.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Sandbox {
    /// Connects to the Linux agent through the vsock device socket at `uds_path`, waiting up
    /// to `timeout` for it to answer (a Linux guest takes tens of seconds to boot here), and
    /// checks that it is the Linux agent speaking [`PROTOCOL_VERSION`].
    ///
    /// # Errors
    /// [`SandboxError::NotAnswering`] when nothing answers in time;
    /// [`SandboxError::WrongAgent`] for Zygote's own guest or an older agent.
    pub fn connect(uds_path: &Path, timeout: Duration) -> Result<Self, SandboxError> {
        let mut conn = Connection::open(uds_path, timeout)?;
        match conn.call(&Request::Hello {
            version: PROTOCOL_VERSION,
        })? {
            Response::Hello {
                version,
                guest: GuestKind::Linux,
            } if version >= PROTOCOL_VERSION => {}
            Response::Hello { version, guest } => {
                return Err(SandboxError::WrongAgent { guest, version })
            }
            other => return Err(unexpected(&other)),
        }
        Ok(Sandbox {
            uds_path: uds_path.to_owned(),
            idle: Mutex::new(vec![conn]),
        })
    }

    /// The vsock device's socket this sandbox connects through.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// An idle connection, or a new one.
    fn take(&self) -> Result<Connection, SandboxError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => Connection::open(&self.uds_path, CONNECT_TIMEOUT),
        }
    }

    /// Keeps a connection whose last exchange completed for the next request.
    fn give_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }

    /// Sends `request` on a pooled connection and hands the response to `answer`.
    fn call<T>(
        &self,
        request: &Request<'_>,
        answer: impl FnOnce(Response<'_>) -> Result<T, SandboxError>,
    ) -> Result<T, SandboxError> {
        let mut conn = self.take()?;
        let result = answer(conn.call(request)?);
        // The exchange is complete whatever the answer said: the connection is reusable.
        self.give_back(conn);
        result
    }

    /// Round trip with no payload.
    pub fn ping(&self) -> Result<(), SandboxError> {
        self.call(&Request::Ping, |response| match response {
            Response::Pong => Ok(()),
            other => Err(unexpected(&other)),
        })
    }
}

impl RunningVm {
    /// The Linux agent in this VM's guest, waiting up to `timeout` for it to answer.
    ///
    /// # Errors
    /// [`SandboxError::NoVsock`] without a vsock device; those of [`Sandbox::connect`].
    pub fn sandbox(&self, timeout: Duration) -> Result<Sandbox, SandboxError> {
        let vsock = self.devices().vsock.as_ref().ok_or(SandboxError::NoVsock)?;
        Sandbox::connect(&vsock.uds_path, timeout)
    }
}

/// The error for a response that does not answer the request; an error status becomes
/// [`SandboxError::Refused`].
fn unexpected(response: &Response<'_>) -> SandboxError {
    match response {
        Response::Error(code) => SandboxError::Refused(*code),
        other => SandboxError::Protocol(match other.opcode() {
            Some(Opcode::Exec) => "an exec event out of place",
            _ => "a response to another request",
        }),
    }
}

/// [`SandboxError::NotFound`] for `path` when the agent says not found, else [`unexpected`].
fn refused_at(path: &str, response: &Response<'_>) -> SandboxError {
    match response {
        Response::Error(ErrorCode::NotFound) => SandboxError::NotFound {
            path: path.to_owned(),
        },
        other => unexpected(other),
    }
}
