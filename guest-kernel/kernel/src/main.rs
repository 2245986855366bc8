//! Zygote's guest kernel.
//!
//! Boots from the VMM's Linux 64-bit entry, spends a few dozen instructions at CPL0
//! (`arch::entry`), then runs everything else in user mode with IOPL 3: fills its IDT, reads the
//! command line and runs the workload it names (`workloads`). See DESIGN.md.
#![no_std]
#![no_main]

mod agent;
mod arch;
mod arena;
mod boot_params;
mod clock;
mod cmdline;
mod console;
mod exit;
mod hostile;
mod identity;
mod idle;
mod string_io;
mod virtio;
mod workloads;

use zygote_guest_proto::{exit_code, PANIC_PREFIX};

use boot_params::BootParams;

/// The Rust side of the CPL3 entry (`arch::usermode`), on the user stack with `.bss` zeroed.
extern "C" fn user_main(zero_page: u64) -> ! {
    arch::idt::install_exception_gates();
    // SAFETY: the VMM passes the zero page's address in `rsi` (boot protocol), `_start` hands it
    // here unchanged, and nothing writes the zero page while the kernel runs.
    let boot = unsafe { BootParams::new(zero_page) };
    workloads::run(cmdline::read(&boot), &boot)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(location) => println!("{PANIC_PREFIX}at {location}: {}", info.message()),
        None => println!("{PANIC_PREFIX}{}", info.message()),
    }
    exit::exit(exit_code::PANIC)
}
