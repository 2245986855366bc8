//! virtio-vsock end to end: host-to-guest and guest-to-host streams, many at once, and a
//! large transfer with a checksum.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;

use common::{agent_vm, AgentOpts};
use vm_memory::{Bytes, GuestAddress};
use zygote::agent::AGENT_COUNTER_ADDR;
use zygote::vm_memory;
use zygote_guest::proto::agent::{source_checksum, StreamChecksum};

#[test]
fn host_to_guest_requests_and_guest_memory_agree() {
    let mut guest = agent_vm("vsock-basic", AgentOpts::default());
    let mut agent = guest.vm.agent().unwrap();
    agent.ping().unwrap();
    assert_eq!(agent.echo(b"hello, guest").unwrap(), b"hello, guest");
    assert_eq!(agent.counter_add(40).unwrap(), 40);
    assert_eq!(agent.counter_add(2).unwrap(), 42);
    assert_eq!(agent.counter_get().unwrap(), 42);
    // The counter lives in guest memory, where the host can read it too.
    let counter: u64 = guest
        .vm
        .memory()
        .read_obj(GuestAddress(AGENT_COUNTER_ADDR))
        .unwrap();
    assert_eq!(counter, 42);
    agent.exit(7).unwrap();
    assert_eq!(
        common::wait_exit(&mut guest.vm, &guest.console).exit_code(),
        Some(7)
    );
}

#[test]
fn guest_to_host_connections_reach_the_port_socket() {
    let mut guest = agent_vm("vsock-g2h", AgentOpts::default());
    let port = 5005;
    let path = format!("{}_{port}", guest.uds.display());
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).unwrap();
        stream.write_all(b"reply to ").unwrap();
        stream.write_all(&got).unwrap();
    });
    let mut agent = guest.vm.agent().unwrap();
    let reply = agent.connect_host(port, b"guest").unwrap();
    assert_eq!(reply, b"reply to guest");
    server.join().unwrap();
    // Nobody listens on another port: the guest's connection is refused, the agent says so.
    assert!(agent.connect_host(port + 1, b"x").is_err());
    agent.ping().unwrap();
    let _ = std::fs::remove_file(&path);
    guest.vm.shutdown().unwrap();
}

#[test]
fn sixty_four_concurrent_streams() {
    let mut guest = agent_vm("vsock-64", AgentOpts::default());
    let clients: Vec<_> = (0..64).map(|_| guest.vm.agent().unwrap()).collect();
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut agent)| {
            std::thread::spawn(move || {
                for round in 0..4u8 {
                    let msg: Vec<u8> = (0..1000 + i).map(|b| b as u8 ^ round).collect();
                    assert_eq!(agent.echo(&msg).unwrap(), msg);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    guest.vm.shutdown().unwrap();
}

#[test]
fn a_64_mib_transfer_each_way_matches_its_checksum() {
    let mut guest = agent_vm("vsock-64mib", AgentOpts::default());
    let mut agent = guest.vm.agent().unwrap();
    let len = 64usize << 20;
    let data: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect();
    let mut expected = StreamChecksum::new();
    expected.update(&data);
    assert_eq!(agent.sink(&data).unwrap(), (len as u64, expected.value()));
    let seed = 0x1234_5678;
    assert_eq!(
        agent.source(len as u64, seed).unwrap(),
        source_checksum(seed, len as u64)
    );
    guest.vm.shutdown().unwrap();
}

#[test]
fn connecting_to_a_paused_guest_gives_up_at_its_deadline() {
    use std::time::{Duration, Instant};
    use zygote::agent::{AgentClient, AgentError, AGENT_PORT};

    let mut guest = agent_vm("vsock-paused", AgentOpts::default());
    guest.vm.pause().unwrap();
    let start = Instant::now();
    let result = AgentClient::connect(&guest.uds, AGENT_PORT, Duration::from_secs(2));
    assert!(matches!(result, Err(AgentError::Connect { .. })));
    // The deadline holds (the handshake used to wait a fixed 60 s per attempt).
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    guest.vm.resume().unwrap();
    guest.vm.agent().unwrap().ping().unwrap();
    guest.vm.shutdown().unwrap();
}
