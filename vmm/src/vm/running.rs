//! A started VM: lifecycle operations and the exit reason.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use super::VmCore;
use crate::context::KvmContext;
use crate::control::{PauseError, VmState};
use crate::error::Error;
use crate::exit::ExitReason;
use crate::memory::GuestRam;
use crate::state::{save_devices, CaptureError, MachineState, VcpuState, VmArchState};
use crate::vcpu::run::SharedVcpu;

/// How long a pause waits for the device threads to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`RunningVm::agent`] waits for the agent to accept.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A VM whose vCPUs are running (or paused). Dropping it shuts the VM down.
pub struct RunningVm {
    // Field order is drop order: the vCPU threads and fds go before the VM and its memory.
    pub(super) threads: Vec<JoinHandle<()>>,
    /// The vCPUs, shared with their threads; read and written only while parked.
    pub(super) vcpus: Vec<SharedVcpu>,
    pub(super) core: VmCore,
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

    /// The Linux thread ids (as in `/proc/self/task/<tid>`) of the vCPU threads running now,
    /// in vCPU order: for pinning them (`sched_setaffinity`) or reading their CPU time. Empty
    /// once the VM has stopped.
    pub fn vcpu_thread_ids(&self) -> Vec<u32> {
        self.core.control.thread_ids()
    }

    /// Whether the VM is running, paused or stopped.
    pub fn state(&self) -> VmState {
        self.core.control.state()
    }

    /// Quiesces the VM: parks every vCPU outside `KVM_RUN` (each completes a pending PIO or
    /// MMIO exit first, so its registers hold whole instructions), then parks the device event
    /// loop and the serial input thread. Once it returns nothing writes guest memory or device
    /// state until [`RunningVm::resume`]; host peers' data waits in their sockets.
    ///
    /// # Errors
    /// [`Error::InvalidState`] if the VM is not running; [`Error::PauseTimeout`] if a vCPU or
    /// the event loop stays busy for 10 s (the VM is then left running);
    /// [`Error::PauseInterrupted`] if the VM stopped while pausing.
    pub fn pause(&self) -> Result<(), Error> {
        let _lifecycle = self.lifecycle();
        self.core.control.pause().map_err(|e| match e {
            PauseError::State(state) => Error::InvalidState { op: "pause", state },
            PauseError::Timeout { parked, alive } => Error::PauseTimeout { parked, alive },
            PauseError::Interrupted(state) => Error::PauseInterrupted { state },
        })?;
        if !self.core.gate.close(Instant::now() + PAUSE_TIMEOUT) {
            let _ = self.core.control.resume();
            return Err(Error::PauseTimeout {
                parked: 0,
                alive: 1,
            });
        }
        Ok(())
    }

    /// Lets a paused VM run again: the device threads first, then the vCPUs.
    pub fn resume(&self) -> Result<(), Error> {
        let _lifecycle = self.lifecycle();
        if self.core.control.state() != VmState::Paused {
            return Err(Error::InvalidState {
                op: "resume",
                state: self.core.control.state(),
            });
        }
        self.core.gate.open();
        self.core
            .control
            .resume()
            .map_err(|state| Error::InvalidState {
                op: "resume",
                state,
            })
    }

    /// Everything the paused VM is besides its memory: vCPUs, irqchip, PIT, clock, devices.
    /// The memory is [`RunningVm::ram`].
    ///
    /// # Errors
    /// [`CaptureError::NotPaused`] unless the VM is paused; an ioctl that fails.
    pub fn capture(&self) -> Result<MachineState, CaptureError> {
        let _lifecycle = self.lifecycle();
        let run = self.core.control.state();
        if run != VmState::Paused {
            return Err(CaptureError::NotPaused(run));
        }
        let msrs = self.core.context.msr_index_list();
        let vcpus = self
            .vcpus
            .iter()
            .map(|vcpu| {
                let vcpu = crate::vcpu::run::lock(vcpu);
                VcpuState::save(&vcpu.fd, vcpu.index, msrs)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vm = VmArchState::save(self.core.kvm.vm_fd())?;
        let serial = self
            .core
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .save();
        Ok(MachineState {
            memory_bytes: self.core.kvm.ram().size(),
            vcpus,
            vm,
            devices: save_devices(&self.core.devices, serial),
        })
    }

    /// How much of the guest's memory is this VM's own and how much it shares with others
    /// (its parent and siblings after a fork, other restores of a snapshot), in bytes, from
    /// the kernel's page tables (`PAGEMAP_SCAN`). A VM that writes its own memfd directly
    /// (never forked) owns every page it has touched.
    ///
    /// # Errors
    /// [`zygote_cow::CowError::Scan`] on a kernel without `PAGEMAP_SCAN`.
    pub fn memory_usage(&self) -> Result<zygote_cow::MemoryUsage, zygote_cow::CowError> {
        let ram = self.ram();
        let usage = zygote_cow::usage(ram.host_addr() as u64, ram.size())?;
        if ram.is_shared() {
            // Its memfd's pages are file pages, but no one else maps them.
            return Ok(zygote_cow::MemoryUsage {
                private_bytes: usage.private_bytes + usage.shared_bytes,
                shared_bytes: 0,
            });
        }
        Ok(usage)
    }

    /// The VM's device handles (snapshot code reads the disks' overlays through them).
    pub(crate) fn core_devices(&self) -> &crate::devices::DeviceHandles {
        &self.core.devices
    }

    /// The guest's RAM and the memfd behind it.
    pub fn ram(&self) -> &GuestRam {
        self.core.kvm.ram()
    }

    /// The counters of the memory engine serving a restored VM's memory (faults served, pages
    /// placed or loaded in bulk); `None` for a booted or forked VM, or an engine with no
    /// service (mmap).
    pub fn engine_stats(&self) -> Option<zygote_snapshot::EngineStats> {
        self.ram().engine_stats()
    }

    /// The KVM context the VM was made with (share it with the VMs restored from this one).
    pub fn context(&self) -> &Arc<KvmContext> {
        &self.core.context
    }

    /// The write tracker behind diff snapshots, and the snapshot it counts from.
    pub(crate) fn dirty_tracking(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<(zygote_cow::WriteTracker, zygote_snapshot::SnapshotId)>>
    {
        self.core.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lifecycle(&self) -> std::sync::MutexGuard<'_, ()> {
        self.core
            .lifecycle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
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
        // Parked device threads must see the stop, not wait for a resume.
        self.core.gate.open();
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
