//! Port I/O. User mode runs with IOPL 3, so these work at CPL3 and CPL0 alike.

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
/// The write must have no effect on memory the kernel relies on (a port that could start DMA,
/// say); the console and exit ports used here have none.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: `out` touches no memory; the caller vouches for the port's side effects.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: `out` touches no memory; the caller vouches for the port's side effects.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) };
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// As for [`outb`]: the read must have no effect on memory the kernel relies on.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` touches no memory; the caller vouches for the port's side effects.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack)) };
    value
}
