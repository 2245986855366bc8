//! A paused VM is still: no thread of the VMM writes its memory or device state while host
//! peers keep sending, and everything they sent arrives after the resume.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{builder, start_with, temp_path, GUEST_TIMEOUT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use zygote::agent::{AgentClient, AGENT_PORT};
use zygote::{NetConfig, RunningVm, VsockConfig};
use zygote_guest::{Workload, READY_LINE};

/// FNV-1a over every byte of guest RAM, 8 bytes at a time.
fn memory_hash(vm: &RunningVm) -> u64 {
    let memory = vm.memory();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut buf = vec![0u8; 1 << 20];
    for region in memory.iter() {
        let start = region.start_addr().0;
        let mut offset = 0;
        while offset < region.len() {
            let n = (region.len() - offset).min(buf.len() as u64) as usize;
            memory
                .read_slice(&mut buf[..n], GuestAddress(start + offset))
                .unwrap();
            for word in buf[..n].chunks_exact(8) {
                hash ^= u64::from_le_bytes(word.try_into().unwrap());
                hash = hash.wrapping_mul(0x100_0000_01b3);
            }
            offset += n as u64;
        }
    }
    hash
}

#[test]
fn a_paused_vm_is_byte_identical_while_host_peers_keep_sending() {
    let uds = temp_path("quiesce.vsock");
    let (net, endpoint) = NetConfig::packet().unwrap();
    let (mut serial_host, serial_guest) = UnixStream::pair().unwrap();
    let (mut vm, console) = start_with(
        builder(&Workload::Agent)
            .net(net)
            .serial_input(serial_guest)
            .vsock(VsockConfig {
                guest_cid: 3,
                uds_path: uds.clone(),
            }),
    );
    assert!(console.wait_for(READY_LINE, GUEST_TIMEOUT));
    let mut agent = AgentClient::connect(&uds, AGENT_PORT, GUEST_TIMEOUT).unwrap();
    agent.ping().unwrap();

    vm.pause().unwrap();
    let before = vm.capture().unwrap();
    let hash_before = memory_hash(&vm);
    // Peers keep at it while the VM is paused: frames, serial bytes, a new vsock connection
    // and a request on the open one.
    for i in 0..16u8 {
        endpoint.send(&common::frame(128, i)).unwrap();
    }
    serial_host.write_all(b"typed while paused").unwrap();
    let mut late = UnixStream::connect(&uds).unwrap();
    late.write_all(b"CONNECT 1024\n").unwrap();
    let pinger = std::thread::spawn(move || {
        agent.ping().unwrap();
        agent
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = vm.capture().unwrap();
    assert_eq!(
        memory_hash(&vm),
        hash_before,
        "guest memory changed while paused"
    );
    assert_eq!(
        after.devices, before.devices,
        "device state changed while paused"
    );
    for (a, b) in after.vcpus.iter().zip(&before.vcpus) {
        assert_eq!(a.regs, b.regs, "vCPU registers changed while paused");
        assert_eq!(a.sregs, b.sregs);
    }
    assert!(!pinger.is_finished(), "the agent answered while paused");

    vm.resume().unwrap();
    let mut agent = pinger.join().unwrap();
    // What the peers sent while the VM was paused arrives now.
    assert_eq!(
        agent.net_recv(10_000).unwrap().as_deref(),
        Some(&common::frame(128, 0)[..])
    );
    vm.shutdown().unwrap();
}
