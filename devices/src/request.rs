//! Requests that a device makes of the VM it belongs to.

/// Something a device asks the VM to do on the guest's behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmRequest {
    /// The guest asked to end the VM with this exit code (debug-exit port).
    Exit(u32),
    /// The guest reported an unrecoverable CPU exception with this vector.
    Fault(u32),
    /// The guest asked for a system reset (i8042 reset line).
    Reset,
}

/// Receives the requests devices make; the VMM implements it.
///
/// Implementations must not block for long: they are called on a vCPU thread while it handles
/// the guest's I/O exit.
pub trait VmRequestSink: Send + Sync {
    /// Handles one request.
    fn request(&self, request: VmRequest);
}
