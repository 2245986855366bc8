//! I/O ports the guest uses and the exit codes it reports through them.

/// COM1, a 16550 UART: the guest writes console bytes to this port, one `out` per byte, and never
/// polls the line status register (except the `string-io` workload, see
/// [`crate::StringIoReport`]).
pub const COM1_PORT: u16 = 0x3f8;

/// Debug exit: a 32-bit `out` of a code to this port ends the VM with that exit code.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Fault report: a 32-bit `out` of an exception vector to this port ends the VM as a guest fault.
pub const FAULT_PORT: u16 = 0xf8;

/// Idle: a 32-bit `out` to this port tells the VMM the guest found no work; the value is the
/// longest the guest wants to sleep, in microseconds (the VMM caps it at [`IDLE_MAX_WAIT_US`]).
/// The `out` returns once there may be work: a device made something visible to the guest (a
/// used buffer, whether or not the driver asked for an interrupt; a config change; serial
/// input), the wait ran out, or the VMM wants the vCPU (pause, stop). It may also return early
/// for no visible reason, so the guest polls again either way. Zygote's VMM only; other VMMs
/// drop the write and the guest merely keeps polling.
pub const IDLE_PORT: u16 = 0xf0;

/// The longest one write to [`IDLE_PORT`] sleeps: 1 s.
pub const IDLE_MAX_WAIT_US: u32 = 1_000_000;

/// The i8042 keyboard controller's command port.
pub const I8042_COMMAND_PORT: u16 = 0x64;

/// Writing this to [`I8042_COMMAND_PORT`] resets the machine.
pub const I8042_RESET_COMMAND: u8 = 0xfe;

/// Exit codes the guest writes to [`DEBUG_EXIT_PORT`] on its own (an `exit:<code>` workload
/// exits with whatever code it was given).
pub mod exit_code {
    /// The workload finished.
    pub const OK: u32 = 0;
    /// The `zygote.workload=` value was not understood.
    pub const UNKNOWN_WORKLOAD: u32 = 2;
    /// `touch` could not run: the range it needs is not usable RAM.
    pub const TOUCH_ERROR: u32 = 3;
    /// `agent` could not start: no vsock device, or too little RAM for its buffers.
    pub const AGENT_ERROR: u32 = 4;
    /// The guest kernel panicked (the same code a Rust program's panic gives).
    pub const PANIC: u32 = 101;
}
