//! virtio-blk end to end: the guest agent writes and reads its disk.

mod common;

use std::path::Path;

use common::{agent_vm, disk_image, temp_path, AgentOpts};
use zygote::agent::{AgentError, ErrorCode};
use zygote::{BlockConfig, DeviceError, Error, VmBuilder};
use zygote_guest::kernel_path;

const SECTOR: usize = 512;
/// The file overlay's unit of copy-up.
const BLOCK: usize = 4096;

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
fn file_overlay_writes_land_in_the_overlay_file_never_the_base_image() {
    let image = disk_image("blk-overlay-file", 1 << 20);
    let original = std::fs::read(&image).unwrap();
    let overlay = temp_path("blk-overlay-file.cow");
    // Whatever the file held before is discarded.
    std::fs::write(&overlay, vec![0xee; 8 * BLOCK]).unwrap();
    let mut guest = agent_vm(
        "blk-overlay-file",
        AgentOpts {
            block: Some(BlockConfig::new(&image).overlay_file(&overlay)),
            ..Default::default()
        },
    );
    let mut agent = guest.vm.agent().unwrap();
    // Sectors 2..6 of block 0, and sectors 14..18, across the end of block 1 into block 2.
    let first = sectors(4, 0xa5);
    let second = sectors(4, 0x3c);
    agent.disk_write(2, &first).unwrap();
    agent.disk_write(14, &second).unwrap();
    agent.disk_flush().unwrap();
    assert_eq!(agent.disk_read(2, 4).unwrap(), first);
    assert_eq!(agent.disk_read(14, 4).unwrap(), second);
    // A read mixing overlay blocks and base blocks.
    let mut expected = original[..32 * SECTOR].to_vec();
    expected[2 * SECTOR..6 * SECTOR].copy_from_slice(&first);
    expected[14 * SECTOR..18 * SECTOR].copy_from_slice(&second);
    assert_eq!(agent.disk_read(0, 32).unwrap(), expected);
    guest.vm.shutdown().unwrap();

    assert_eq!(std::fs::read(&image).unwrap(), original);
    let cow = std::fs::read(&overlay).unwrap();
    assert_eq!(
        cow.len(),
        original.len(),
        "the overlay is sized like the image"
    );
    // Blocks 0, 1 and 2 hold the writes at their offsets, and around them the image's bytes
    // copied up; the blocks never written hold nothing.
    assert_eq!(cow[..3 * BLOCK], expected[..3 * BLOCK]);
    assert!(cow[3 * BLOCK..].iter().all(|&b| b == 0));
    let _ = std::fs::remove_file(&overlay);
    let _ = std::fs::remove_file(&image);
}

#[test]
fn an_overlay_file_that_is_the_image_or_cannot_be_created_is_refused() {
    let image = disk_image("blk-overlay-bad", 64 * 1024);
    let original = std::fs::read(&image).unwrap();
    let link = temp_path("blk-overlay-bad.link");
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(&image, &link).unwrap();
    let build = |overlay: &Path| {
        VmBuilder::new()
            .kernel(kernel_path())
            .block(BlockConfig::new(&image).overlay_file(overlay))
            .build()
            .err()
            .expect("the overlay must be refused")
    };
    for same in [&image, &link] {
        let err = build(same);
        assert!(
            matches!(err, Error::Device(DeviceError::OverlayIsImage { .. })),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(&image).unwrap(), original, "image wiped");
    let err = build(&temp_path("no-such-dir").join("overlay"));
    assert!(
        matches!(err, Error::Device(DeviceError::OverlayCreate { .. })),
        "{err}"
    );
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_file(&image);
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

/// The guest writes the last 8 sectors of a 1 MiB image through an overlay, then the host
/// truncates the image to 512 KiB: what the overlay holds whole never depends on the image, and
/// what it lacks past the new end reads as zeros, as a sparse disk reads.
fn overlay_survives_the_image_shrinking(name: &str, overlay: impl Fn(BlockConfig) -> BlockConfig) {
    let image = disk_image(name, 1 << 20);
    let mut guest = agent_vm(
        name,
        AgentOpts {
            block: Some(overlay(BlockConfig::new(&image))),
            ..Default::default()
        },
    );
    let mut agent = guest.vm.agent().unwrap();
    let data = sectors(8, 0x77);
    agent.disk_write(2040, &data).unwrap();
    let kept = agent.disk_read(1016, 8).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(512 << 10)
        .unwrap();
    assert_eq!(agent.disk_read(2040, 8).unwrap(), data);
    // Whole sectors past the new end: a 4 KiB block, and one sector of another block.
    let block = sectors(8, 0x99);
    agent.disk_write(1400, &block).unwrap();
    assert_eq!(agent.disk_read(1400, 8).unwrap(), block);
    let one = sectors(1, 0x42);
    agent.disk_write(1601, &one).unwrap();
    let mut expected = vec![0u8; 8 * SECTOR];
    expected[SECTOR..2 * SECTOR].copy_from_slice(&one);
    assert_eq!(agent.disk_read(1600, 8).unwrap(), expected);
    // Sectors never written: the image's bytes before its new end, zeros after.
    assert_eq!(agent.disk_read(1016, 8).unwrap(), kept);
    assert_eq!(agent.disk_read(1100, 4).unwrap(), vec![0; 4 * SECTOR]);
    guest.vm.shutdown().unwrap();
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 512 << 10);
    let _ = std::fs::remove_file(&image);
}

#[test]
fn memory_overlay_sectors_survive_the_image_shrinking() {
    overlay_survives_the_image_shrinking("blk-shrink-mem", BlockConfig::overlay);
}

#[test]
fn file_overlay_blocks_survive_the_image_shrinking() {
    let cow = temp_path("blk-shrink-file.cow");
    overlay_survives_the_image_shrinking("blk-shrink-file", |c| c.overlay_file(&cow));
    let _ = std::fs::remove_file(&cow);
}
