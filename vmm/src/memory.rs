//! Guest RAM: one memfd, mapped shared, split around the MMIO gap.
//!
//! A memfd (rather than anonymous memory) lets later engines share the same pages with a
//! snapshot or a fork, and map them privately for copy-on-write.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::{MmapRegion, MmapRegionBuilder};
use vm_memory::{
    FileOffset, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};
use zygote_cow::CowMapping;
use zygote_snapshot::EngineStats;

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
    Raw(#[source] vm_memory::mmap::MmapRegionError),
    /// The guest regions overlap or are out of order.
    #[error("cannot assemble guest memory regions: {0}")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
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
pub struct GuestRam {
    // Field order is drop order: the regions (which only borrow a `Cow` or `External`
    // mapping) go before the backing that owns it.
    memory: GuestMemoryMmap,
    size: u64,
    backing: Backing,
}

/// What the RAM is a mapping of.
enum Backing {
    /// `MAP_SHARED` of a memfd: the VM's writes land in the file.
    Shared(Arc<File>),
    /// `MAP_PRIVATE` of a memfd someone keeps still: reads share its pages, writes are copies.
    Private(Arc<File>),
    /// A forked VM's copy-on-write view of frozen layers (`zygote_cow`).
    Cow(CowMapping),
    /// A mapping someone else made (a memory engine), kept alive by the box.
    External {
        memfd: Option<(Arc<File>, bool)>,
        keepalive: Box<dyn ExternalMemory>,
    },
}

/// What keeps a mapping made outside [`GuestRam`] alive (see [`GuestRam::from_raw`]), and
/// what it can tell about the memory engine serving it.
pub trait ExternalMemory: Send + Sync {
    /// The counters of the memory engine's service behind the mapping (faults served, pages
    /// placed), or `None` when no service runs there.
    fn engine_stats(&self) -> Option<EngineStats>;
}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRam")
            .field("size", &self.size)
            .field("shared", &self.is_shared())
            .finish()
    }
}

impl GuestRam {
    /// Creates `size` bytes of zeroed guest RAM laid out around the MMIO gap, a `MAP_SHARED`
    /// mapping of a new memfd.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        let file = Arc::new(create_memfd(size)?);
        let memory = map_file(&file, size, libc::MAP_SHARED)?;
        Ok(Self {
            memory,
            size,
            backing: Backing::Shared(file),
        })
    }

    /// A copy-on-write view of `base` (a memfd of at least `size` bytes laid out as
    /// [`ram_regions`] says): `MAP_PRIVATE`, so reads share `base`'s pages and the first write
    /// to a page copies it. Later writes to `base` by others show through on pages this RAM
    /// has not written yet: the caller keeps `base` still (see `cow/`).
    pub fn private_of(base: Arc<File>, size: u64) -> Result<Self, MemoryError> {
        let memory = map_file(&base, size, libc::MAP_PRIVATE | libc::MAP_NORESERVE)?;
        Ok(Self {
            memory,
            size,
            backing: Backing::Private(base),
        })
    }

    /// RAM over a copy-on-write view (a forked VM's memory).
    pub fn from_cow(mapping: CowMapping) -> Result<Self, MemoryError> {
        // SAFETY: the mapping is readable and writable, `size` bytes long, and stays mapped
        // while `Backing::Cow` holds it, which outlives `memory` (field order).
        let memory = unsafe { regions_over(mapping.addr(), mapping.size()) }?;
        Ok(Self {
            memory,
            size: mapping.size(),
            backing: Backing::Cow(mapping),
        })
    }

    /// RAM over a mapping someone else made (a memory engine): `size` bytes at `host_addr`,
    /// laid out as [`ram_regions`] says, kept alive by `keepalive`. `memfd` is the file
    /// behind it and whether the mapping is `MAP_SHARED`, if it is a memfd mapping.
    ///
    /// # Safety
    /// `host_addr..host_addr + size` must be a readable and writable mapping that stays
    /// mapped for as long as `keepalive` lives, and nothing else may unmap it.
    pub unsafe fn from_raw(
        host_addr: *mut u8,
        size: u64,
        memfd: Option<(Arc<File>, bool)>,
        keepalive: Box<dyn ExternalMemory>,
    ) -> Result<Self, MemoryError> {
        // SAFETY: the caller's guarantees, and `keepalive` outlives `memory` (field order).
        let memory = unsafe { regions_over(host_addr, size) }?;
        Ok(Self {
            memory,
            size,
            backing: Backing::External { memfd, keepalive },
        })
    }

    /// The counters of the memory engine serving this RAM (a restored VM's; see
    /// [`ExternalMemory::engine_stats`]), `None` for RAM no engine serves.
    pub fn engine_stats(&self) -> Option<EngineStats> {
        match &self.backing {
            Backing::External { keepalive, .. } => keepalive.engine_stats(),
            _ => None,
        }
    }

    /// The memfd behind the RAM, if the RAM is a mapping of one.
    pub fn memfd(&self) -> Option<&Arc<File>> {
        match &self.backing {
            Backing::Shared(file) | Backing::Private(file) => Some(file),
            Backing::External { memfd, .. } => memfd.as_ref().map(|(file, _)| file),
            Backing::Cow(_) => None,
        }
    }

    /// Whether the VM's writes land in [`GuestRam::memfd`] (a `MAP_SHARED` mapping).
    pub fn is_shared(&self) -> bool {
        match &self.backing {
            Backing::Shared(_) => true,
            Backing::External { memfd, .. } => memfd.as_ref().is_some_and(|(_, shared)| *shared),
            Backing::Private(_) | Backing::Cow(_) => false,
        }
    }

    /// The copy-on-write view under a forked VM's RAM.
    pub fn cow(&self) -> Option<&CowMapping> {
        match &self.backing {
            Backing::Cow(mapping) => Some(mapping),
            _ => None,
        }
    }

    /// The same, to move it onto a new view after a fork.
    pub(crate) fn cow_mut(&mut self) -> Option<&mut CowMapping> {
        match &mut self.backing {
            Backing::Cow(mapping) => Some(mapping),
            _ => None,
        }
    }

    /// The host address of guest RAM's first byte (offset 0 of the layout).
    pub fn host_addr(&self) -> *mut u8 {
        self.memory
            .iter()
            .next()
            .map_or(std::ptr::null_mut(), |region| region.as_ptr())
    }

    /// The guest memory, for reading and writing guest-physical addresses.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Total RAM size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Points the VM's memory slots at this RAM instead of `old` (same layout): each slot is
    /// deleted and made again, as KVM cannot change a slot's host address in place.
    /// Crate-private, like [`GuestRam::register`]; the VM's vCPUs must be parked.
    pub(crate) fn reregister(&self, vm: &VmFd, old: &GuestRam) -> Result<(), MemoryError> {
        for (slot, (new, old)) in self.memory.iter().zip(old.memory.iter()).enumerate() {
            let slot = slot as u32;
            let delete = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: old.start_addr().0,
                memory_size: 0,
                userspace_addr: old.as_ptr() as u64,
            };
            // SAFETY: a zero size deletes the slot; KVM stops using `old`'s mapping.
            unsafe { vm.set_user_memory_region(delete) }
                .map_err(|source| MemoryError::SetMemorySlot { slot, source })?;
            register_region(vm, slot, new)?;
        }
        Ok(())
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

