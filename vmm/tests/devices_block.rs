//! virtio-blk end to end: the guest agent writes and reads its disk.

mod common;

use common::{agent_vm, disk_image, AgentOpts};
use zygote::agent::{AgentError, ErrorCode};
use zygote::BlockConfig;

const SECTOR: usize = 512;

fn sectors(count: usize, fill: u8) -> Vec<u8> {
    (0..count * SECTOR).map(|i| fill ^ (i as u8)).collect()
}

#[test]
fn disk_writes_reach_the_host_image_and_read_back() {
    let image = disk_image("blk-rw", 1 << 20);
    let mut guest = agent_vm(
        "blk-rw",
        AgentOpts {
            block: Some(BlockConfig::new(&image)),
            ..Default::default()
        },
    );
    let mut agent = guest.vm.agent().unwrap();
    let data = sectors(8, 0x5a);
    agent.disk_write(16, &data).unwrap();
    agent.disk_flush().unwrap();
    assert_eq!(agent.disk_read(16, 8).unwrap(), data);
    // Untouched sectors still hold the image's pattern.
    let before = std::fs::read(&image).unwrap();
    assert_eq!(agent.disk_read(0, 1).unwrap(), before[..SECTOR]);
    assert_eq!(&before[16 * SECTOR..24 * SECTOR], &data[..]);
    let id = agent.disk_id().unwrap();
    assert!(id.starts_with(b"zygote-disk"), "{id:?}");
    // Past the end of the disk: an error, and the disk keeps working.
    let last = (1 << 20) / SECTOR as u64;
    assert!(agent.disk_read(last, 1).is_err());
    assert_eq!(agent.disk_read(16, 8).unwrap(), data);
    guest.vm.shutdown().unwrap();
}

#[test]
fn overlay_writes_never_reach_the_base_image() {
    let image = disk_image("blk-overlay", 1 << 20);
    let original = std::fs::read(&image).unwrap();
    let mut guest = agent_vm(
        "blk-overlay",
        AgentOpts {
            block: Some(BlockConfig::new(&image).overlay()),
            ..Default::default()
        },
    );
    let mut agent = guest.vm.agent().unwrap();
    let data = sectors(4, 0xa5);
    agent.disk_write(2, &data).unwrap();
    agent.disk_flush().unwrap();
    assert_eq!(agent.disk_read(2, 4).unwrap(), data);
    guest.vm.shutdown().unwrap();
    assert_eq!(std::fs::read(&image).unwrap(), original);
}

#[test]
fn a_read_only_disk_refuses_writes() {
    let image = disk_image("blk-ro", 64 * 1024);
    let original = std::fs::read(&image).unwrap();
    let mut guest = agent_vm(
        "blk-ro",
        AgentOpts {
            block: Some(BlockConfig::new(&image).read_only()),
            ..Default::default()
        },
    );
    let mut agent = guest.vm.agent().unwrap();
    let err = agent.disk_write(0, &sectors(1, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Guest(ErrorCode::ReadOnly | ErrorCode::DeviceError)
        ),
        "{err}"
    );
    assert_eq!(agent.disk_read(0, 1).unwrap(), original[..SECTOR]);
    guest.vm.shutdown().unwrap();
    assert_eq!(std::fs::read(&image).unwrap(), original);
}
