//! A hostile guest on the real VMM: the guest's `hostile` workload sends the virtio-blk device
//! read requests with one thing wrong each and the vsock device packets on no connection (one
//! malformed), then serves the agent. Each bad request gets an error status, an RST, or
//! DEVICE_NEEDS_RESET (after which the guest resets the device), and the VMM and every device
//! keep working. The devices' own hostile tests (a mock driver) are in `devices/`.

mod common;

use common::{agent_vm, disk_image, AgentOpts};
use zygote::BlockConfig;
use zygote_guest::proto::{HostileBlk, HostileOutcome, HostileVsock};
use zygote_guest::Workload;

const SECTOR: usize = 512;
const DISK_BYTES: usize = 1 << 20;

#[test]
fn a_hostile_guest_gets_errors_and_every_device_keeps_working() {
    let image = disk_image("hostile-blk", DISK_BYTES);
    let original = std::fs::read(&image).unwrap();
    let mut guest = agent_vm(
        "hostile",
        AgentOpts {
            workload: Some(Workload::Hostile),
            block: Some(BlockConfig::new(&image)),
            packet_nic: true,
            ..Default::default()
        },
    );
    let console = guest.console.text();
    let blk = HostileBlk::find(&console)
        .unwrap_or_else(|| panic!("no hostile blk line; console:\n{console}"));
    let vsock = HostileVsock::find(&console)
        .unwrap_or_else(|| panic!("no hostile vsock line; console:\n{console}"));

    use HostileOutcome::{IoErr, NeedsReset, Ok, Rst, Unsupp};
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

    // The VMM and every device kept running: the agent answers over vsock, the disk reads and
    // writes, the NIC carries a frame.
    let endpoint = guest.endpoint.take().unwrap();
    let mut agent = guest.vm.agent().unwrap();
    agent.ping().unwrap();
    assert_eq!(agent.disk_read(0, 1).unwrap(), original[..SECTOR]);
    let data: Vec<u8> = (0..4 * SECTOR).map(|i| 0x6b ^ i as u8).collect();
    agent.disk_write(8, &data).unwrap();
    agent.disk_flush().unwrap();
    assert_eq!(agent.disk_read(8, 4).unwrap(), data);
    common::exchange_frames(
        &mut agent,
        &endpoint,
        &common::frame(100, 0x33),
        &common::frame(60, 0x44),
    );
    guest.vm.shutdown().unwrap();

    let after = std::fs::read(&image).unwrap();
    assert_eq!(&after[8 * SECTOR..12 * SECTOR], &data[..]);
    assert_eq!(after[..8 * SECTOR], original[..8 * SECTOR]);
    let _ = std::fs::remove_file(&image);
}
