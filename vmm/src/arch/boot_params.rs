//! The Linux zero page (`struct boot_params`) with its e820 memory map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::GuestAddress;

use super::layout::{ram_regions, EBDA_START, HIMEM_START, VM_IDENTITY_SIZE, VM_IDENTITY_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// Errors from building the zero page.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// The e820 table has no room for another entry.
    #[error("the e820 map is full")]
    E820Full,
}

/// Where the command line and the initrd are, for the zero page.
#[derive(Clone, Copy, Debug)]
pub struct BootInputs {
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: GuestAddress,
    /// Length of the command line including its NUL.
    pub cmdline_size: usize,
    /// Guest address and size of the initrd, if any.
    pub initrd: Option<(GuestAddress, u64)>,
    /// A bzImage's setup header, copied into the zero page as the boot protocol requires
    /// (its `kernel_alignment`, `init_size` and flags are the kernel's); `None` for an ELF.
    pub setup_header: Option<setup_header>,
}

/// Builds the zero page for `mem_size` bytes of RAM.
pub fn build(mem_size: u64, inputs: &BootInputs) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    match inputs.setup_header {
        Some(header) => params.hdr = header,
        None => params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES,
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    let cmdline = inputs.cmdline_addr.0;
    params.hdr.cmd_line_ptr = cmdline as u32;
    params.ext_cmd_line_ptr = (cmdline >> 32) as u32;
    params.hdr.cmdline_size = inputs.cmdline_size as u32;
    if let Some((addr, size)) = inputs.initrd {
        params.hdr.ramdisk_image = addr.0 as u32;
        params.ext_ramdisk_image = (addr.0 >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }

    // Low RAM, less the VM identity page, which only the VMM writes.
    let identity = VM_IDENTITY_START.0;
    let after_identity = identity + VM_IDENTITY_SIZE;
    add_e820(&mut params, 0, identity, E820_RAM)?;
    add_e820(&mut params, identity, VM_IDENTITY_SIZE, E820_RESERVED)?;
    add_e820(
        &mut params,
        after_identity,
        EBDA_START - after_identity,
        E820_RAM,
    )?;
    add_e820(
        &mut params,
        EBDA_START,
        HIMEM_START.0 - EBDA_START,
        E820_RESERVED,
    )?;
    for region in ram_regions(mem_size) {
        // The first region starts at 0; the part below 1 MiB is described above.
        let start = region.start.0.max(HIMEM_START.0);
        let end = region.start.0 + region.len;
        if end > start {
            add_e820(&mut params, start, end - start, E820_RAM)?;
        }
    }
    Ok(params)
}

fn add_e820(
    params: &mut boot_params,
    addr: u64,
    size: u64,
    kind: u32,
) -> Result<(), BootParamsError> {
    let index = usize::from(params.e820_entries);
    let entry = params
        .e820_table
        .get_mut(index)
        .ok_or(BootParamsError::E820Full)?;
    *entry = boot_e820_entry {
        addr,
        size,
        r#type: kind,
    };
    params.e820_entries += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::{MMIO_GAP_END, MMIO_GAP_START};

    fn inputs() -> BootInputs {
        BootInputs {
            cmdline_addr: GuestAddress(0x20000),
            cmdline_size: 12,
            initrd: Some((GuestAddress(0x7f00_0000), 0x1000)),
            setup_header: None,
        }
    }

    fn entries(params: &boot_params) -> Vec<(u64, u64, u32)> {
        params.e820_table[..usize::from(params.e820_entries)]
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect()
    }

    #[test]
    fn zero_page_header_and_e820_for_small_memory() {
        let params = build(128 << 20, &inputs()).unwrap();
        assert_eq!({ params.hdr.boot_flag }, 0xaa55);
        assert_eq!({ params.hdr.header }, 0x5372_6448);
        assert_eq!({ params.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ params.hdr.cmdline_size }, 12);
        assert_eq!({ params.hdr.ramdisk_image }, 0x7f00_0000);
        assert_eq!({ params.hdr.ramdisk_size }, 0x1000);
        assert_eq!(
            entries(&params),
            vec![
                (0, 0x6000, E820_RAM),
                (0x6000, 0x1000, E820_RESERVED),
                (0x7000, EBDA_START - 0x7000, E820_RAM),
                (EBDA_START, 0x10_0000 - EBDA_START, E820_RESERVED),
                (0x10_0000, (128 << 20) - 0x10_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn bzimage_setup_header_is_kept_under_the_loaders_fields() {
        let header = setup_header {
            kernel_alignment: 0x20_0000,
            init_size: 0x80_0000,
            xloadflags: 1,
            cmd_line_ptr: 0xdead,
            ..Default::default()
        };
        let params = build(
            128 << 20,
            &BootInputs {
                setup_header: Some(header),
                ..inputs()
            },
        )
        .unwrap();
        assert_eq!({ params.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ params.hdr.init_size }, 0x80_0000);
        assert_eq!({ params.hdr.xloadflags }, 1);
        assert_eq!({ params.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ params.hdr.type_of_loader }, 0xff);
        assert_eq!(
            { build(128 << 20, &inputs()).unwrap().hdr.kernel_alignment },
            0x100_0000
        );
    }

    #[test]
    fn e820_skips_the_mmio_gap() {
        let params = build(6 << 30, &inputs()).unwrap();
        let map = entries(&params);
        assert_eq!(map.len(), 6);
        assert_eq!(map[4], (0x10_0000, MMIO_GAP_START - 0x10_0000, E820_RAM));
        assert_eq!(map[5], (MMIO_GAP_END, (6 << 30) - MMIO_GAP_START, E820_RAM));
    }
}
