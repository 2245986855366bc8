//! A build that fails leaves nothing behind that it created, and its errors can be matched
//! through `zygote` alone.

mod common;

use std::path::Path;

use common::{disk_image, temp_path};
use zygote::{BlockConfig, DeviceError, Error, NetConfig, VmBuilder, VsockConfig};
use zygote_guest::kernel_path;

/// A vsock device whose socket cannot be created: the last device step fails.
fn failing_vsock() -> VsockConfig {
    VsockConfig {
        guest_cid: 3,
        uds_path: temp_path("no-such-dir").join("vsock"),
    }
}

fn build_with_overlay(
    image: &Path,
    cow: &Path,
    later: impl FnOnce(VmBuilder) -> VmBuilder,
) -> Error {
    let builder = VmBuilder::new()
        .kernel(kernel_path())
        .block(BlockConfig::new(image).overlay_file(cow));
    later(builder).build().err().expect("the build must fail")
}

#[test]
fn a_failed_build_removes_the_overlay_file_it_created() {
    let image = disk_image("fail-created.img", 64 * 1024);
    let cow = temp_path("fail-created.cow");
    let _ = std::fs::remove_file(&cow);
    // A later device step fails: the vsock socket, a second disk, a net device.
    let err = build_with_overlay(&image, &cow, |b| b.vsock(failing_vsock()));
    assert!(
        matches!(
            err,
            Error::Device(DeviceError::Vsock(zygote::VsockError::Listen { .. }))
        ),
        "{err}"
    );
    assert!(!cow.exists(), "overlay file left behind after {err}");
    let err = build_with_overlay(&image, &cow, |b| {
        b.block(BlockConfig::new(temp_path("no-such-image")))
    });
    assert!(
        matches!(err, Error::Device(DeviceError::BlockOpen { .. })),
        "{err}"
    );
    assert!(!cow.exists(), "overlay file left behind after {err}");
    let (net, _end) = NetConfig::packet().unwrap();
    let err = build_with_overlay(&image, &cow, |b| b.net(net.with_mac([1, 2, 3, 4, 5, 6])));
    assert!(matches!(err, Error::Device(DeviceError::Net(_))), "{err}");
    assert!(!cow.exists(), "overlay file left behind after {err}");
    // A step after the devices fails: the initrd does not fit in memory.
    let initrd = temp_path("fail-created.initrd");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let err = build_with_overlay(&image, &cow, |b| b.memory_mib(32).initrd(&initrd));
    assert!(matches!(err, Error::Boot(_)), "{err}");
    assert!(!cow.exists(), "overlay file left behind after {err}");
    // The same overlay on a build that succeeds stays, and after the VM is gone.
    let vm = VmBuilder::new()
        .kernel(kernel_path())
        .block(BlockConfig::new(&image).overlay_file(&cow))
        .build()
        .unwrap();
    drop(vm);
    assert_eq!(std::fs::metadata(&cow).unwrap().len(), 64 * 1024);
    let _ = std::fs::remove_file(&cow);
    let _ = std::fs::remove_file(&initrd);
    let _ = std::fs::remove_file(&image);
}

#[test]
fn a_failed_build_leaves_an_existing_overlay_file_in_place() {
    let image = disk_image("fail-existing.img", 64 * 1024);
    let cow = temp_path("fail-existing.cow");
    std::fs::write(&cow, b"the caller's file").unwrap();
    let err = build_with_overlay(&image, &cow, |b| b.vsock(failing_vsock()));
    assert!(matches!(err, Error::Device(DeviceError::Vsock(_))), "{err}");
    // Not removed: the path, its owner, mode and links are the caller's. Its contents were
    // given up when it was named as an overlay: it is left emptied (holes the image's size).
    let left = std::fs::read(&cow).unwrap();
    assert_eq!(left.len(), 64 * 1024);
    assert!(left.iter().all(|&b| b == 0));
    let _ = std::fs::remove_file(&cow);
    let _ = std::fs::remove_file(&image);
}

#[test]
fn device_errors_can_be_matched_through_zygote() {
    let image = disk_image("fail-errors.img", 64 * 1024);
    let err = VmBuilder::new()
        .kernel(kernel_path())
        .block(BlockConfig {
            id: "an-id-that-is-too-long".into(),
            ..BlockConfig::new(&image)
        })
        .build()
        .err()
        .expect("the ID is too long");
    assert!(
        matches!(
            err,
            Error::Device(DeviceError::Block(zygote::BlockError::IdTooLong(22)))
        ),
        "{err}"
    );
    let (net, _end) = NetConfig::packet().unwrap();
    let err = VmBuilder::new()
        .kernel(kernel_path())
        .net(net.with_mac([0xff; 6]))
        .build()
        .err()
        .expect("a broadcast MAC");
    assert!(
        matches!(
            err,
            Error::Device(DeviceError::Net(zygote::NetError::MulticastMac(_)))
        ),
        "{err}"
    );
    let err = VmBuilder::new()
        .kernel(kernel_path())
        .net(NetConfig::tap("a-name-longer-than-15"))
        .build()
        .err()
        .expect("a bad TAP name");
    assert!(
        matches!(
            err,
            Error::Device(DeviceError::Tap(zygote::TapError::InvalidName(_)))
        ),
        "{err}"
    );
    let err = VmBuilder::new()
        .kernel(kernel_path())
        .vsock(VsockConfig {
            guest_cid: 2,
            uds_path: temp_path("fail-errors.vsock"),
        })
        .build()
        .err()
        .expect("a reserved CID");
    assert!(
        matches!(
            err,
            Error::Device(DeviceError::Vsock(zygote::VsockError::InvalidCid(2)))
        ),
        "{err}"
    );
    // The transport and bus errors are nameable too.
    let _: Option<zygote::TransportError> = None;
    let _: Option<zygote::BusError> = None;
    let _ = std::fs::remove_file(&image);
}
