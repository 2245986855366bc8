//! The i8042 controller, kept for its reset line: the guest writes 0xfe to port 0x64.

use std::sync::Arc;

use vm_superio::Trigger;

use crate::{BusDevice, VmRequest, VmRequestSink};

/// I/O port base of the i8042 controller.
pub const I8042_PORT: u64 = 0x60;
/// Number of ports the controller occupies (0x60..=0x64).
pub const I8042_PORT_LEN: u64 = 5;

struct ResetLine(Arc<dyn VmRequestSink>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(VmRequest::Reset);
        Ok(())
    }
}

/// The i8042 controller on the PIO bus.
pub struct I8042 {
    inner: vm_superio::I8042Device<ResetLine>,
}

impl I8042 {
    /// A controller that asks `sink` for a reset when the guest pulses the reset line.
    pub fn new(sink: Arc<dyn VmRequestSink>) -> Self {
        Self {
            inner: vm_superio::I8042Device::new(ResetLine(sink)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(offset), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.inner.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            // The trigger is infallible.
            let _ = self.inner.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::debug_exit::tests::Requests;

    #[test]
    fn reset_command_requests_a_reset() {
        let requests = Arc::new(Requests::default());
        let mut dev = I8042::new(requests.clone());
        dev.write(4, &[0x01]);
        dev.write(0, &[0xfe]);
        assert!(requests.take().is_empty());
        dev.write(4, &[0xfe]);
        assert_eq!(requests.take(), vec![VmRequest::Reset]);
    }
}
