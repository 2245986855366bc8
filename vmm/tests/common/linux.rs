//! Booting the Linux test guest with the Linux agent as PID 1, for the sandbox tests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use zygote::sandbox::Sandbox;
use zygote::{ConsoleBuffer, RunningVm, SerialOutput, VmBuilder, VsockConfig};

/// How long a Linux boot may take here: ~25 s alone, several times that on a busy machine.
pub const LINUX_BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a single guest operation (a fork and exec, a reboot) may take: seconds alone,
/// minutes when the host is busy.
pub const LINUX_OP_TIMEOUT: Duration = Duration::from_secs(300);

/// A booted Linux guest and its agent.
pub struct LinuxGuest {
    /// The running VM.
    pub vm: RunningVm,
    /// Its console.
    pub console: ConsoleBuffer,
    /// Its agent.
    pub sandbox: Sandbox,
    /// From `start()` until the agent answered.
    pub boot_to_agent: Duration,
    /// Where its initramfs and vsock socket live.
    pub dir: PathBuf,
}

/// Boots the Linux guest (128 MiB, one vCPU, a vsock device) with the agent as `/init`, and
/// connects to the agent once its ready line is on the console. Panics with the console when
/// it does not come up.
pub fn boot(name: &str) -> LinuxGuest {
    let dir = super::temp_path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = zygote_linux_guest::kernel().expect("the Linux test guest is built (./dev)");
    let initrd = dir.join("initramfs.cpio");
    zygote_linux_agent::initramfs()
        .write_to(&initrd)
        .expect("write the initramfs");
    let uds_path = dir.join("vsock");
    let builder = VmBuilder::new()
        .memory_mib(128)
        .kernel(&kernel.vmlinux)
        .initrd(&initrd)
        .cmdline(zygote_linux_guest::CMDLINE)
        .vsock(VsockConfig {
            guest_cid: 3,
            uds_path,
        });
    let console = ConsoleBuffer::new();
    let start = Instant::now();
    let vm = builder
        .serial_output(SerialOutput::Buffer(console.clone()))
        .build()
        .expect("build the VM")
        .start()
        .expect("start the VM");
    // Connecting only once the agent listens spares the booting guest the refused attempts.
    let ready = console.wait_for(zygote_linux_agent::READY_LINE, LINUX_BOOT_TIMEOUT);
    assert!(
        ready,
        "the agent never got ready; console:\n{}",
        console.text()
    );
    let sandbox = vm
        .sandbox(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}; console:\n{}", console.text()));
    LinuxGuest {
        vm,
        console,
        sandbox,
        boot_to_agent: start.elapsed(),
        dir,
    }
}

/// Waits for the guest to stop on its own, failing the test (and stopping the VM) after
/// [`LINUX_OP_TIMEOUT`].
pub fn wait_exit(guest: &mut LinuxGuest) -> zygote::ExitReason {
    match guest.vm.wait_timeout(LINUX_OP_TIMEOUT) {
        Some(_) => guest.vm.wait().expect("join the VM"),
        None => {
            let _ = guest.vm.shutdown();
            panic!(
                "the guest did not stop within {LINUX_OP_TIMEOUT:?}; console:\n{}",
                guest.console.text()
            );
        }
    }
}
