//! Booting Zygote's guest kernel on real KVM: the ready line, exit codes, memory contents, and
//! several VMs at once.

mod common;

use common::{start, wait_exit, GUEST_TIMEOUT};
use vm_memory::{Bytes, GuestAddress};
use zygote::vm_memory;
use zygote::ExitReason;
use zygote_guest::{pattern_checksum, pattern_word, Checksum, TouchResult, Workload, READY_LINE};

#[test]
fn the_ready_line_arrives_and_the_guest_exits_zero() {
    let (mut vm, console) = start(&Workload::Ready);
    assert!(
        console.wait_for(READY_LINE, GUEST_TIMEOUT),
        "{}",
        console.text()
    );
    let exit = wait_exit(&mut vm, &console);
    assert_eq!(exit.exit_code(), Some(0), "{exit:?}");
}

#[test]
fn exit_codes_propagate() {
    for code in [1, 42, 0xdead_beef] {
        let (mut vm, console) = start(&Workload::Exit(code));
        let exit = wait_exit(&mut vm, &console);
        assert!(
            matches!(exit, ExitReason::Exited(c) if c == code),
            "{exit:?}"
        );
    }
}

#[test]
fn touched_memory_matches_the_host_checksum() {
    let (mib, pattern) = (8, 0x5a5a_0123_4567_89ab);
    let (mut vm, console) = start(&Workload::Touch { mib, pattern });
    let exit = wait_exit(&mut vm, &console);
    assert_eq!(exit.exit_code(), Some(0), "{exit:?}: {}", console.text());
    let result = TouchResult::find(&console.text()).expect("touch line");
    assert_eq!(result.mib, mib);
    // What the guest reports equals what the formula gives...
    assert_eq!(result.checksum, pattern_checksum(pattern, mib));
    // ...and what is really in guest memory, read by the host.
    let mut checksum = Checksum::new();
    let words = u64::from(mib) << 17;
    for index in 0..words {
        let word: u64 = vm
            .memory()
            .read_obj(GuestAddress(result.addr + index * 8))
            .expect("guest address in RAM");
        checksum.update(word);
        if index < 4 {
            assert_eq!(word, pattern_word(pattern, index));
        }
    }
    assert_eq!(checksum.value(), result.checksum);
}

#[test]
fn two_vms_run_at_once_in_one_process() {
    let (mut spinning, spin_console) = start(&Workload::Spin);
    assert!(spin_console.wait_for(READY_LINE, GUEST_TIMEOUT));
    let (mut other, console) = start(&Workload::Exit(5));
    assert_eq!(wait_exit(&mut other, &console).exit_code(), Some(5));
    assert_eq!(spinning.state(), zygote::VmState::Running);
    assert!(matches!(spinning.shutdown().unwrap(), ExitReason::Shutdown));
}

#[test]
fn a_vm_with_two_vcpus_boots_and_stops() {
    let (mut vm, console) = common::start_with(common::builder(&Workload::Exit(3)).vcpus(2));
    assert_eq!(wait_exit(&mut vm, &console).exit_code(), Some(3));
}

/// The NUL-terminated command line the VM's zero page points at.
fn guest_cmdline(vm: &zygote::Vm) -> String {
    let mut bytes = vec![0u8; 4096];
    vm.memory()
        .read_slice(&mut bytes, zygote::arch::layout::CMDLINE_START)
        .unwrap();
    let len = bytes.iter().position(|&b| b == 0).expect("a NUL");
    String::from_utf8(bytes[..len].to_vec()).unwrap()
}

#[test]
fn device_entries_land_before_the_init_arguments() {
    let image = common::disk_image("cmdline-dashes", 4096);
    let device = "virtio_mmio.device=4K@0xd0000000:5";
    for (user, expected) in [
        (
            "console=ttyS0 init=/bin/sh -- -c true",
            format!("console=ttyS0 init=/bin/sh {device} -- -c true"),
        ),
        ("console=ttyS0", format!("console=ttyS0 {device}")),
        ("console=ttyS0 --", format!("console=ttyS0 {device} --")),
        (
            "quiet -- sh -- -c 'a  b'",
            format!("quiet {device} -- sh -- -c 'a  b'"),
        ),
    ] {
        let vm = zygote::VmBuilder::new()
            .kernel(zygote_guest::kernel_path())
            .cmdline(user)
            .block(zygote::BlockConfig::new(&image).read_only())
            .build()
            .unwrap();
        assert_eq!(guest_cmdline(&vm), expected, "{user:?}");
    }
    let _ = std::fs::remove_file(image);
}
