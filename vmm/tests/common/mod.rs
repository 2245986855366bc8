//! Shared helpers for the integration tests: boot Zygote's guest kernel with a workload.

#![allow(dead_code)]

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
