//! A warm pool of pre-created VMs to fork into.
//!
//! Making a KVM VM (`KVM_CREATE_VM`, memory slots, irqchip, PIT, vCPUs) is most of what a
//! fork costs, and on this kind of host those calls also wait on kernel grace periods that
//! busy guests stretch to milliseconds. A pool makes them ahead of time, on its own thread:
//! each pooled VM has its slots over a reserved, inaccessible range of the right size, and a
//! fork maps the child's copy-on-write view over that range with `MAP_FIXED` (KVM's MMU
//! notifiers see the new pages) instead of creating anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::VmFd;

use super::setup;
use crate::context::KvmContext;
use crate::error::Error;
use crate::memory::register_range;
use crate::vcpu::Vcpu;

/// A pre-created VM: KVM VM with irqchip and PIT, vCPUs, and memory slots over `addr`.
pub(crate) struct Shell {
    // Field order is drop order: vCPUs before their VM.
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) vm_fd: Option<VmFd>,
    /// The reserved range the slots point at; owned by the shell until a fork maps over it.
    pub(crate) addr: *mut u8,
    pub(crate) size: u64,
}

// SAFETY: the raw pointer is only the address of a reservation the shell owns.
unsafe impl Send for Shell {}

impl Shell {
    fn create(context: &KvmContext, size: u64, vcpus: u8) -> Result<Self, Error> {
        let len = usize::try_from(size).map_err(|_| crate::MemoryError::RegionTooLarge(size))?;
        // SAFETY: a fresh inaccessible reservation at an address the kernel picks.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(crate::MemoryError::CreateMemfd(std::io::Error::last_os_error()).into());
        }
        let addr = addr.cast::<u8>();
        let release = |e: Error| {
            // SAFETY: the reservation made above, not handed to anyone.
            unsafe { libc::munmap(addr.cast(), len) };
            e
        };
        let vm_fd = setup::create_vm_fd_with(context.kvm(), |vm_fd| {
            // SAFETY: the reservation lives until the shell is dropped or handed to a fork,
            // whose mapping then owns it for the VM's life.
            Ok(unsafe { register_range(vm_fd, addr, size) }?)
        })
        .map_err(release)?;
        let vcpus = (0..vcpus)
            .map(|index| Vcpu::create(&vm_fd, index))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| release(e.into()))?;
        Ok(Self {
            vcpus,
            vm_fd: Some(vm_fd),
            addr,
            size,
        })
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // Only a shell never used reaches here with its reservation; a used one had its
        // address taken (`addr` null).
        if !self.addr.is_null() {
            // SAFETY: the reservation this shell made and still owns.
            unsafe { libc::munmap(self.addr.cast(), self.size as usize) };
        }
    }
}

struct Shared {
    ready: Mutex<Vec<Shell>>,
    wanted: Condvar,
    stop: AtomicBool,
}

/// Pre-created VMs of one shape (memory size, vCPU count), kept at `target` by a background
/// thread. Hand it to [`crate::ForkConfig::pool`]; a fork with an empty pool makes its VM the
/// ordinary way.
pub struct VmPool {
    shared: Arc<Shared>,
    target: usize,
    size: u64,
    vcpus: u8,
    filler: Option<JoinHandle<()>>,
}

impl VmPool {
    /// A pool of `target` VMs of `memory_bytes` and `vcpus`, filled on a thread of its own
    /// starting now.
    ///
    /// # Errors
    /// [`Error::PoolThread`] if the filling thread cannot start.
    pub fn new(
        context: Arc<KvmContext>,
        memory_bytes: u64,
        vcpus: u8,
        target: usize,
    ) -> Result<Self, Error> {
        let shared = Arc::new(Shared {
            ready: Mutex::new(Vec::with_capacity(target)),
            wanted: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let fill = shared.clone();
        let filler = std::thread::Builder::new()
            .name("zygote-vm-pool".into())
            .spawn(move || fill_loop(&fill, &context, memory_bytes, vcpus, target))
            .map_err(Error::PoolThread)?;
        Ok(Self {
            shared,
            target,
            size: memory_bytes,
            vcpus,
            filler: Some(filler),
        })
    }

    /// How many VMs are ready now.
    pub fn ready(&self) -> usize {
        self.shared
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Waits (up to `timeout`) until the pool holds its target.
    pub fn wait_full(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.ready() < self.target {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }

    /// A VM for a `size`-byte, `vcpus`-vCPU child, if one is ready.
    pub(crate) fn take(&self, size: u64, vcpus: usize) -> Option<Shell> {
        if size != self.size || vcpus != usize::from(self.vcpus) {
            return None;
        }
        let shell = self
            .shared
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        self.shared.wanted.notify_one();
        shell
    }
}

impl Drop for VmPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wanted.notify_all();
        if let Some(filler) = self.filler.take() {
            let _ = filler.join();
        }
        // Closing VMs with an irqchip takes 15-25 ms each: off the caller's thread.
        let shells =
            std::mem::take(&mut *self.shared.ready.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = std::thread::Builder::new()
            .name("zygote-teardown".into())
            .spawn(move || drop(shells));
    }
}

fn fill_loop(shared: &Shared, context: &KvmContext, size: u64, vcpus: u8, target: usize) {
    while !shared.stop.load(Ordering::SeqCst) {
        let missing =
            target.saturating_sub(shared.ready.lock().unwrap_or_else(|p| p.into_inner()).len());
        if missing == 0 {
            let ready = shared.ready.lock().unwrap_or_else(|p| p.into_inner());
            let _ = shared
                .wanted
                .wait_timeout(ready, std::time::Duration::from_millis(100));
            continue;
        }
        match Shell::create(context, size, vcpus) {
            Ok(shell) => shared
                .ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(shell),
            // Out of memory or fds: try again later rather than spin.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}
