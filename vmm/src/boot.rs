//! Loading a kernel for the Linux x86_64 64-bit boot protocol: the ELF image, its command
//! line, an optional initrd, the zero page that describes them, the MP table and the boot
//! GDT and page tables.
//!
//! Everything goes through one [`MemoryPlan`]: the regions are named and placed first, checked
//! against RAM and against each other, and only then written.

pub(crate) mod bzimage;
pub(crate) mod cmdline;
pub mod elf;
pub mod plan;

use std::fs::File;
use std::io::{Read, Seek};

use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::arch::boot_params::{self as zero_page, BootInputs, BootParamsError};
use crate::arch::layout::{
    ram_regions, BOOT_STACK_POINTER, BOOT_STACK_START, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START,
    HIMEM_START, MMIO_GAP_START, VM_IDENTITY_SIZE, VM_IDENTITY_START, ZERO_PAGE_START,
};
use crate::arch::mptable::{self, MpTableError};
use crate::arch::regs;
pub use elf::{ElfError, KernelImage, Segment};
pub use plan::{CheckedPlan, Contents, MemoryPlan, PlanError, Region, RegionName, Source};

const PAGE_SIZE: u64 = 4096;

/// Errors from loading the kernel and its boot data into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The ELF image's headers are not ones the VMM can load.
    #[error("cannot load the kernel ELF image: {0}")]
    LoadKernel(#[source] ElfError),
    /// The command line, with its NUL, is longer than the boot protocol allows.
    #[error("the kernel command line ({len} bytes) is longer than the maximum of {max}")]
    CmdlineTooLong {
        /// Length of the line, in bytes, without the NUL.
        len: usize,
        /// Longest line accepted, in bytes, without the NUL.
        max: usize,
    },
    /// The command line has characters other than printable ASCII.
    #[error("the kernel command line has characters other than printable ASCII")]
    CmdlineInvalid,
    /// The kernel image could not be read to tell ELF from bzImage.
    #[error("cannot read the kernel image: {0}")]
    ReadKernel(#[source] std::io::Error),
    /// The bzImage's header is not one Zygote can boot.
    #[error(transparent)]
    BzImage(#[from] bzimage::BzImageError),
    /// The initrd size could not be read, or it is neither a regular file nor a block device.
    #[error("cannot read the initrd: {0}")]
    ReadInitrd(#[source] std::io::Error),
    /// The initrd is larger than the RAM below the MMIO gap.
    #[error("the initrd ({size} bytes) does not fit in guest memory")]
    InitrdTooLarge {
        /// Size of the initrd.
        size: u64,
    },
    /// The zero page could not be built.
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    /// The MP table describing the vCPUs and the I/O APIC could not be built.
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    /// Two regions of guest memory collide (a kernel segment and the zero page, say), a region
    /// lies outside RAM, or a region could not be written.
    #[error("guest memory layout: {0}")]
    MemoryPlan(#[from] PlanError),
}

/// Loads everything the kernel needs into `mem` (`mem_size` bytes of RAM laid out as
/// [`crate::arch::layout`] says, `vcpus` vCPUs for the MP table) and returns the kernel's
/// entry point.
///
/// Nothing is written unless every region fits in RAM and no two share a byte: a kernel
/// segment over the zero page, an initrd over a segment, are a [`BootError::MemoryPlan`]
/// naming both regions. The kernel image is untrusted: any malformed image is a
/// [`BootError`], never a panic.
pub fn load<K: Read + Seek + ReadVolatile>(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    vcpus: u8,
    kernel: &mut K,
    cmdline: &str,
    initrd: Option<&mut File>,
) -> Result<GuestAddress, BootError> {
    let (image, setup_header) = kernel_image(kernel)?;
    let initrd_size = initrd
        .as_deref()
        .map(zygote_devices::virtio::block::file_size)
        .transpose()
        .map_err(BootError::ReadInitrd)?;
    plan(mem_size, vcpus, &image, setup_header, cmdline, initrd_size)?
        .check(&ram_regions(mem_size))?
        .write(mem, kernel, initrd)?;
    Ok(GuestAddress(image.entry))
}

/// Places every region the boot writes: the kernel's segments, the command line, the initrd
/// (of `initrd_size` bytes, if any), the zero page, the MP table and the boot CPU structures;
/// and reserves the VM identity page, which `Vm::create` writes next.
pub fn plan(
    mem_size: u64,
    vcpus: u8,
    image: &KernelImage,
    setup_header: Option<setup_header>,
    cmdline: &str,
    initrd_size: Option<u64>,
) -> Result<MemoryPlan, BootError> {
    let mut plan = MemoryPlan::new();
    for segment in &image.segments {
        let contents = Contents::File {
            source: Source::Kernel,
            offset: segment.offset,
            len: segment.filesz,
        };
        let name = RegionName::KernelSegment(segment.index);
        plan.add(name, GuestAddress(segment.paddr), segment.memsz, contents)?;
    }
    let cmdline = cmdline_bytes(cmdline)?;
    let inputs = BootInputs {
        cmdline_addr: CMDLINE_START,
        cmdline_size: cmdline.len(),
        initrd: initrd_size
            .map(|size| initrd_place(mem_size, size))
            .transpose()?,
        setup_header,
    };
    plan.add_bytes(RegionName::Cmdline, CMDLINE_START, cmdline)?;
    if let Some((addr, len)) = inputs.initrd {
        let contents = Contents::File {
            source: Source::Initrd,
            offset: 0,
            len,
        };
        plan.add(RegionName::Initrd, addr, len, contents)?;
    }
    let params = zero_page::build(mem_size, &inputs)?;
    plan.add_bytes(
        RegionName::ZeroPage,
        ZERO_PAGE_START,
        zero_page_bytes(&params),
    )?;
    plan.add_bytes(
        RegionName::MpTable,
        GuestAddress(EBDA_START),
        mptable::bytes(vcpus)?,
    )?;
    let (gdt_start, gdt) = regs::boot_gdt();
    plan.add_bytes(RegionName::BootGdt, gdt_start, gdt)?;
    let (idt_start, idt) = regs::boot_idt();
    plan.add_bytes(RegionName::BootIdt, idt_start, idt)?;
    for (start, table) in regs::page_tables() {
        plan.add_bytes(RegionName::PageTables, start, table)?;
    }
    plan.add(
        RegionName::VmIdentity,
        VM_IDENTITY_START,
        VM_IDENTITY_SIZE,
        Contents::Nothing,
    )?;
    let stack_len = BOOT_STACK_POINTER - BOOT_STACK_START.0;
    plan.add(
        RegionName::BootStack,
        BOOT_STACK_START,
        stack_len,
        Contents::Nothing,
    )?;
    Ok(plan)
}

/// The kernel's parts and entry: an ELF's `PT_LOAD` segments, or a bzImage's protected-mode
/// kernel at 1 MiB as one segment spanning what it decompresses into (with its setup header
/// for the zero page).
fn kernel_image<K: Read + Seek>(
    kernel: &mut K,
) -> Result<(KernelImage, Option<setup_header>), BootError> {
    if !bzimage::is_bzimage(kernel).map_err(BootError::ReadKernel)? {
        let image = elf::read_headers(kernel, HIMEM_START.0).map_err(BootError::LoadKernel)?;
        return Ok((image, None));
    }
    let bz = bzimage::read(kernel)?;
    let segment = Segment {
        index: 0,
        paddr: HIMEM_START.0,
        offset: bz.payload_offset,
        filesz: bz.payload_len,
        memsz: bz.kernel_end.saturating_sub(HIMEM_START.0),
    };
    let image = KernelImage {
        entry: bz.entry.0,
        segments: vec![segment],
    };
    Ok((image, Some(bz.setup_header)))
}

/// The command line with its NUL, as long as the boot protocol accepts it.
fn cmdline_bytes(cmdline: &str) -> Result<Vec<u8>, BootError> {
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    if !cmdline.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(BootError::CmdlineInvalid);
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    Ok(bytes)
}

/// Where an initrd of `size` bytes goes: the top of low memory, page aligned. Whether it
/// collides with the kernel is the plan's check.
fn initrd_place(mem_size: u64, size: u64) -> Result<(GuestAddress, u64), BootError> {
    let low_end = mem_size.min(MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .ok_or(BootError::InitrdTooLarge { size })?;
    Ok((GuestAddress(addr), size))
}

fn zero_page_bytes(params: &boot_params) -> Vec<u8> {
    params.as_slice().to_vec()
}

#[cfg(test)]
mod tests;
