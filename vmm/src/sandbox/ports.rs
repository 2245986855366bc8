//! Guest TCP ports: which listen, and waiting for one.

use std::time::Duration;

use zygote_guest_proto::agent::{ErrorCode, Request, Response};

use super::conn::IO_TIMEOUT;
use super::{unexpected, Sandbox, SandboxError};

impl Sandbox {
    /// The TCP ports listening in the guest, ascending.
    pub fn listening_ports(&self) -> Result<Vec<u16>, SandboxError> {
        self.call(&Request::Ports, |response| match response {
            Response::Ports(ports) => Ok(ports.iter().collect()),
            other => Err(unexpected(&other)),
        })
    }

    /// Waits until guest TCP `port` listens, at most `timeout` (the agent checks every 25 ms).
    ///
    /// # Errors
    /// [`SandboxError::PortNeverOpened`] when it did not open in time.
    pub fn wait_for_port(&self, port: u16, timeout: Duration) -> Result<(), SandboxError> {
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let mut conn = self.take()?;
        conn.set_read_timeout(Some(timeout + IO_TIMEOUT))?;
        let result = match conn.call(&Request::WaitPort { port, timeout_ms })? {
            Response::PortOpen => Ok(()),
            Response::Error(ErrorCode::TimedOut) => Err(SandboxError::PortNeverOpened {
                port,
                waited: timeout,
            }),
            other => Err(unexpected(&other)),
        };
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        self.give_back(conn);
        result
    }
}
