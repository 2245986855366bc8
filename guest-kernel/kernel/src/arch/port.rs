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

/// `rep insb`, `rep insw` or `rep insd` from one port into a buffer of bytes, words or dwords:
/// one string instruction for the whole buffer.
pub trait RepIns: Sized {
    /// Reads `buf.len()` elements from `port` into `buf`, in order.
    ///
    /// # Safety
    /// As for [`inb`]: the reads must have no effect on memory the kernel relies on.
    unsafe fn rep_ins(port: u16, buf: &mut [Self]);
}

/// `rep outsb`, `rep outsw` or `rep outsd` of a buffer to one port.
pub trait RepOuts: Sized {
    /// Writes the elements of `buf` to `port`, in order.
    ///
    /// # Safety
    /// As for [`outb`].
    unsafe fn rep_outs(port: u16, buf: &[Self]);
}

macro_rules! rep_string_io {
    ($ty:ty, $ins:literal, $outs:literal) => {
        impl RepIns for $ty {
            unsafe fn rep_ins(port: u16, buf: &mut [Self]) {
                // SAFETY: writes exactly `buf.len()` elements at `buf` (DF is clear on entry to
                // inline assembly), which the exclusive borrow covers; the caller vouches for
                // the port.
                unsafe {
                    asm!($ins, in("dx") port, inout("rdi") buf.as_mut_ptr() => _,
                        inout("rcx") buf.len() => _, options(nostack, preserves_flags))
                };
            }
        }

        impl RepOuts for $ty {
            unsafe fn rep_outs(port: u16, buf: &[Self]) {
                // SAFETY: reads exactly `buf.len()` elements at `buf`, which the borrow covers;
                // the caller vouches for the port.
                unsafe {
                    asm!($outs, in("dx") port, inout("rsi") buf.as_ptr() => _,
                        inout("rcx") buf.len() => _, options(nostack, preserves_flags, readonly))
                };
            }
        }
    };
}

rep_string_io!(u8, "rep insb", "rep outsb");
rep_string_io!(u16, "rep insw", "rep outsw");
rep_string_io!(u32, "rep insd", "rep outsd");
