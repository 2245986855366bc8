//! Loading a `bzImage` for the Linux x86 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst): the protected-mode kernel goes to 1 MiB, its setup
//! header goes into the zero page, and the vCPU enters at the 64-bit entry, 0x200 bytes into
//! the protected-mode kernel. The kernel then decompresses itself.

use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::arch::layout::HIMEM_START;

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

/// Errors from loading a `bzImage`.
#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    /// The image could not be read or placed in guest memory (linux-loader's checks: the
    /// `HdrS` magic, `LOADED_HIGH`, the image fitting in memory).
    #[error("cannot load the bzImage: {0}")]
    Load(#[source] linux_loader::loader::Error),
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

/// A `bzImage` in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedBzImage {
    /// The 64-bit entry point (protected-mode kernel + 0x200).
    pub entry: GuestAddress,
    /// The image's setup header, for the zero page (`code32_start` set to where it was loaded).
    pub setup_header: setup_header,
    /// First address above everything the kernel uses before it reads the e820 map: the loaded
    /// image and `init_size` bytes from where it decompresses to.
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

/// Loads the protected-mode kernel of the `bzImage` `image` at 1 MiB.
///
/// # Errors
/// [`BzImageError::Load`] for an image linux-loader refuses or that does not fit,
/// [`BzImageError::No64BitEntry`] for one without the 64-bit entry point.
pub fn load<K: Read + Seek + ReadVolatile>(
    mem: &GuestMemoryMmap,
    image: &mut K,
) -> Result<LoadedBzImage, BzImageError> {
    let loaded = BzImage::load(mem, Some(HIMEM_START), image, Some(HIMEM_START))
        .map_err(BzImageError::Load)?;
    // linux-loader's bzImage loader always returns the header it read.
    let header =
        loaded
            .setup_header
            .ok_or(BzImageError::Load(linux_loader::loader::Error::Bzimage(
                linux_loader::loader::bzimage::Error::InvalidBzImage,
            )))?;
    let (version, xloadflags) = (header.version, header.xloadflags);
    if version < MIN_VERSION_64 || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BzImageError::No64BitEntry {
            version,
            xloadflags,
        });
    }
    Ok(LoadedBzImage {
        entry: GuestAddress(loaded.kernel_load.0 + ENTRY_64_OFFSET),
        setup_header: header,
        kernel_end: loaded
            .kernel_end
            .max(decompressed_end(&header, loaded.kernel_load.0)),
    })
}

/// The end of the `init_size` bytes the kernel needs from the address it decompresses to:
/// its preferred address, or for a relocatable kernel the load address rounded up to
/// `kernel_alignment` if that is higher (as `startup_64` in
/// arch/x86/boot/compressed/head_64.S computes it). Saturates: a hostile header only makes
/// the initrd not fit.
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
