//! virtio-net end to end: frames between the guest agent and the host, through the in-process
//! packet backend and through a TAP interface in a network namespace the test creates.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{agent_vm, AgentOpts};

#[test]
fn frames_cross_the_in_process_backend_both_ways() {
    let mut guest = agent_vm(
        "net-packet",
        AgentOpts {
            packet_nic: true,
            ..Default::default()
        },
    );
    let endpoint = guest.endpoint.take().unwrap();
    let mut agent = guest.vm.agent().unwrap();

    common::exchange_frames(
        &mut agent,
        &endpoint,
        &common::frame(100, 0x11),
        &common::frame(1514, 0x22),
    );
    // Nothing more is waiting.
    assert_eq!(agent.net_recv(50).unwrap(), None);

    let stats = guest.vm.devices().net_stats(0).unwrap();
    assert_eq!((stats.tx_frames, stats.rx_frames), (1, 1));
    guest.vm.shutdown().unwrap();
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// Received-packet count of `dev` in this thread's network namespace.
fn rx_packets(dev: &str) -> u64 {
    let table = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    let line = table
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{dev}:")))
        .expect("the TAP is listed");
    let fields: Vec<&str> = line.split(':').nth(1).unwrap().split_whitespace().collect();
    fields[1].parse().unwrap()
}

fn tap_round_trip() {
    let tap = "zygtap0";
    let mut guest = agent_vm(
        "net-tap",
        AgentOpts {
            tap: Some(tap.into()),
            ..Default::default()
        },
    );
    ip(&["link", "set", "dev", tap, "up"]);
    ip(&["addr", "add", "169.254.77.1/24", "dev", tap]);
    let mut agent = guest.vm.agent().unwrap();

    // Guest to host: the frame is received by the TAP interface.
    let before = rx_packets(tap);
    agent.net_send(&common::frame(64, 0x33)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rx_packets(tap) == before {
        assert!(
            Instant::now() < deadline,
            "the guest's frame never reached {tap}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Host to guest: a datagram to a link-local neighbour makes the kernel broadcast an ARP
    // request out of the TAP, which the guest receives.
    let socket = std::net::UdpSocket::bind("169.254.77.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "no ARP request reached the guest"
        );
        let _ = socket.send_to(b"hello", "169.254.77.2:9");
        if let Some(frame) = agent.net_recv(500).unwrap() {
            if frame.get(12..14) == Some(&[0x08, 0x06]) {
                break;
            }
        }
    }
    guest.vm.shutdown().unwrap();
}

#[test]
fn frames_cross_a_tap_in_a_network_namespace() {
    // A thread of its own in a new network namespace: the TAP, the `ip` commands and the
    // socket all live there, and the namespace goes away with the thread.
    std::thread::spawn(|| {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread to a new,
        // empty network namespace.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "unshare: {}", std::io::Error::last_os_error());
        tap_round_trip();
    })
    .join()
    .unwrap();
}
