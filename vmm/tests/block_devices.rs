//! Block devices (here loop devices) as disk images, overlay files and initrds: each is sized
//! by its bytes, never by its zero `metadata().len()`.

mod common;

use common::{agent_vm, temp_path, AgentOpts, LoopDevice};
use zygote::{BlockConfig, VmBuilder};
use zygote_guest::kernel_path;

const SECTOR: usize = 512;
const MIB: usize = 1 << 20;

/// Boots the agent on `disk` and checks the guest sees the loop device's 2048 sectors and
/// their bytes.
fn check_disk(name: &str, disk: BlockConfig, dev: &LoopDevice) {
    let mut guest = agent_vm(
        name,
        AgentOpts {
            block: Some(disk),
            ..Default::default()
        },
    );
    assert!(
        guest.console.text().contains("blk_sectors=2048 "),
        "capacity: {}",
        guest.console.text()
    );
    let bytes = std::fs::read(&dev.backing).unwrap();
    let mut agent = guest.vm.agent().unwrap();
    assert_eq!(agent.disk_read(0, 8).unwrap(), bytes[..8 * SECTOR]);
    assert_eq!(agent.disk_read(2040, 8).unwrap(), bytes[2040 * SECTOR..]);
    assert!(agent.disk_read(2048, 1).is_err(), "past the end");
    // Writes land, and read back.
    let data = vec![0x5a; 2 * SECTOR];
    agent.disk_write(2046, &data).unwrap();
    agent.disk_flush().unwrap();
    assert_eq!(agent.disk_read(2046, 2).unwrap(), data);
    guest.vm.shutdown().unwrap();
}

#[test]
fn a_loop_device_disk_has_the_device_size_in_every_mode() {
    let dev = LoopDevice::new("loop-direct", MIB);
    check_disk("loop-direct", BlockConfig::new(&dev.path), &dev);
    // The direct disk wrote through to the device.
    let bytes = std::fs::read(&dev.backing).unwrap();
    assert_eq!(bytes[2046 * SECTOR..], [0x5a; 2 * SECTOR]);

    let dev = LoopDevice::new("loop-overlay", MIB);
    let original = std::fs::read(&dev.backing).unwrap();
    check_disk("loop-overlay", BlockConfig::new(&dev.path).overlay(), &dev);
    assert!(std::fs::read(&dev.backing).unwrap() == original);

    let dev = LoopDevice::new("loop-overlay-file", MIB);
    let cow = temp_path("loop-overlay-file.cow");
    let disk = BlockConfig::new(&dev.path).overlay_file(&cow);
    check_disk("loop-overlay-file", disk, &dev);
    assert!(std::fs::read(&dev.backing).unwrap() == original);
    assert_eq!(std::fs::metadata(&cow).unwrap().len(), MIB as u64);
    let _ = std::fs::remove_file(&cow);
}

#[test]
fn a_loop_device_overlay_file_is_used_as_it_is_and_must_be_large_enough() {
    let image = common::disk_image("loop-cow-image", MIB);
    let original = std::fs::read(&image).unwrap();
    let cow = LoopDevice::new("loop-cow", MIB);
    let disk = BlockConfig::new(&image).overlay_file(&cow.path);
    let mut guest = agent_vm(
        "loop-cow",
        AgentOpts {
            block: Some(disk),
            ..Default::default()
        },
    );
    let mut agent = guest.vm.agent().unwrap();
    let data = vec![0xc3; 8 * SECTOR];
    agent.disk_write(100, &data).unwrap();
    assert_eq!(agent.disk_read(100, 8).unwrap(), data);
    // Blocks never written come from the image, not from the device's old bytes.
    assert_eq!(
        agent.disk_read(1000, 1).unwrap(),
        original[1000 * SECTOR..1001 * SECTOR]
    );
    guest.vm.shutdown().unwrap();
    assert!(std::fs::read(&image).unwrap() == original);

    // A device smaller than the image is refused, not truncated.
    let small = LoopDevice::new("loop-cow-small", MIB / 2);
    let err = VmBuilder::new()
        .kernel(kernel_path())
        .block(BlockConfig::new(&image).overlay_file(&small.path))
        .build()
        .err()
        .expect("a device too small for the overlay");
    assert!(
        matches!(
            err,
            zygote::Error::Device(zygote::DeviceError::OverlayCreate { .. })
        ),
        "{err}"
    );
    let _ = std::fs::remove_file(&image);
}

#[test]
fn a_loop_device_overlay_of_itself_is_refused_under_another_node() {
    let dev = LoopDevice::new("loop-self", MIB);
    let original = std::fs::read(&dev.backing).unwrap();
    // A second device node for the same block device.
    let alias = temp_path("loop-self.node");
    let _ = std::fs::remove_file(&alias);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&dev.path)
        .arg(&alias)
        .status()
        .unwrap();
    assert!(status.success());
    let err = VmBuilder::new()
        .kernel(kernel_path())
        .block(BlockConfig::new(&dev.path).overlay_file(&alias))
        .build()
        .err()
        .expect("the overlay is the image");
    assert!(
        matches!(
            err,
            zygote::Error::Device(zygote::DeviceError::OverlayIsImage { .. })
        ),
        "{err}"
    );
    assert!(std::fs::read(&dev.backing).unwrap() == original);
    let _ = std::fs::remove_file(&alias);
}

#[test]
fn a_loop_device_initrd_is_loaded_whole() {
    let dev = LoopDevice::new("loop-initrd", MIB);
    let memory_mib = 64;
    let vm = VmBuilder::new()
        .memory_mib(memory_mib)
        .kernel(kernel_path())
        .initrd(&dev.path)
        .build()
        .expect("an initrd on a block device");
    // The initrd sits at the top of low memory, page aligned.
    let addr = (memory_mib << 20) - MIB as u64;
    let mut loaded = vec![0u8; MIB];
    use zygote::vm_memory::Bytes;
    vm.memory()
        .read_slice(&mut loaded, zygote::vm_memory::GuestAddress(addr))
        .unwrap();
    assert!(
        loaded == std::fs::read(&dev.backing).unwrap(),
        "initrd bytes"
    );
}

#[test]
fn a_loop_device_and_the_file_behind_it_are_refused_as_image_and_overlay() {
    let dev = LoopDevice::new("loop-backing", MIB);
    let original = std::fs::read(&dev.backing).unwrap();
    let build = |image: &std::path::Path, overlay: &std::path::Path| {
        VmBuilder::new()
            .kernel(kernel_path())
            .block(BlockConfig::new(image).overlay_file(overlay))
            .build()
            .err()
            .expect("the overlay is the image")
    };
    // The overlay would write through the loop device into the image, or truncating the
    // overlay file would wipe the image behind the loop device.
    for (image, overlay) in [(&dev.backing, &dev.path), (&dev.path, &dev.backing)] {
        let err = build(image, overlay);
        assert!(
            matches!(
                err,
                zygote::Error::Device(zygote::DeviceError::OverlayIsImage { .. })
            ),
            "{err}"
        );
        assert!(
            std::fs::read(&dev.backing).unwrap() == original,
            "image wiped"
        );
    }
}
