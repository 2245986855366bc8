//! Ending the VM through the VMM's exit ports.

use zygote_guest_proto::{DEBUG_EXIT_PORT, FAULT_PORT};

use crate::arch::port;

/// Ends the VM with `code` through the debug-exit port.
pub fn exit(code: u32) -> ! {
    // SAFETY: the debug-exit port only ends the VM; it affects no memory.
    unsafe { port::outl(DEBUG_EXIT_PORT, code) };
    spin_forever()
}

/// Reports exception `vector` on the fault port, which ends the VM as a guest fault.
pub fn report_fault(vector: u32) {
    // SAFETY: the fault port only ends the VM; it affects no memory.
    unsafe { port::outl(FAULT_PORT, vector) };
}

/// Spins forever in whatever mode the caller runs (at CPL3: natively, without VM exits).
pub fn spin_forever() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
