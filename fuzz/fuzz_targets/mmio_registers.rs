//! The virtio-mmio register interface: any sequence of reads and writes of any width at any
//! offset, against a real device, must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zygote_devices::virtio::block::Block;
use zygote_devices::virtio::mmio::MmioTransport;
use zygote_devices::virtio::testing::guest_memory;
use zygote_fuzz::{line, register_access, Input, MemDisk};

fuzz_target!(|data: &[u8]| {
    let block = Block::new(Box::new(MemDisk(vec![0; 64 * 1024])), false, "fuzz").unwrap();
    let Ok(mut dev) = MmioTransport::new(block, guest_memory(), line()) else {
        return;
    };
    let mut input = Input(data);
    while !input.is_empty() {
        register_access(&mut dev, &mut input);
    }
});
