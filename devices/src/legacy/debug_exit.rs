//! The debug-exit device: the guest ends the VM with an exit code, or reports a fatal exception.
//!
//! Register layout (32-bit little-endian writes, narrower writes are zero-extended):
//! - offset 0 (port 0xf4): exit with this code;
//! - offset 4 (port 0xf8): the guest hit an unrecoverable CPU exception with this vector.
//!
//! Reads return zero.

use std::sync::Arc;

use crate::{BusDevice, VmRequest, VmRequestSink};

/// I/O port base of the debug-exit device (the port QEMU's isa-debug-exit uses by default).
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
/// Number of ports the device occupies.
pub const DEBUG_EXIT_PORT_LEN: u64 = 8;
/// Offset of the fault-report register.
pub const DEBUG_FAULT_OFFSET: u64 = 4;

/// The debug-exit device on the PIO bus.
pub struct DebugExit {
    sink: Arc<dyn VmRequestSink>,
}

impl DebugExit {
    /// A device that passes the guest's exit and fault reports to `sink`.
    pub fn new(sink: Arc<dyn VmRequestSink>) -> Self {
        Self { sink }
    }
}

fn le_value(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let n = data.len().min(4);
    bytes[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(bytes)
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = le_value(data);
        match offset {
            0 => self.sink.request(VmRequest::Exit(value)),
            DEBUG_FAULT_OFFSET => self.sink.request(VmRequest::Fault(value)),
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the requests devices make.
    #[derive(Default)]
    pub(crate) struct Requests(Mutex<Vec<VmRequest>>);

    impl Requests {
        pub(crate) fn take(&self) -> Vec<VmRequest> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl VmRequestSink for Requests {
        fn request(&self, request: VmRequest) {
            self.0.lock().unwrap().push(request);
        }
    }

    #[test]
    fn exit_and_fault_registers() {
        let requests = Arc::new(Requests::default());
        let mut dev = DebugExit::new(requests.clone());
        dev.write(0, &7u32.to_le_bytes());
        dev.write(0, &[3]);
        dev.write(DEBUG_FAULT_OFFSET, &14u32.to_le_bytes());
        dev.write(2, &[9]);
        assert_eq!(
            requests.take(),
            vec![VmRequest::Exit(7), VmRequest::Exit(3), VmRequest::Fault(14)]
        );
        let mut data = [0xffu8; 4];
        dev.read(0, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
