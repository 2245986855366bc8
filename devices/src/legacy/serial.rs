//! A 16550 UART (vm-superio) whose output goes to any `Write` and whose interrupt is an eventfd.

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
pub use vm_superio::serial::SerialState;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// I/O port base of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of ports a 16550 occupies.
pub const COM1_PORT_LEN: u64 = 8;
/// ISA interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;

/// An interrupt line backed by an eventfd (registered by the VMM as a KVM irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Errors from feeding input to the UART.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The receive FIFO could not take the input or the interrupt could not be raised.
    #[error("cannot queue serial input: {0}")]
    Enqueue(String),
    /// A saved UART state was refused (receive FIFO over 64 bytes) or its pending interrupt
    /// could not be raised.
    #[error("cannot restore the UART: {0}")]
    Restore(String),
}

type Uart = vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

/// COM1: a 16550 UART on the PIO bus.
pub struct Serial {
    uart: Uart,
}

impl Serial {
    /// A UART that raises `interrupt` and writes what the guest transmits to `out`.
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: vm_superio::Serial::new(EventFdTrigger(interrupt), out),
        }
    }

    /// Queues bytes for the guest to receive; returns how many fit in the receive FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> Result<usize, SerialError> {
        let room = self.uart.fifo_capacity().min(input.len());
        if room == 0 {
            return Ok(0);
        }
        self.uart
            .enqueue_raw_bytes(&input[..room])
            .map_err(|e| SerialError::Enqueue(format!("{e:?}")))
    }

    /// The UART's registers and receive FIFO (vm-superio's `SerialState`), for a snapshot.
    pub fn save(&self) -> SerialState {
        self.uart.state()
    }

    /// A UART from a saved state, raising `interrupt` and writing to `out`. vm-superio checks
    /// the FIFO length and raises again the interrupts the saved registers say are pending
    /// (an edge already sent on an irqfd is not part of any state).
    pub fn restore(
        state: &SerialState,
        interrupt: EventFd,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, SerialError> {
        let uart = vm_superio::Serial::from_state(state, EventFdTrigger(interrupt), NoEvents, out)
            .map_err(|e| SerialError::Restore(format!("{e:?}")))?;
        Ok(Self { uart })
    }

    /// Flushes what the guest wrote so far to the output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.uart.writer_mut().flush()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(offset), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            // A failing sink (closed pipe, full disk) must not stop the guest: the byte is lost
            // and the guest carries on, as with a real UART whose cable is unplugged.
            let _ = self.uart.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, Shared, EventFd) {
        let out = Shared::default();
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let serial = Serial::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        (serial, out, irq)
    }

    fn libc_nonblock() -> i32 {
        vmm_sys_util::eventfd::EFD_NONBLOCK
    }

    #[test]
    fn transmitted_bytes_reach_the_sink() {
        let (mut serial, out, _irq) = serial();
        for b in b"hi\n" {
            serial.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn input_is_received_by_the_guest() {
        let (mut serial, _out, _irq) = serial();
        assert_eq!(serial.enqueue_input(b"ok").unwrap(), 2);
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data-ready bit set");
        let mut byte = [0u8];
        serial.read(0, &mut byte);
        assert_eq!(byte[0], b'o');
    }

    #[test]
    fn a_full_fifo_takes_only_what_fits() {
        let (mut serial, _out, _irq) = serial();
        let big = vec![b'x'; 1000];
        let taken = serial.enqueue_input(&big).unwrap();
        assert!(taken < big.len());
        assert_eq!(serial.enqueue_input(&big).unwrap(), 0);
    }
}
