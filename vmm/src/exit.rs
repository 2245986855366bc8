//! Why a VM stopped.

use std::sync::Arc;

/// How a guest failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFault {
    /// The CPU triple-faulted (KVM reported a shutdown). The registers are those KVM reports
    /// at that point, for diagnosis.
    TripleFault {
        /// Instruction pointer.
        rip: u64,
        /// Stack pointer.
        rsp: u64,
        /// The exception KVM was delivering, if it says (vector).
        exception: Option<u8>,
    },
    /// The guest kernel reported an unrecoverable exception through the debug-exit device.
    Exception {
        /// The exception vector (0 divide error, 6 invalid opcode, 13 #GP, 14 #PF, ...).
        vector: u32,
    },
    /// The guest's kernel reported a crash (`KVM_SYSTEM_EVENT_CRASH`).
    Crash,
    /// KVM could not enter the guest (invalid guest state).
    EntryFailure {
        /// Hardware entry-failure reason.
        reason: u64,
    },
    /// KVM could not emulate what the guest did (`KVM_EXIT_INTERNAL_ERROR`).
    InternalError {
        /// KVM's sub-error code.
        suberror: u32,
    },
}

/// Why a VM stopped.
#[derive(Clone, Debug)]
pub enum ExitReason {
    /// The guest exited with this code through the debug-exit device.
    Exited(u32),
    /// The guest asked for a reset (i8042 or KVM reset event).
    Reset,
    /// The guest powered off (KVM shutdown event) or halted with nothing left to wake it.
    PowerOff,
    /// The guest failed.
    GuestFault(GuestFault),
    /// The host shut the VM down.
    Shutdown,
    /// The VMM failed to run the guest: a vCPU (`VcpuError`) or the device event loop
    /// (`EventLoopError`) failed. Downcast to look inside.
    HostError(Arc<dyn std::error::Error + Send + Sync>),
}

impl ExitReason {
    /// The exit code, if the guest exited through the debug-exit device.
    pub fn exit_code(&self) -> Option<u32> {
        match self {
            Self::Exited(code) => Some(*code),
            _ => None,
        }
    }
}
