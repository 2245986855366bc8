//! What the vsock tests share: a guest CID, socket paths and packet headers.

use std::path::PathBuf;

use super::packet::{Header, Op, HOST_CID, TYPE_STREAM};

/// The guest's CID in the tests.
pub const GUEST: u64 = 3;

/// A socket path unique to this process and `name`.
pub fn temp_socket(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("zygote-vsock-{}-{name}", std::process::id()))
}

/// A header from the guest to the host with 64 KiB of advertised buffer.
pub fn guest_header(op: Op, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}
