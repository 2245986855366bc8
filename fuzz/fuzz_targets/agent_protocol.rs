//! The agent protocol decoder, both directions: any bytes decode to a frame or an error,
//! never a panic, and what decodes encodes again to bytes that decode to the same value.
//! (Byte equality is too strong: `Counter` answers two opcodes and encodes as one of them.)
//! Every opcode is reached, `Identity` (17) included. The same bytes also go through the VM
//! identity page's decoder, which the guest runs when it starts and whenever the generation
//! it polls changes.
//! The packed lists inside messages (exec's argv and environment, directory entries, ports)
//! are walked to the end too, as the agents and the host do.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zygote_guest_proto::agent::{Request, Response};
use zygote_guest_proto::VmIdentity;

fuzz_target!(|data: &[u8]| {
    if let Ok((request, _)) = Request::decode(data) {
        if let Request::Exec(exec) = request {
            let _ = exec.argv.iter().chain(exec.env.iter()).count();
        }
        let mut out = vec![0u8; request.encoded_len()];
        let n = request.encode(&mut out).expect("a decoded request encodes");
        assert_eq!(Request::decode(&out[..n]), Ok((request, n)));
    }
    if let Ok((response, _)) = Response::decode(data) {
        match response {
            Response::Entries { entries, .. } => {
                let walked: usize = entries.iter().map(|e| e.encoded_len()).sum();
                assert_eq!(walked, entries.as_bytes().len());
            }
            Response::Ports(ports) => assert_eq!(ports.iter().count() * 2, ports.as_bytes().len()),
            _ => {}
        }
        let mut out = vec![0u8; response.encoded_len()];
        let n = response
            .encode(&mut out)
            .expect("a decoded response encodes");
        assert_eq!(Response::decode(&out[..n]), Ok((response, n)));
    }
    if let Some(identity) = VmIdentity::decode(data) {
        assert_eq!(VmIdentity::decode(&identity.encode()), Some(identity));
    }
});
