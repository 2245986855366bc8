//! A started VM: lifecycle operations and the exit reason.

use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use super::VmCore;
use crate::control::VmState;
use crate::error::Error;
use crate::exit::ExitReason;

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
    /// ten seconds for it to accept.
    pub fn agent(&self) -> Result<crate::agent::AgentClient, crate::agent::AgentError> {
        let vsock = self
            .core
            .devices
            .vsock
            .as_ref()
            .ok_or(crate::agent::AgentError::NoVsock)?;
        crate::agent::AgentClient::connect(
            &vsock.uds_path,
            crate::agent::AGENT_PORT,
            Duration::from_secs(10),
        )
    }

    /// Whether the VM is running, paused or stopped.
    pub fn state(&self) -> VmState {
        self.core.control.state()
    }

    /// Parks every vCPU outside `KVM_RUN`. Returns once all are parked.
    pub fn pause(&self) -> Result<(), Error> {
        self.core
            .control
            .pause()
            .map_err(|state| Error::InvalidState { op: "pause", state })
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
        self.core.control.wait_exit(Some(timeout))
    }

    /// Waits for the VM to stop, joins its vCPU threads and returns why it stopped.
    pub fn wait(&mut self) -> Result<ExitReason, Error> {
        let reason = self.core.control.wait_exit(None);
        self.join()?;
        reason.ok_or(Error::VcpuThreadPanicked)
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

    fn join(&mut self) -> Result<(), Error> {
        let mut panicked = false;
        for thread in self.threads.drain(..) {
            panicked |= thread.join().is_err();
        }
        if panicked {
            // Make sure a waiter still gets an answer.
            self.core.control.finish(ExitReason::Shutdown);
            return Err(Error::VcpuThreadPanicked);
        }
        if let Ok(mut serial) = self.core.serial.lock() {
            let _ = serial.flush();
        }
        Ok(())
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.stop();
        let _ = self.join();
    }
}
