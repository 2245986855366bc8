//! A started VM: lifecycle operations and the exit reason.

use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use super::VmCore;
use crate::control::{PauseError, VmState};
use crate::error::Error;
use crate::exit::ExitReason;

/// How long [`RunningVm::agent`] waits for the agent to accept.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A VM whose vCPUs are running (or paused). Dropping it shuts the VM down.
pub struct RunningVm {
    pub(super) core: VmCore,
    pub(super) threads: Vec<JoinHandle<()>>,
}

impl RunningVm {
    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.core.kvm.ram().memory()
    }

    /// Handles on the VM's devices (net counters, the vsock socket path).
    pub fn devices(&self) -> &crate::DeviceHandles {
        &self.core.devices
    }

    /// A connection to the agent in Zygote's guest kernel (workload `agent`), waiting up to
    /// ten seconds for it to accept. Requests then wait [`crate::agent::REQUEST_TIMEOUT`] (see
    /// [`crate::agent::AgentClient::set_request_timeout`]).
    ///
    /// Errors: [`crate::agent::AgentError::NoVsock`];
    /// [`crate::agent::AgentError::VmStopped`] at once if the VM has stopped (or as soon as it
    /// stops while connecting, and later while a request waits);
    /// [`crate::agent::AgentError::Connect`] after ten seconds without an answer.
    pub fn agent(&self) -> Result<crate::agent::AgentClient, crate::agent::AgentError> {
        let vsock = self
            .core
            .devices
            .vsock
            .as_ref()
            .ok_or(crate::agent::AgentError::NoVsock)?;
        let control = self.core.control.clone();
        crate::agent::AgentClient::connect_watching(
            &vsock.uds_path,
            crate::agent::AGENT_PORT,
            AGENT_CONNECT_TIMEOUT,
            move || control.exit_reason(),
        )
    }

    /// Console bytes lost because a [`crate::SerialOutput::Writer`] fell too far behind or
    /// failed (zero for the other outputs, which never fall behind).
    pub fn console_dropped_bytes(&self) -> u64 {
        self.core.console_drain.as_ref().map_or(0, |d| d.dropped())
    }

    /// Whether the VM is running, paused or stopped.
    pub fn state(&self) -> VmState {
        self.core.control.state()
    }

    /// Parks every vCPU outside `KVM_RUN`. Returns once all are parked; if one stays busy in
    /// a device for 10 s, the VM is left running and [`Error::PauseTimeout`] says so.
    pub fn pause(&self) -> Result<(), Error> {
        self.core.control.pause().map_err(|e| match e {
            PauseError::State(state) => Error::InvalidState { op: "pause", state },
            PauseError::Timeout { parked, alive } => Error::PauseTimeout { parked, alive },
        })
    }

    /// Lets a paused VM run again.
    pub fn resume(&self) -> Result<(), Error> {
        self.core
            .control
            .resume()
            .map_err(|state| Error::InvalidState {
                op: "resume",
                state,
            })
    }

    /// The exit reason if the VM has stopped, without waiting.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.core.control.exit_reason()
    }

    /// The exit reason if the VM has stopped, waiting at most `timeout` for it.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        self.core.control.wait_exit(timeout)
    }

    /// Waits for the VM to stop, joins its vCPU threads and returns why it stopped.
    pub fn wait(&mut self) -> Result<ExitReason, Error> {
        let reason = self.core.control.wait_exit_forever();
        self.join();
        Ok(reason)
    }

    /// Stops the VM if it is still running and returns why it stopped: [`ExitReason::Shutdown`]
    /// unless the guest had already stopped it.
    pub fn shutdown(&mut self) -> Result<ExitReason, Error> {
        self.stop();
        self.wait()
    }

    pub(super) fn stop(&mut self) {
        self.core.control.finish(ExitReason::Shutdown);
    }

    /// Joins the vCPU threads. A thread that panicked has already stopped the VM with
    /// [`ExitReason::HostError`] on its way out, so its join error carries nothing more.
    fn join(&mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        if let Ok(mut serial) = self.core.serial.lock() {
            let _ = serial.flush();
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.stop();
        self.join();
    }
}
