//! Capturing a paused VM and restoring it into a new VM in the same process, over a
//! copy-on-write view of its memory: the restored guest carries on exactly where it stopped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{agent_vm, disk_image, temp_path, AgentOpts, GUEST_TIMEOUT};
use zygote::agent::{AgentClient, AGENT_PORT};
use zygote::state::DeviceResources;
use zygote::{
    BlockConfig, ConsoleBuffer, GuestRam, NetConfig, RestoreConfig, SerialOutput, Vm, VsockConfig,
};

fn connect(uds: &std::path::Path) -> AgentClient {
    AgentClient::connect(uds, AGENT_PORT, GUEST_TIMEOUT).expect("connect to the agent")
}

#[test]
fn a_restored_vm_keeps_counter_memory_and_disk() {
    let image = disk_image("restore-disk.img", 1 << 20);
    let parent = agent_vm(
        "restore-parent",
        AgentOpts {
            block: Some(BlockConfig::new(&image)),
            packet_nic: true,
            ..Default::default()
        },
    );
    let mut agent = connect(&parent.uds);
    agent.counter_add(41).unwrap();
    let (addr, sum) = agent.touch(4, 0x5eed).unwrap();
    let len = 4 << 20;
    assert_eq!(agent.checksum(addr, len).unwrap(), sum);
    agent.disk_write(3, &[0xab; 512]).unwrap();
    agent.disk_flush().unwrap();
    drop(agent);

    parent.vm.pause().unwrap();
    let state = parent.vm.capture().unwrap();
    assert_eq!(state.vcpus.len(), 1);
    assert_eq!(state.devices.blocks.len(), 1);
    assert_eq!(state.devices.nets.len(), 1);
    assert!(state.devices.vsock.is_some());
    let base = Arc::clone(parent.vm.ram().memfd().expect("RAM is a memfd"));
    let ram = GuestRam::private_of(base, state.memory_bytes).unwrap();

    let uds = temp_path("restore-child.vsock");
    let (net, _endpoint) = NetConfig::packet().unwrap();
    let console = ConsoleBuffer::new();
    let config = RestoreConfig {
        context: Some(parent.vm.context().clone()),
        serial_output: SerialOutput::Buffer(console.clone()),
        devices: DeviceResources {
            blocks: vec![BlockConfig::new(&image)],
            nets: vec![net.with_mac([2, 0, 0, 0, 0, 9])],
            vsock: Some(VsockConfig {
                guest_cid: 4,
                uds_path: uds.clone(),
            }),
        },
        ..Default::default()
    };
    let mut child = Vm::restore(&state, ram, config).unwrap().start().unwrap();
    let mut agent = connect(&uds);
    assert_eq!(agent.counter_get().unwrap(), 41, "{}", console.text());
    assert_eq!(agent.checksum(addr, len).unwrap(), sum);
    assert_eq!(agent.disk_read(3, 1).unwrap(), vec![0xab; 512]);
    assert_eq!(agent.counter_add(1).unwrap(), 42);
    // The parent, resumed, never sees the child's change.
    parent.vm.resume().unwrap();
    let mut parent_agent = connect(&parent.uds);
    assert_eq!(parent_agent.counter_get().unwrap(), 41);
    assert!(child.wait_timeout(Duration::from_millis(1)).is_none());
    child.shutdown().unwrap();
}

#[test]
fn restore_refuses_a_state_for_another_memory_size() {
    let parent = agent_vm("restore-size", AgentOpts::default());
    parent.vm.pause().unwrap();
    let state = parent.vm.capture().unwrap();
    let ram = GuestRam::new(state.memory_bytes * 2).unwrap();
    let err = Vm::restore(&state, ram, RestoreConfig::default())
        .err()
        .unwrap();
    assert!(matches!(err, zygote::Error::Restore(_)), "{err}");
}

#[test]
fn restore_refuses_a_different_device_set() {
    let parent = agent_vm(
        "restore-devs",
        AgentOpts {
            packet_nic: true,
            ..Default::default()
        },
    );
    parent.vm.pause().unwrap();
    let state = parent.vm.capture().unwrap();
    let base = Arc::clone(parent.vm.ram().memfd().unwrap());
    let ram = GuestRam::private_of(base, state.memory_bytes).unwrap();
    let err = Vm::restore(&state, ram, RestoreConfig::default())
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(text.contains("net: 1 saved, 0 given"), "{text}");
}

#[test]
fn capture_needs_a_paused_vm() {
    let parent = agent_vm("restore-running", AgentOpts::default());
    assert!(matches!(
        parent.vm.capture(),
        Err(zygote::state::CaptureError::NotPaused(
            zygote::VmState::Running
        ))
    ));
}
