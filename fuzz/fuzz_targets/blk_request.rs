//! virtio-blk request parsing: arbitrary descriptor tables, chains and buffer contents.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zygote_devices::virtio::block::Block;
use zygote_fuzz::{Input, MemDisk, Rig};

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let read_only = input.u8().is_multiple_of(4);
    let block = Block::new(Box::new(MemDisk(vec![0; 64 * 1024])), read_only, "fuzz").unwrap();
    Rig::new(block).drive(&mut input);
});
