//! Loading a kernel for the Linux x86_64 64-bit boot protocol: the ELF image or a bzImage
//! (`bzimage`), its command line, an optional initrd, and the zero page that describes them.

use std::fs::File;
use std::io::{Read, Seek};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{elf::Elf, load_cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::arch::boot_params::{self, BootInputs, BootParamsError};
use crate::arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START};
use crate::arch::mptable::{self, MpTableError};

pub(crate) mod bzimage;

const PAGE_SIZE: u64 = 4096;

/// Errors from loading the kernel and its boot data into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The ELF image could not be loaded (bad headers, segments outside memory).
    #[error("cannot load the kernel ELF image: {0}")]
    LoadKernel(#[source] linux_loader::loader::Error),
    /// The kernel image could not be read to tell ELF from bzImage.
    #[error("cannot read the kernel image: {0}")]
    ReadKernel(#[source] std::io::Error),
    /// The bzImage could not be loaded.
    #[error(transparent)]
    BzImage(#[from] bzimage::BzImageError),
    /// The command line is not one the boot protocol accepts.
    #[error("invalid kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The command line could not be written to guest memory.
    #[error("cannot write the kernel command line: {0}")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// The initrd size could not be read.
    #[error("cannot read the initrd: {0}")]
    ReadInitrd(#[source] std::io::Error),
    /// The initrd does not fit between the kernel and the end of low memory.
    #[error("the initrd ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooLarge {
        /// Size of the initrd.
        size: u64,
    },
    /// The initrd could not be copied into guest memory.
    #[error("cannot copy the initrd into guest memory: {0}")]
    LoadInitrd(#[source] vm_memory::GuestMemoryError),
    /// The zero page could not be built or written.
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    /// The MP table describing the vCPUs and the I/O APIC could not be written.
    #[error(transparent)]
    MpTable(#[from] MpTableError),
}

/// Loads everything the kernel needs into `mem` (`mem_size` bytes of RAM laid out as
/// [`crate::arch::layout`] says, `vcpus` vCPUs for the MP table) and returns the kernel's
/// entry point.
///
/// The kernel image is untrusted: any malformed image is a [`BootError`], never a panic.
pub fn load<K: Read + Seek + ReadVolatile>(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    vcpus: u8,
    kernel: &mut K,
    cmdline: &str,
    initrd: Option<&mut File>,
) -> Result<GuestAddress, BootError> {
    let loaded = if bzimage::is_bzimage(kernel).map_err(BootError::ReadKernel)? {
        let image = bzimage::load(mem, kernel)?;
        (image.entry, image.kernel_end, Some(image.setup_header))
    } else {
        let elf = Elf::load(mem, None, kernel, Some(HIMEM_START)).map_err(BootError::LoadKernel)?;
        (elf.kernel_load, elf.kernel_end, None)
    };
    let (entry, kernel_end, setup_header) = loaded;
    let cmdline_size = write_cmdline(mem, cmdline)?;
    let initrd = initrd
        .map(|file| load_initrd(mem, mem_size, kernel_end, file))
        .transpose()?;
    let inputs = BootInputs {
        cmdline_addr: CMDLINE_START,
        cmdline_size,
        initrd,
        setup_header,
    };
    boot_params::write(mem, &boot_params::build(mem_size, &inputs)?)?;
    mptable::write(mem, vcpus)?;
    Ok(entry)
}

/// Writes the command line and returns its size including the NUL.
fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, BootError> {
    let line = Cmdline::try_from(cmdline, CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    load_cmdline(mem, CMDLINE_START, &line).map_err(BootError::WriteCmdline)?;
    Ok(cmdline.len() + 1)
}

/// Copies the initrd to the top of low memory, page aligned, above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel_end: u64,
    file: &mut File,
) -> Result<(GuestAddress, u64), BootError> {
    let size = file.metadata().map_err(BootError::ReadInitrd)?.len();
    let low_end = mem_size.min(MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel_end)
        .ok_or(BootError::InitrdTooLarge { size })?;
    let count = usize::try_from(size).map_err(|_| BootError::InitrdTooLarge { size })?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, count)
        .map_err(BootError::LoadInitrd)?;
    debug_assert!(GuestAddress(addr).checked_add(size).is_some());
    Ok((GuestAddress(addr), size))
}
