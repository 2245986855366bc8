//! A hostile guest on the real VMM: the guest's `hostile` workload sends the virtio-blk device
//! read requests with one thing wrong each, the vsock device packets on no connection (one
//! malformed), and every net and vsock queue (net rx and tx, vsock rx, tx and event) chains
//! with one bad buffer each: a descriptor loop, a buffer outside RAM, one in the MMIO gap, a
//! huge length, a zero length, the wrong direction. Then it resets each device and serves the
//! agent. Each bad chain gets what the device's code gives it (an error status, an RST, the
//! chain back empty, DEVICE_NEEDS_RESET, or kept), and the VMM and every device keep working.
//! The devices' own hostile tests (a mock driver) are in `devices/`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::disk_image;
use zygote::{BlockConfig, ExitReason, NetConfig, PacketEndpoint, RunningVm, VsockConfig};
use zygote_guest::proto::{
    BadBuf, HostileBlk, HostileOutcome, HostileQueue, HostileQueueId, HostileVsock,
};
use zygote_guest::{Workload, READY_LINE};

const SECTOR: usize = 512;
const DISK_BYTES: usize = 1 << 20;

/// Echoes every frame the guest sends back to it until `stop`, and returns them: the
/// `hostile` workload's net receive cases need a frame to arrive for each bad chain.
fn echo(endpoint: &PacketEndpoint, stop: &AtomicBool) -> Vec<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        if let Ok(Some(len)) = endpoint.recv(&mut buf, Duration::from_millis(20)) {
            seen.push(buf[..len].to_vec());
            endpoint.send(&buf[..len]).unwrap();
        }
    }
    seen
}

/// Boots the `hostile` workload with a disk, a packet NIC (echoed until the ready line) and
/// vsock; returns the VM, its console text at the ready line, the frames echoed, and the host
/// end of the NIC.
fn boot_hostile(image: &std::path::Path) -> (RunningVm, String, Vec<Vec<u8>>, PacketEndpoint) {
    let (net, endpoint) = NetConfig::packet().expect("socket pair");
    let builder = common::builder(&Workload::Hostile)
        .vsock(VsockConfig {
            guest_cid: 3,
            uds_path: common::temp_path("hostile.vsock"),
        })
        .block(BlockConfig::new(image))
        .net(net);
    let stop = AtomicBool::new(false);
    let (mut vm, console, echoed) = std::thread::scope(|s| {
        let echoer = s.spawn(|| echo(&endpoint, &stop));
        let (vm, console) = common::start_with(builder);
        console.wait_for(READY_LINE, common::GUEST_TIMEOUT);
        stop.store(true, Ordering::SeqCst);
        (vm, console, echoer.join().unwrap())
    });
    let text = console.text();
    if !text.contains(READY_LINE) {
        let _ = vm.shutdown();
        panic!("hostile guest not ready; console:\n{text}");
    }
    (vm, text, echoed, endpoint)
}

/// The line for `queue`, every case's outcome checked against `expected` (the rest must be
/// `dropped`), and the device's recovery.
fn check_queue(console: &str, queue: HostileQueueId, expected: &[(BadBuf, HostileOutcome)]) {
    let line = HostileQueue::find(console, queue)
        .unwrap_or_else(|| panic!("no hostile queue line for {queue:?}; console:\n{console}"));
    for case in BadBuf::ALL {
        let want = expected
            .iter()
            .find(|(c, _)| *c == case)
            .map_or(HostileOutcome::Dropped, |&(_, o)| o);
        assert_eq!(
            line.outcome(case),
            want,
            "{queue:?} {case:?}; console:\n{console}"
        );
    }
    assert!(
        line.recovered,
        "{queue:?} did not recover; console:\n{console}"
    );
}

