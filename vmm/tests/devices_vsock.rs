//! virtio-vsock end to end: host-to-guest and guest-to-host streams, many at once, a large
//! transfer with a checksum, half-closes, and silent host peers.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use common::{agent_vm, AgentOpts, GUEST_TIMEOUT};
use vm_memory::{Bytes, GuestAddress};
use zygote::agent::{AGENT_COUNTER_ADDR, AGENT_PORT};
use zygote::vm_memory;
use zygote_guest::proto::agent::{source_checksum, Request, Response, StreamChecksum};

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

/// What a one-shot client (`socat -u`, a request/response script) does: connect, send
/// `CONNECT <port>\n` and `request`, shut its write side, then read until end of stream.
/// Returns everything it read.
fn one_shot(uds: &Path, request: &[u8]) -> Vec<u8> {
    let mut host = UnixStream::connect(uds).unwrap();
    host.write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())
        .unwrap();
    host.write_all(request).unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    host.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    got
}

/// Splits `OK <port>\n` off the front of what a host client read.
fn after_ok_line(got: &[u8]) -> &[u8] {
    let end = got.iter().position(|&b| b == b'\n');
    let line = end.map(|end| &got[..end]);
    assert!(
        line.is_some_and(|line| line.starts_with(b"OK ")),
        "no OK line: {:?}",
        String::from_utf8_lossy(got)
    );
    &got[end.unwrap() + 1..]
}

#[test]
fn a_host_half_close_before_the_guest_accepts_still_gets_ok_and_the_answer() {
    let mut guest = agent_vm("vsock-half-close", AgentOpts::default());
    let mut frame = vec![0u8; 64];
    let n = Request::Echo(b"hello").encode(&mut frame).unwrap();
    // Paused, the guest cannot answer the REQUEST before the device sees the half-close.
    guest.vm.pause().unwrap();
    let uds = guest.uds.clone();
    let client = std::thread::spawn(move || one_shot(&uds, &frame[..n]));
    std::thread::sleep(Duration::from_millis(200));
    guest.vm.resume().unwrap();
    let got = client.join().unwrap();
    // The guest got the request, saw the half-close after it, answered, and closed.
    let answer = after_ok_line(&got);
    let (response, used) = Response::decode(answer).unwrap();
    assert_eq!(response, Response::Echo(b"hello"));
    assert_eq!(used, answer.len(), "nothing after the answer");
    // A half-close right after the CONNECT line: OK, then the guest hangs up.
    guest.vm.pause().unwrap();
    let uds = guest.uds.clone();
    let client = std::thread::spawn(move || one_shot(&uds, &[]));
    std::thread::sleep(Duration::from_millis(200));
    guest.vm.resume().unwrap();
    assert_eq!(after_ok_line(&client.join().unwrap()), b"");
    guest.vm.agent().unwrap().ping().unwrap();
    guest.vm.shutdown().unwrap();
}

/// A local program opens the VM's whole connection allowance and never sends a `CONNECT`
/// line: the agent must stay reachable, and the silent connections are closed.
#[test]
fn silent_host_connections_do_not_lock_out_the_agent() {
    let mut guest = agent_vm("vsock-silent", AgentOpts::default());
    let mut silent: Vec<UnixStream> = (0..512)
        .map(|_| UnixStream::connect(&guest.uds).unwrap())
        .collect();
    let mut agent = guest.vm.agent().unwrap();
    agent.ping().unwrap();
    assert_eq!(agent.echo(b"still here").unwrap(), b"still here");
    // Each silent connection is closed: at once when it is pushed out, or at its deadline.
    let mut byte = [0u8; 1];
    for stream in &mut silent {
        stream.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
        assert_eq!(stream.read(&mut byte).unwrap(), 0, "closed by the device");
    }
    guest.vm.shutdown().unwrap();
}
