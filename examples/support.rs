//! Helpers the examples share: a builder preset for Zygote's own guest kernel.

#![deny(missing_docs)]

use zygote::VmBuilder;
use zygote_guest::{kernel_path, Workload};

/// A builder for Zygote's guest kernel running `workload`, with `memory_mib` of RAM.
pub fn guest(workload: &Workload, memory_mib: u64) -> VmBuilder {
    VmBuilder::new()
        .vcpus(1)
        .memory_mib(memory_mib)
        .kernel(kernel_path())
        .cmdline(format!("console=ttyS0 {}", workload.cmdline_arg()))
}
