use std::io::Cursor;

use vm_memory::ByteValued;

use super::*;

const SETUP_SECTS: u8 = 4;
const PAYLOAD: &[u8] = b"protected-mode kernel";

fn header() -> setup_header {
    setup_header {
        setup_sects: SETUP_SECTS,
        boot_flag: 0xaa55,
        header: 0x5372_6448,
        version: 0x020f,
        loadflags: 1, // LOADED_HIGH
        code32_start: 0x10_0000,
        kernel_alignment: 0x20_0000,
        relocatable_kernel: 1,
        xloadflags: XLF_KERNEL_64,
        pref_address: 0x100_0000,
        init_size: 0x80_0000,
        ..Default::default()
    }
}

/// A bzImage: boot sector and setup sectors with `header` at 0x1f1, then [`PAYLOAD`].
fn image(header: setup_header) -> Vec<u8> {
    let setup_len = (usize::from(SETUP_SECTS) + 1) * 512;
    let mut bytes = vec![0u8; setup_len];
    let raw = header.as_slice();
    bytes[0x1f1..0x1f1 + raw.len()].copy_from_slice(raw);
    bytes.extend_from_slice(PAYLOAD);
    bytes
}

#[test]
fn bzimage_is_recognised_by_boot_flag_and_hdrs() {
    assert!(is_bzimage(&mut Cursor::new(image(header()))).unwrap());
    let mut elf = b"\x7fELF".to_vec();
    elf.resize(4096, 0);
    assert!(!is_bzimage(&mut Cursor::new(elf)).unwrap());
    assert!(!is_bzimage(&mut Cursor::new(Vec::new())).unwrap());
    assert!(!is_bzimage(&mut Cursor::new(vec![0u8; 0x203])).unwrap());
    let mut no_flag = image(header());
    no_flag[0x1fe] = 0;
    assert!(!is_bzimage(&mut Cursor::new(no_flag)).unwrap());
}

#[test]
fn the_kernel_goes_at_1mib_and_enters_at_0x200() {
    let loaded = read(&mut Cursor::new(image(header()))).unwrap();
    assert_eq!(loaded.entry, GuestAddress(0x10_0200));
    assert_eq!(loaded.payload_offset, (u64::from(SETUP_SECTS) + 1) * 512);
    assert_eq!(loaded.payload_len, PAYLOAD.len() as u64);
    assert_eq!({ loaded.setup_header.code32_start }, 0x10_0000);
    assert_eq!({ loaded.setup_header.init_size }, 0x80_0000);
    // Decompressed at max(align_up(1 MiB, 2 MiB), 16 MiB) = 16 MiB, init_size beyond.
    assert_eq!(loaded.kernel_end, 0x100_0000 + 0x80_0000);
}

#[test]
fn relocatable_kernel_loaded_above_pref_address_decompresses_in_place() {
    let hdr = setup_header {
        pref_address: 0x10_0000,
        ..header()
    };
    // Rounded up to kernel_alignment from the 1 MiB load address.
    assert_eq!(decompressed_end(&hdr, 0x10_0000), 0x20_0000 + 0x80_0000);
    let fixed = setup_header {
        relocatable_kernel: 0,
        ..header()
    };
    assert_eq!(decompressed_end(&fixed, 0x10_0000), 0x100_0000 + 0x80_0000);
}

#[test]
fn bzimage_without_64bit_entry_is_refused() {
    for hdr in [
        setup_header {
            xloadflags: 0,
            ..header()
        },
        setup_header {
            version: 0x020b,
            ..header()
        },
    ] {
        let error = read(&mut Cursor::new(image(hdr))).unwrap_err();
        assert!(
            matches!(error, BzImageError::No64BitEntry { .. }),
            "{error}"
        );
    }
}

#[test]
fn hostile_header_sizes_do_not_panic() {
    let hdr = setup_header {
        init_size: u32::MAX,
        pref_address: u64::MAX,
        kernel_alignment: u32::MAX,
        ..header()
    };
    let loaded = read(&mut Cursor::new(image(hdr))).unwrap();
    assert_eq!(loaded.kernel_end, u64::MAX);
    let zero_align = setup_header {
        kernel_alignment: 0,
        ..header()
    };
    assert!(read(&mut Cursor::new(image(zero_align))).is_ok());
}

#[test]
fn truncated_bzimage_is_a_load_error() {
    let hdr = setup_header {
        setup_sects: 200,
        ..header()
    };
    let error = read(&mut Cursor::new(image(hdr))).unwrap_err();
    assert!(matches!(error, BzImageError::Truncated { .. }), "{error}");
}