/// Registers the `size`-byte range at `host_addr` as the VM's memory slots, numbered from 0,
/// in the layout of [`ram_regions`] (a pre-created VM's slots over a reserved range).
///
/// # Safety
/// The range must stay reserved (mapped, even `PROT_NONE`) for as long as the VM lives.
pub(crate) unsafe fn register_range(
    vm: &VmFd,
    host_addr: *mut u8,
    size: u64,
) -> Result<(), MemoryError> {
    for (slot, region) in ram_regions(size).into_iter().enumerate() {
        let slot = slot as u32;
        let mapping = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start.0,
            memory_size: region.len,
            userspace_addr: host_addr as u64 + region.file_offset,
        };
        // SAFETY: the caller keeps the range mapped while the VM lives.
        unsafe { vm.set_user_memory_region(mapping) }
            .map_err(|source| MemoryError::SetMemorySlot { slot, source })?;
    }
    Ok(())
}

/// Guest regions over the `size`-byte mapping at `addr`, in the layout of [`ram_regions`].
///
/// # Safety
/// `addr..addr + size` must stay mapped readable and writable while the regions live.
unsafe fn regions_over(addr: *mut u8, size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let regions = ram_regions(size)
        .into_iter()
        .map(|region| {
            let len =
                usize::try_from(region.len).map_err(|_| MemoryError::RegionTooLarge(region.len))?;
            let offset = usize::try_from(region.file_offset)
                .map_err(|_| MemoryError::RegionTooLarge(region.file_offset))?;
            // SAFETY: the region lies inside the mapping (offset + len <= size, by
            // `ram_regions`), which the caller keeps mapped while the regions live.
            let mapping = unsafe {
                MmapRegion::build_raw(
                    addr.add(offset),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                )
            }
            .map_err(MemoryError::Raw)?;
            GuestRegionMmap::new(mapping, region.start)
                .ok_or(MemoryError::RegionTooLarge(region.len))
        })
        .collect::<Result<Vec<_>, MemoryError>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)
}

/// Maps `file` with `flags` in the layout of [`ram_regions`].
fn map_file(file: &File, size: u64, flags: i32) -> Result<GuestMemoryMmap, MemoryError> {
    let regions = ram_regions(size)
        .into_iter()
        .map(|region| {
            let len =
                usize::try_from(region.len).map_err(|_| MemoryError::RegionTooLarge(region.len))?;
            let offset = FileOffset::new(
                file.try_clone().map_err(MemoryError::DupMemfd)?,
                region.file_offset,
            );
            let mapping = MmapRegionBuilder::new(len)
                .with_file_offset(offset)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(flags)
                .build()
                .map_err(MemoryError::Raw)?;
            GuestRegionMmap::new(mapping, region.start)
                .ok_or(MemoryError::RegionTooLarge(region.len))
        })
        .collect::<Result<Vec<_>, MemoryError>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)
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
