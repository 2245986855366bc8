//! Floors: the raw KVM syscall sequences Zygote's operations are built from, with no Zygote
//! code, so a benchmark can report Zygote's own overhead as a ratio measured in the same run.

#![deny(missing_docs)]

pub mod measure;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::{kvm_regs, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

/// Errors from building a floor VM: the raw call that failed.
#[derive(Debug)]
pub struct FloorError(pub &'static str, pub std::io::Error);

impl std::fmt::Display for FloorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.0, self.1)
    }
}

impl std::error::Error for FloorError {}

/// A shared mapping of a memfd, unmapped on drop: guest memory as Zygote makes it.
pub struct SharedMemory {
    addr: *mut libc::c_void,
    size: usize,
    _memfd: File,
}

// SAFETY: the mapping is plain memory owned by this value; the pointer is only its address,
// and unmapping it from another thread (a VM dropped off the timed path) is sound.
unsafe impl Send for SharedMemory {}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: `addr` was returned by mmap for `size` bytes and is unmapped only here.
        unsafe { libc::munmap(self.addr, self.size) };
    }
}

/// A VM made of the bare minimum: VM fd, one memfd-backed memory slot, one vCPU with CPUID,
/// special and general registers set.
pub struct FloorVm {
    // Field order is drop order: the VM goes before the memory it maps.
    _vcpu: VcpuFd,
    _vm: VmFd,
    _memory: SharedMemory,
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> FloorError {
    move |e| FloorError(op, std::io::Error::from_raw_os_error(e.errno()))
}

fn os_err(op: &'static str) -> FloorError {
    FloorError(op, std::io::Error::last_os_error())
}

impl SharedMemory {
    /// A `size`-byte memfd mapped shared.
    pub fn new(size: usize) -> Result<Self, FloorError> {
        map_memfd(size)
    }

    /// The mapping's first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr.cast()
    }

    /// Registers the whole mapping as memory slot `slot` at guest address 0.
    pub fn register(&self, vm: &VmFd, slot: u32) -> Result<(), FloorError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: self.size as u64,
            userspace_addr: self.addr as u64,
        };
        // SAFETY: the region is mapped for its whole size; callers keep it alive as long as
        // the VM (field order of `FloorVm`).
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))
    }
}

fn map_memfd(size: usize) -> Result<SharedMemory, FloorError> {
    // SAFETY: a valid NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(c"floor".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(os_err("memfd_create"));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let memfd = unsafe { File::from_raw_fd(fd) };
    memfd
        .set_len(size as u64)
        .map_err(|e| FloorError("ftruncate", e))?;
    // SAFETY: a fresh shared mapping of a file we own; the result is checked below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            memfd.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(os_err("mmap"));
    }
    Ok(SharedMemory {
        addr,
        size,
        _memfd: memfd,
    })
}

/// Opens /dev/kvm and creates a floor VM with `mem_size` bytes of memory at guest address 0,
/// as Zygote's `build()` does (it too opens /dev/kvm and reads the supported CPUID per VM).
pub fn create_vm(mem_size: usize) -> Result<FloorVm, FloorError> {
    let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    let memory = map_memfd(mem_size)?;
    memory.register(&vm, 0)?;
    let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    set_vcpu_state(&vcpu, &cpuid)?;
    Ok(FloorVm {
        _vcpu: vcpu,
        _vm: vm,
        _memory: memory,
    })
}

/// The raw sequence a fork competes with (../shared/FORK-PRIMITIVES.md §1): with `/dev/kvm`
/// already open, a memfd mapped shared, `KVM_CREATE_VM`, the memory slot (before the irqchip,
/// where it is cheap), `KVM_CREATE_IRQCHIP`, `KVM_CREATE_PIT2`, one vCPU with CPUID, special
/// and general registers set. The caller should drop the VM off its timed path: closing a VM
/// with an irqchip takes 15-25 ms here.
pub fn create_vm_with_irqchip(
    kvm: &Kvm,
    cpuid: &kvm_bindings::CpuId,
    mem_size: usize,
) -> Result<FloorVm, FloorError> {
    let memory = map_memfd(mem_size)?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    memory.register(&vm, 0)?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_bindings::kvm_pit_config::default())
        .map_err(kvm_err("KVM_CREATE_PIT2"))?;
    let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    set_vcpu_state(&vcpu, cpuid)?;
    Ok(FloorVm {
        _vcpu: vcpu,
        _vm: vm,
        _memory: memory,
    })
}

/// The vCPU state every floor VM sets, as Zygote does for its boot vCPU: CPUID, long-mode
/// special registers, the entry registers.
fn set_vcpu_state(vcpu: &VcpuFd, cpuid: &kvm_bindings::CpuId) -> Result<(), FloorError> {
    vcpu.set_cpuid2(cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    sregs.cr0 |= 0x8000_0031;
    sregs.cr3 = 0x9000;
    sregs.cr4 |= 0x20;
    sregs.efer |= 0x500;
    sregs.cs.l = 1;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rip: 0x10_0000,
        rsp: 0x8ff0,
        rsi: 0x7000,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))
}
