//! The workloads `zygote.workload=` selects (see `zygote_guest_proto::Workload`).

use core::ptr::addr_of;

use zygote_guest_proto::{
    exit_code, pattern_word, Checksum, TouchResult, Workload, ERROR_PREFIX, IDENTITY_MAP_LIMIT,
    READY_LINE, TOUCH_ALIGN, WORDS_PER_MIB,
};

use crate::arch::faults;
use crate::boot_params::BootParams;
use crate::console::Console;
use crate::exit::{exit, spin_forever};
use crate::println;

extern "C" {
    /// End of the kernel image, stacks included (link.ld).
    static __kernel_end: u8;
}

/// Parses the workload from `cmdline` and runs it; never returns.
pub fn run(cmdline: &str, boot: &BootParams) -> ! {
    let workload = match Workload::from_cmdline(cmdline) {
        Ok(workload) => workload,
        Err(unknown) => {
            println!("{ERROR_PREFIX}{unknown}");
            exit(exit_code::UNKNOWN_WORKLOAD)
        }
    };
    // The agent (and `hostile`, which ends as the agent) prints the ready line once its
    // devices are up.
    match workload {
        Workload::Agent => crate::agent::run(cmdline, boot),
        Workload::Hostile => crate::hostile::run(cmdline, boot),
        _ => {}
    }
    Console.write_bytes(READY_LINE.as_bytes());
    match workload {
        Workload::Ready => exit(exit_code::OK),
        Workload::Exit(code) => exit(code),
        Workload::Touch { mib, pattern } => touch(boot, mib, pattern),
        Workload::Fault(kind) => faults::raise(kind),
        Workload::Spin => spin_forever(),
        Workload::StringIo => crate::string_io::run(),
        Workload::Agent | Workload::Hostile => unreachable!("handled above"),
    }
}

/// Writes `mib` MiB of `pattern` after the kernel, reads it back, prints the checksum.
fn touch(boot: &BootParams, mib: u32, pattern: u64) -> ! {
    let start = touch_start();
    let words = u64::from(mib) * WORDS_PER_MIB;
    // No overflow: start < 1 GiB and words * 8 < 2^52.
    let end = start + words * 8;
    if end > IDENTITY_MAP_LIMIT || !boot.e820().any(|entry| entry.covers(start, end)) {
        println!("{ERROR_PREFIX}touch: {mib} MiB at {start:#x}..{end:#x} is not usable RAM (e820)");
        exit(exit_code::TOUCH_ERROR)
    }
    let checksum = fill_and_checksum(start, words, pattern);
    println!(
        "{}",
        TouchResult {
            addr: start,
            mib,
            checksum
        }
    );
    exit(exit_code::OK)
}

/// Where `touch` (the workload and the agent's operation) writes: the first [`TOUCH_ALIGN`]
/// boundary at or after the end of the kernel image.
pub fn touch_start() -> u64 {
    (kernel_end() + TOUCH_ALIGN - 1) & !(TOUCH_ALIGN - 1)
}

/// Writes `words` words of `pattern` from `start`, reads them back, returns their checksum.
/// The caller has checked that `start..start + words * 8` is usable RAM from [`touch_start`]
/// on that nothing else in the kernel uses.
pub fn fill_and_checksum(start: u64, words: u64, pattern: u64) -> u64 {
    let base = start as *mut u64;
    for index in 0..words {
        // SAFETY: `start..end` is usable RAM (e820), identity-mapped and user-writable, past the
        // kernel image and its stacks, below the agent's arena; nothing else in the kernel
        // refers to it. Volatile: the point is to touch the memory, not to compute a checksum.
        unsafe {
            base.add(index as usize)
                .write_volatile(pattern_word(pattern, index))
        };
    }
    let mut checksum = Checksum::new();
    for index in 0..words {
        // SAFETY: as above; every word was just written.
        checksum.update(unsafe { base.add(index as usize).read_volatile() });
    }
    checksum.value()
}

/// The first address past the kernel image.
fn kernel_end() -> u64 {
    // Only the symbol's address is taken, never its contents.
    addr_of!(__kernel_end) as u64
}
