//! Guest RAM: one memfd, mapped shared, split around the MMIO gap.
//!
//! A memfd (rather than anonymous memory) lets later engines share the same pages with a
//! snapshot or a fork, and map them privately for copy-on-write.

use std::fs::File;
use std::os::fd::FromRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    FileOffset, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::arch::layout::ram_regions;

/// Errors from creating guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `memfd_create` failed.
    #[error("cannot create the guest memory file: {0}")]
    CreateMemfd(#[source] std::io::Error),
    /// The memory file could not be duplicated for a second mapping.
    #[error("cannot duplicate the guest memory file: {0}")]
    DupMemfd(#[source] std::io::Error),
    /// The memory file could not be sized.
    #[error("cannot size the guest memory file to {size} bytes: {source}")]
    Resize {
        /// Requested size.
        size: u64,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The memory file could not be sealed against resizing.
    #[error("cannot seal the guest memory file: {0}")]
    Seal(#[source] std::io::Error),
    /// Mapping guest RAM failed.
    #[error("cannot map guest memory: {0}")]
    Map(#[from] vm_memory::mmap::FromRangesError),
    /// A guest region is larger than the host address space allows.
    #[error("guest memory region of {0} bytes does not fit the host address space")]
    RegionTooLarge(u64),
    /// `KVM_SET_USER_MEMORY_REGION` failed.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} failed: {source}")]
    SetMemorySlot {
        /// Slot number.
        slot: u32,
        /// Underlying error.
        source: kvm_ioctls::Error,
    },
}

/// Guest RAM and the memfd behind it.
#[derive(Debug)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    size: u64,
}

impl GuestRam {
    /// Creates `size` bytes of zeroed guest RAM laid out around the MMIO gap.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        let file = create_memfd(size)?;
        let ranges = ram_regions(size)
            .into_iter()
            .map(|region| {
                let len = usize::try_from(region.len)
                    .map_err(|_| MemoryError::RegionTooLarge(region.len))?;
                let offset = FileOffset::new(
                    file.try_clone().map_err(MemoryError::DupMemfd)?,
                    region.file_offset,
                );
                Ok((region.start, len, Some(offset)))
            })
            .collect::<Result<Vec<_>, MemoryError>>()?;
        let memory = GuestMemoryMmap::from_ranges_with_files(ranges)?;
        Ok(Self { memory, size })
    }

    /// The guest memory, for reading and writing guest-physical addresses.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Total RAM size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Registers every region as a KVM memory slot, numbered from 0. Crate-private: KVM keeps
    /// using the mapping after this returns, so only the `Vm` that owns both may call it.
    pub(crate) fn register(&self, vm: &VmFd) -> Result<(), MemoryError> {
        for (slot, region) in self.memory.iter().enumerate() {
            register_region(vm, slot as u32, region)?;
        }
        Ok(())
    }
}

fn register_region(vm: &VmFd, slot: u32, region: &GuestRegionMmap) -> Result<(), MemoryError> {
    let mapping = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: region.start_addr().0,
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
    };
    // SAFETY: the region maps `memory_size` bytes at `userspace_addr`, and the mapping outlives
    // the VM: both are owned by the same `Vm`, which drops the VM fd first.
    unsafe { vm.set_user_memory_region(mapping) }
        .map_err(|source| MemoryError::SetMemorySlot { slot, source })
}

fn create_memfd(size: u64) -> Result<File, MemoryError> {
    let name = c"zygote-guest-ram";
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid for memfd_create.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(MemoryError::CreateMemfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|source| MemoryError::Resize { size, source })?;
    // Sealing the size means a mapping can never outgrow the file and fault with SIGBUS.
    // SAFETY: F_ADD_SEALS on a file descriptor we own, with valid seal flags.
    let sealed = unsafe {
        libc::fcntl(
            fd,
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    if sealed < 0 {
        return Err(MemoryError::Seal(std::io::Error::last_os_error()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn ram_is_split_around_the_gap_and_backed_by_one_file() {
        let ram = GuestRam::new(0xc000_0000 + (2 << 20)).unwrap();
        let regions: Vec<_> = ram.memory().iter().collect();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[1].start_addr(), GuestAddress(0x1_0000_0000));
        assert_eq!(regions[1].file_offset().unwrap().start(), 0xc000_0000);
        ram.memory()
            .write_obj(0xabcd_u64, GuestAddress(0x1_0000_0000))
            .unwrap();
        let back: u64 = ram.memory().read_obj(GuestAddress(0x1_0000_0000)).unwrap();
        assert_eq!(back, 0xabcd);
        assert!(ram
            .memory()
            .read_obj::<u64>(GuestAddress(0xc000_0000))
            .is_err());
    }
}
