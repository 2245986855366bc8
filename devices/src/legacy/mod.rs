//! The legacy PC devices a microVM keeps: a 16550 UART, the i8042 reset line and a debug-exit
//! port through which the guest ends the VM with an exit code.

mod debug_exit;
mod i8042;
mod serial;

pub use debug_exit::{DebugExit, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN, DEBUG_FAULT_OFFSET};
pub use i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
pub use serial::{
    EventFdTrigger, Serial, SerialError, SerialState, COM1_IRQ, COM1_PORT, COM1_PORT_LEN,
};