#[test]
fn a_hostile_guest_gets_errors_and_every_device_keeps_working() {
    let image = disk_image("hostile-blk", DISK_BYTES);
    let original = std::fs::read(&image).unwrap();
    let (mut vm, console, echoed, endpoint) = boot_hostile(&image);
    for line in console.lines().filter(|l| l.contains("hostile")) {
        eprintln!("{line}");
    }
    let blk = HostileBlk::find(&console)
        .unwrap_or_else(|| panic!("no hostile blk line; console:\n{console}"));
    let vsock = HostileVsock::find(&console)
        .unwrap_or_else(|| panic!("no hostile vsock line; console:\n{console}"));

    use HostileOutcome::{IoErr, NeedsReset, Ok, Rst, Timeout, Unsupp};
    assert_eq!(blk.outside_ram, IoErr, "{console}");
    assert_eq!(blk.past_end, IoErr, "{console}");
    assert!(matches!(blk.wrong_direction, IoErr | Unsupp), "{console}");
    assert_eq!(blk.zero_len, IoErr, "{console}");
    // Zero-length descriptors carry nothing and are skipped: a read of no bytes, answered OK.
    assert_eq!(blk.zero_data, Ok, "{console}");
    assert_eq!(blk.huge_len, IoErr, "{console}");
    // A loop cannot be answered: the chain comes back without a status, the device needs a
    // reset, and after the guest's reset it works again.
    assert_eq!(blk.looped, NeedsReset, "{console}");
    assert!(blk.recovered, "{console}");
    assert_eq!(blk.good_reads, HostileBlk::CASES, "{console}");
    assert_eq!(
        vsock,
        HostileVsock {
            // A packet whose payload cannot be read loses stream data: the device answers RST.
            short_payload: Rst,
            unknown_conn: Rst,
        },
        "{console}"
    );

    // virtio-net: a transmit chain it cannot read whole is completed empty and counted
    // (`NetStats::tx_errors`), never sent; a receive chain it cannot write is completed empty
    // and counted, the frame waiting for the next chain; a receive chain with no room at all
    // (zero length) is kept, and frames that meet it are dropped (as QEMU does without
    // MRG_RXBUF). None of it sets DEVICE_NEEDS_RESET.
    check_queue(&console, HostileQueueId::NetTx, &[]);
    check_queue(
        &console,
        HostileQueueId::NetRx,
        &[(BadBuf::ZeroLen, Timeout)],
    );
    let stats = vm.devices().net_stats(0).unwrap();
    assert_eq!(stats.tx_errors, 6, "{stats:?}");
    assert!((5..=6).contains(&stats.rx_errors), "{stats:?}");
    assert!(
        echoed.iter().all(|f| f.get(14) != Some(&b'T')),
        "a frame from a bad transmit chain reached the host"
    );
    // virtio-vsock transmit: a packet whose payload cannot be read whole (outside RAM, in the
    // MMIO gap, zero length, device-writable) is answered with RST; a huge payload buffer is
    // read only as far as the header asks (the stray packet then gets its RST); a looped
    // chain cannot be read at all and is dropped.
    check_queue(
        &console,
        HostileQueueId::VsockTx,
        &[
            (BadBuf::OutsideRam, Rst),
            (BadBuf::MmioGap, Rst),
            (BadBuf::HugeLen, Rst),
            (BadBuf::ZeroLen, Rst),
            (BadBuf::WrongDirection, Rst),
        ],
    );
    // Receive: a chain with no writable room is completed empty; one outside RAM or in the
    // MMIO gap is completed empty (the packet it was to carry is lost); a huge buffer gets the
    // packet in its first bytes.
    check_queue(&console, HostileQueueId::VsockRx, &[(BadBuf::HugeLen, Ok)]);
    // Event: the device only writes an event after a restore, so it keeps every buffer.
    check_queue(
        &console,
        HostileQueueId::VsockEvent,
        &BadBuf::ALL.map(|case| (case, Timeout)),
    );

    // The VMM never stopped, and every device works: the agent answers over vsock and streams
    // both ways, the disk reads and writes, the NIC carries a frame each way.
    assert!(vm.exit_reason().is_none(), "{:?}", vm.exit_reason());
    let mut agent = vm.agent().unwrap();
    agent.ping().unwrap();
    let stream: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    let mut sum = zygote_guest::proto::agent::StreamChecksum::new();
    sum.update(&stream);
    assert_eq!(
        agent.sink(&stream).unwrap(),
        (stream.len() as u64, sum.value())
    );
    assert_eq!(
        agent.source(256 * 1024, 7).unwrap(),
        zygote_guest::proto::agent::source_checksum(7, 256 * 1024)
    );
    assert_eq!(agent.disk_read(0, 1).unwrap(), original[..SECTOR]);
    let data: Vec<u8> = (0..4 * SECTOR).map(|i| 0x6b ^ i as u8).collect();
    agent.disk_write(8, &data).unwrap();
    agent.disk_flush().unwrap();
    assert_eq!(agent.disk_read(8, 4).unwrap(), data);
    // An echo that came after its case ended may still wait in the guest.
    while agent.net_recv(100).unwrap().is_some() {}
    common::exchange_frames(
        &mut agent,
        &endpoint,
        &common::frame(100, 0x33),
        &common::frame(60, 0x44),
    );
    assert!(matches!(vm.shutdown(), Result::Ok(ExitReason::Shutdown)));

    let after = std::fs::read(&image).unwrap();
    assert_eq!(&after[8 * SECTOR..12 * SECTOR], &data[..]);
    assert_eq!(after[..8 * SECTOR], original[..8 * SECTOR]);
    let _ = std::fs::remove_file(&image);
}
