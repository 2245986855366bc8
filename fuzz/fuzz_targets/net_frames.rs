//! virtio-net tx and rx chain parsing, with frames arriving from the host in between.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zygote_devices::virtio::net::{Net, NetConfig, PacketBackend};
use zygote_fuzz::{Input, Rig};

fuzz_target!(|data: &[u8]| {
    let Ok((backend, endpoint)) = PacketBackend::pair() else {
        return;
    };
    let Ok(net) = Net::new(NetConfig::default(), Box::new(backend)) else {
        return;
    };
    let mut input = Input(data);
    let frame_len = usize::from(input.u16() % 2048);
    let frame = input.bytes(frame_len).to_vec();
    if !frame.is_empty() {
        let _ = endpoint.send(&frame);
    }
    Rig::new(net).drive(&mut input);
});
