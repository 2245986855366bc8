//! Shared helpers for the integration tests: boot Zygote's guest kernel with a workload.

#![allow(dead_code)]

pub mod linux;

use std::time::Duration;

use zygote::{ConsoleBuffer, ExitReason, RunningVm, SerialOutput, VmBuilder};
use zygote_guest::{kernel_path, Workload};

/// Generous bound for anything a guest does in these tests; CPL0 code is emulated here.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A builder for the guest kernel running `workload`.
pub fn builder(workload: &Workload) -> VmBuilder {
    VmBuilder::new()
        .memory_mib(128)
        .kernel(kernel_path())
        .cmdline(format!("console=ttyS0 {}", workload.cmdline_arg()))
}

/// Boots `workload`, returning the running VM and its console.
pub fn start(workload: &Workload) -> (RunningVm, ConsoleBuffer) {
    start_with(builder(workload))
}

/// Boots a VM from `builder`, capturing its console.
pub fn start_with(builder: VmBuilder) -> (RunningVm, ConsoleBuffer) {
    let console = ConsoleBuffer::new();
    let vm = builder
        .serial_output(SerialOutput::Buffer(console.clone()))
        .build()
        .expect("build the VM")
        .start()
        .expect("start the VM");
    (vm, console)
}

/// Waits for `vm` to stop on its own, failing the test (and stopping the VM) after the timeout.
pub fn wait_exit(vm: &mut RunningVm, console: &ConsoleBuffer) -> ExitReason {
    match vm.wait_timeout(GUEST_TIMEOUT) {
        Some(_) => vm.wait().expect("join the VM"),
        None => {
            let _ = vm.shutdown();
            panic!(
                "guest did not stop within {GUEST_TIMEOUT:?}; console:\n{}",
                console.text()
            );
        }
    }
}

/// A path in the temp dir unique to this process and `name`.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("zygote-test-{}-{name}", std::process::id()))
}

/// A guest running the agent with a vsock device, and optionally a disk and a packet NIC.
pub struct AgentVm {
    /// The running VM.
    pub vm: RunningVm,
    /// Its console.
    pub console: ConsoleBuffer,
    /// The vsock Unix socket.
    pub uds: std::path::PathBuf,
    /// The host end of the packet NIC, if any.
    pub endpoint: Option<zygote::PacketEndpoint>,
}

/// What the agent VM gets besides vsock.
#[derive(Default)]
pub struct AgentOpts {
    /// The workload, [`Workload::Agent`] when `None`; another must end serving the agent
    /// (like [`Workload::Hostile`]).
    pub workload: Option<Workload>,
    /// A disk.
    pub block: Option<zygote::BlockConfig>,
    /// A NIC on the in-process packet backend.
    pub packet_nic: bool,
    /// A NIC on a TAP interface of this name.
    pub tap: Option<String>,
}

/// Boots the agent workload (or `opts.workload`) and waits for its ready line.
pub fn agent_vm(name: &str, opts: AgentOpts) -> AgentVm {
    let uds = temp_path(&format!("{name}.vsock"));
    let workload = opts.workload.unwrap_or(Workload::Agent);
    let mut builder = builder(&workload).vsock(zygote::VsockConfig {
        guest_cid: 3,
        uds_path: uds.clone(),
    });
    if let Some(block) = opts.block {
        builder = builder.block(block);
    }
    let mut endpoint = None;
    if opts.packet_nic {
        let (net, end) = zygote::NetConfig::packet().expect("socket pair");
        builder = builder.net(net);
        endpoint = Some(end);
    }
    if let Some(tap) = opts.tap {
        builder = builder.net(zygote::NetConfig::tap(tap));
    }
    let (mut vm, console) = start_with(builder);
    if !console.wait_for(zygote_guest::READY_LINE, GUEST_TIMEOUT) {
        let _ = vm.shutdown();
        panic!("agent not ready; console:\n{}", console.text());
    }
    AgentVm {
        vm,
        console,
        uds,
        endpoint,
    }
}

/// A file of `len` bytes of a recognisable pattern, for disks.
pub fn disk_image(name: &str, len: usize) -> std::path::PathBuf {
    let path = temp_path(name);
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, bytes).expect("write the disk image");
    path
}

/// A broadcast Ethernet frame of `len` bytes with the local-experimental EtherType 0x88b5.
pub fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend((0..len - 14).map(|i| fill ^ i as u8));
    frame
}

/// Has the guest send a frame to the host and the host one to the guest, through the packet
/// NIC, and checks both arrive intact.
pub fn exchange_frames(
    agent: &mut zygote::agent::AgentClient,
    endpoint: &zygote::PacketEndpoint,
    out: &[u8],
    inbound: &[u8],
) {
    agent.net_send(out).unwrap();
    let mut buf = vec![0u8; 2048];
    let len = endpoint
        .recv(&mut buf, Duration::from_secs(10))
        .unwrap()
        .expect("the guest's frame arrives");
    assert_eq!(&buf[..len], out);
    endpoint.send(inbound).unwrap();
    assert_eq!(agent.net_recv(10_000).unwrap().as_deref(), Some(inbound));
}

/// A loop device (`losetup`, root only) over a file of `len` bytes of [`disk_image`]'s
/// pattern; detached, and its file removed, when dropped, even when the test fails.
pub struct LoopDevice {
    /// The device node, like `/dev/loop3`.
    pub path: std::path::PathBuf,
    /// The file behind it.
    pub backing: std::path::PathBuf,
}

impl LoopDevice {
    /// Attaches a loop device over a fresh pattern file named after `name`.
    pub fn new(name: &str, len: usize) -> Self {
        let backing = disk_image(&format!("{name}.loop"), len);
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&backing)
            .output()
            .expect("run losetup (the loop device tests need root)");
        if !out.status.success() {
            let _ = std::fs::remove_file(&backing);
            panic!(
                "losetup failed (root needed): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let path = String::from_utf8(out.stdout).expect("a device path");
        Self {
            path: path.trim().into(),
            backing,
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// A connection to the agent of `vm` (Zygote's guest), through the VM's vsock socket.
pub fn agent_of(vm: &zygote::RunningVm) -> zygote::agent::AgentClient {
    let uds = &vm
        .devices()
        .vsock_config()
        .expect("a vsock device")
        .uds_path;
    zygote::agent::AgentClient::connect(uds, zygote::agent::AGENT_PORT, GUEST_TIMEOUT)
        .expect("connect to the agent")
}

/// Forks `parent` onto a packet NIC of its own (MAC derived); the child and its NIC's host end.
pub fn fork_with_nic(
    parent: &mut zygote::RunningVm,
) -> (zygote::RunningVm, zygote::PacketEndpoint) {
    let (net, endpoint) = zygote::NetConfig::packet().unwrap();
    let child = parent
        .fork(zygote::ForkConfig {
            nets: vec![net],
            ..Default::default()
        })
        .expect("fork")
        .child;
    (child, endpoint)
}

/// The MAC of `vm`'s first NIC, read from its state (paused for the read).
pub fn mac_of(vm: &zygote::RunningVm) -> [u8; 6] {
    vm.pause().unwrap();
    let mac = vm.capture().unwrap().devices.nets[0].device.mac;
    vm.resume().unwrap();
    mac
}
