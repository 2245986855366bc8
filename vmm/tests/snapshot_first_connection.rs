//! The first host connection to a restored guest is answered, even when the snapshot was taken
//! right after the parent's own connection closed. A restored vsock device owes the guest a
//! TRANSPORT_RESET event; a host connection's REQUEST that reached the guest before it handled
//! the event was wiped by it (refused, or never answered). The device now holds its receive
//! queue until the driver has handled the reset.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use common::{agent_vm, temp_path, AgentOpts};
use zygote::agent::AGENT_PORT;
use zygote::snapshot_format::{EagerEngine, MemoryEngine, MmapEngine};
use zygote::state::DeviceResources;
use zygote::{MemoryFormat, RestoreConfig, Snapshot, Vm, VsockConfig};

/// Restores per run: with the bug about a third of them lost the first request.
const RESTORES: usize = 12;

/// One `CONNECT` handshake on the vsock socket, no retry: the reply line, empty if the device
/// closed the socket instead.
fn handshake(uds: &std::path::Path) -> String {
    let mut stream = UnixStream::connect(uds).expect("connect to the vsock socket");
    stream
        .write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())
        .expect("send CONNECT");
    let mut line = Vec::new();
    let mut byte = [0u8];
    while !line.ends_with(b"\n") && stream.read(&mut byte).expect("read the reply") == 1 {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[test]
fn a_restored_guest_answers_the_first_connection_request() {
    let parent = agent_vm("snap-first-conn", AgentOpts::default());
    parent.vm.agent().unwrap().ping().unwrap();
    parent.vm.pause().unwrap();
    let dir = temp_path("snap-first-conn-dir");
    let _ = std::fs::remove_dir_all(&dir);
    parent.vm.snapshot(&dir, MemoryFormat::Raw).unwrap();
    let snapshot = Snapshot::load(&dir).unwrap();
    for i in 0..RESTORES {
        let uds = temp_path(&format!("snap-first-conn-{i}.vsock"));
        let config = RestoreConfig {
            devices: DeviceResources {
                vsock: Some(VsockConfig {
                    guest_cid: 3,
                    uds_path: uds.clone(),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut engine: Box<dyn MemoryEngine> = if i % 2 == 0 {
            Box::new(EagerEngine::new())
        } else {
            Box::new(MmapEngine::new())
        };
        let vm = Vm::restore_snapshot(&snapshot, engine.as_mut(), config)
            .unwrap()
            .start()
            .unwrap();
        let reply = handshake(&uds);
        assert!(
            reply.starts_with("OK "),
            "restore {i}: first handshake got {reply:?}"
        );
        drop(vm);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
