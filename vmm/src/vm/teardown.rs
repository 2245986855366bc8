//! The KVM VM and its memory, torn down off the caller's thread.
//!
//! Destroying a KVM VM that has an in-kernel irqchip takes about 20 ms here (about 0.2 ms
//! without one; `cargo run --release -p zygote-benches --example vm_drop`). Nothing about it
//! needs the caller, so dropping a VM hands the last references to a short-lived thread and
//! returns at once.

use std::mem::ManuallyDrop;

use kvm_ioctls::VmFd;

use crate::memory::GuestRam;

struct Inner {
    // Field order is drop order: the VM goes before the memory it maps.
    vm_fd: VmFd,
    ram: GuestRam,
}

/// A KVM VM with its guest memory.
pub(super) struct KvmVm {
    inner: ManuallyDrop<Inner>,
}

impl KvmVm {
    pub(super) fn new(vm_fd: VmFd, ram: GuestRam) -> Self {
        Self {
            inner: ManuallyDrop::new(Inner { vm_fd, ram }),
        }
    }

    pub(super) fn vm_fd(&self) -> &VmFd {
        &self.inner.vm_fd
    }

    pub(super) fn ram(&self) -> &GuestRam {
        &self.inner.ram
    }

    pub(super) fn ram_mut(&mut self) -> &mut GuestRam {
        &mut self.inner.ram
    }

    /// Moves the VM onto `ram` (same layout and content) and returns the RAM it ran on. The
    /// vCPUs must be parked and the devices moved to `ram` before they run again.
    pub(super) fn replace_ram(&mut self, ram: GuestRam) -> Result<GuestRam, crate::MemoryError> {
        ram.reregister(&self.inner.vm_fd, &self.inner.ram)?;
        Ok(std::mem::replace(&mut self.inner.ram, ram))
    }
}

impl Drop for KvmVm {
    fn drop(&mut self) {
        // SAFETY: `inner` is taken exactly once, here, and `self` is never used again.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        // If no thread can be started, the closure (and `inner` with it) is dropped right here:
        // slower, but just as correct.
        let _ = std::thread::Builder::new()
            .name("zygote-teardown".into())
            .spawn(move || drop(inner));
    }
}
