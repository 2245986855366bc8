//! The vsock packet header and the muxer behind it: arbitrary headers and payloads from the
//! guest, and arbitrary tx/rx chains.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zygote_devices::virtio::vsock::{Header, Vsock, VsockConfig, HEADER_LEN};
use zygote_fuzz::{Input, Rig};

fuzz_target!(|data: &[u8]| {
    if data.len() >= HEADER_LEN {
        let bytes: [u8; HEADER_LEN] = data[..HEADER_LEN].try_into().unwrap();
        let header = Header::from_bytes(&bytes);
        assert_eq!(Header::from_bytes(&header.to_bytes()), header);
    }
    let path = std::env::temp_dir().join(format!("zygote-fuzz-vsock-{}", std::process::id()));
    let config = VsockConfig {
        guest_cid: 3,
        uds_path: path,
    };
    let Ok(vsock) = Vsock::new(&config) else {
        return;
    };
    Rig::new(vsock).drive(&mut Input(data));
});
