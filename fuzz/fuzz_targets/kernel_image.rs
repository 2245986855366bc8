//! The kernel image is a file the VMM reads and must not trust: any bytes given as a kernel
//! must load or fail with a `BootError`, never panic, hang or write outside guest memory.
//!
//! Run: `cargo +nightly fuzz run kernel_image` from this folder.

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use zygote::GuestRam;

fuzz_target!(|image: &[u8]| {
    // 16 MiB: big enough for real segments, small enough that a fresh one per input is cheap.
    let Ok(ram) = GuestRam::new(16 << 20) else {
        return;
    };
    let _ = zygote::boot::load(
        ram.memory(),
        ram.size(),
        1,
        &mut Cursor::new(image),
        "console=ttyS0",
        None,
    );
});
