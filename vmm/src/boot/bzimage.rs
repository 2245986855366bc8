//! Loading a `bzImage` for the Linux x86 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst): the protected-mode kernel goes to 1 MiB, its setup
//! header goes into the zero page, and the vCPU enters at the 64-bit entry, 0x200 bytes into
//! the protected-mode kernel. The kernel then decompresses itself.
//!
//! Only the header is read here; the payload is written by the boot memory plan like an ELF
//! segment, after the plan has checked it against every other region.

use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use vm_memory::{ByteValued, GuestAddress};

use crate::arch::layout::HIMEM_START;

/// Offset of the setup header in the image.
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// Offset of the setup header's `boot_flag` (0xaa55) in the image.
const BOOT_FLAG_OFFSET: u64 = 0x1fe;
/// `boot_flag`, `jump` and the `HdrS` magic, as they appear from [`BOOT_FLAG_OFFSET`].
const BOOT_FLAG: [u8; 2] = [0x55, 0xaa];
const HDRS_MAGIC: [u8; 4] = *b"HdrS";
/// The 64-bit entry is this far into the protected-mode kernel (`startup_64`).
const ENTRY_64_OFFSET: u64 = 0x200;
/// Boot protocol 2.12 introduced `xloadflags`.
const MIN_VERSION_64: u16 = 0x020c;
/// `XLF_KERNEL_64`: the kernel has the 64-bit entry at 0x200.
const XLF_KERNEL_64: u16 = 1;
/// `loadflags` bit `LOADED_HIGH`: the protected-mode code loads at 1 MiB.
const LOADED_HIGH: u8 = 1;
/// `type_of_loader` for a loader without an assigned id.
const LOADER_OTHER: u8 = 0xff;

/// Errors from reading a `bzImage`.
#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    /// The image could not be read.
    #[error("cannot read the bzImage: {0}")]
    Read(#[source] std::io::Error),
    /// The setup sectors claim more bytes than the file has.
    #[error("the bzImage is truncated: its setup takes {setup_len} bytes of {file_len}")]
    Truncated {
        /// Bytes the boot sector and setup sectors take.
        setup_len: u64,
        /// Bytes in the file.
        file_len: u64,
    },
    /// The kernel does not load at 1 MiB (`LOADED_HIGH` clear): a zImage.
    #[error("the image is not loaded high (a zImage); only bzImages are supported")]
    NotLoadedHigh,
    /// The image has no 64-bit entry point, the only one Zygote enters by.
    #[error(
        "the bzImage has no 64-bit entry point (boot protocol {version:#06x}, xloadflags \
         {xloadflags:#x}; needs 2.12 or later with XLF_KERNEL_64)"
    )]
    No64BitEntry {
        /// The setup header's boot protocol version.
        version: u16,
        /// Its `xloadflags`.
        xloadflags: u16,
    },
}

/// Where a `bzImage` goes and what the zero page needs from it.
#[derive(Clone, Copy, Debug)]
pub struct BzImageLayout {
    /// The 64-bit entry point (protected-mode kernel + 0x200).
    pub entry: GuestAddress,
    /// Where the protected-mode kernel starts in the file.
    pub payload_offset: u64,
    /// Its length in bytes (loaded at 1 MiB).
    pub payload_len: u64,
    /// The setup header for the zero page (`code32_start` and `type_of_loader` set).
    pub setup_header: setup_header,
    /// First address above everything the kernel uses before it reads the e820 map: the
    /// loaded image and `init_size` bytes from where it decompresses to (saturating).
    pub kernel_end: u64,
}

/// Whether `image` starts like a `bzImage` (`boot_flag` 0xaa55 and the `HdrS` magic of boot
/// protocol 2.00 or later). Leaves the position anywhere; a short file is not a `bzImage`.
pub fn is_bzimage<R: Read + Seek>(image: &mut R) -> std::io::Result<bool> {
    let mut magic = [0u8; 8];
    image.seek(SeekFrom::Start(BOOT_FLAG_OFFSET))?;
    match image.read_exact(&mut magic) {
        Ok(()) => Ok(magic[..2] == BOOT_FLAG && magic[4..] == HDRS_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads the setup header of the `bzImage` `image` and where its parts go.
///
/// # Errors
/// [`BzImageError`] for an image that is short, not loaded high, or without the 64-bit entry.
pub fn read<R: Read + Seek>(image: &mut R) -> Result<BzImageLayout, BzImageError> {
    let file_len = image.seek(SeekFrom::End(0)).map_err(BzImageError::Read)?;
    let mut header = setup_header::default();
    image
        .seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
        .map_err(BzImageError::Read)?;
    image
        .read_exact(header.as_mut_slice())
        .map_err(BzImageError::Read)?;
    let (version, xloadflags) = (header.version, header.xloadflags);
    if version < MIN_VERSION_64 || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BzImageError::No64BitEntry {
            version,
            xloadflags,
        });
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(BzImageError::NotLoadedHigh);
    }
    // A setup_sects of 0 means 4 (boot.rst).
    let setup_sects = u64::from(if header.setup_sects == 0 {
        4
    } else {
        header.setup_sects
    });
    let payload_offset = (setup_sects + 1) * 512;
    if payload_offset >= file_len {
        return Err(BzImageError::Truncated {
            setup_len: payload_offset,
            file_len,
        });
    }
    let payload_len = file_len - payload_offset;
    header.code32_start = HIMEM_START.0 as u32;
    header.type_of_loader = LOADER_OTHER;
    let kernel_end = (HIMEM_START.0 + payload_len).max(decompressed_end(&header, HIMEM_START.0));
    Ok(BzImageLayout {
        entry: GuestAddress(HIMEM_START.0 + ENTRY_64_OFFSET),
        payload_offset,
        payload_len,
        setup_header: header,
        kernel_end,
    })
}

/// The end of the `init_size` bytes the kernel needs from the address it decompresses to:
/// its preferred address, or for a relocatable kernel the load address rounded up to
/// `kernel_alignment` if that is higher (as `startup_64` in
/// arch/x86/boot/compressed/head_64.S computes it). Saturates: a hostile header only makes
/// the plan refuse the layout.
fn decompressed_end(header: &setup_header, load: u64) -> u64 {
    let pref = header.pref_address;
    let align = u64::from(header.kernel_alignment).max(1);
    let start = if header.relocatable_kernel != 0 {
        load.div_ceil(align).saturating_mul(align).max(pref)
    } else {
        pref
    };
    start.saturating_add(u64::from(header.init_size))
}

#[cfg(test)]
mod tests;
