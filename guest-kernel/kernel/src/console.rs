//! The console: COM1, written one byte per `out` (the VMM's UART always accepts a byte, and
//! polling its line status would cost a VM exit per poll).

use core::fmt;

use zygote_guest_proto::COM1_PORT;

use crate::arch::port;

/// COM1 as a `core::fmt::Write` sink. Stateless: every value writes to the same port.
pub struct Console;

impl Console {
    /// Writes raw bytes, `\n` as is.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            // SAFETY: COM1's data register only transmits; it affects no memory.
            unsafe { port::outb(COM1_PORT, byte) };
        }
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.write_bytes(text.as_bytes());
        Ok(())
    }
}

/// Backs [`print!`] and [`println!`].
pub fn print_fmt(args: fmt::Arguments<'_>) {
    // Console::write_str never fails.
    let _ = fmt::Write::write_fmt(&mut Console, args);
}

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::print_fmt(format_args!($($arg)*))
    };
}

/// Prints a line to COM1.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}
