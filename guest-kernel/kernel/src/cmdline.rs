//! The kernel command line, read in place from guest memory.

use zygote_guest_proto::IDENTITY_MAP_LIMIT;

use crate::boot_params::BootParams;

/// Longest command line read; the rest is ignored.
const MAX_CMDLINE: u64 = 4096;

/// The NUL-terminated ASCII command line the zero page points at ("" when there is none). Cut at
/// [`MAX_CMDLINE`] bytes and at the first byte that is not valid UTF-8.
pub fn read(boot: &BootParams) -> &'static str {
    let addr = boot.cmdline_addr();
    if addr == 0 || addr >= IDENTITY_MAP_LIMIT - MAX_CMDLINE {
        return "";
    }
    let mut len = 0;
    // SAFETY: the VMM put a NUL-terminated string at `addr`, in identity-mapped RAM that nothing
    // writes while the kernel runs; reading stops at the NUL or MAX_CMDLINE bytes (still mapped).
    while len < MAX_CMDLINE && unsafe { *((addr + len) as *const u8) } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes at `addr` were just read, and stay unchanged (see above).
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) };
    match core::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            let valid = &bytes[..error.valid_up_to()];
            // SAFETY: `valid_up_to` bytes are valid UTF-8 by definition.
            unsafe { core::str::from_utf8_unchecked(valid) }
        }
    }
}
