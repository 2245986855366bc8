//! The contract between Zygote's guest kernel and the host side that boots it.
//!
//! Both sides build this crate: the guest kernel (`x86_64-unknown-none`, `no_std`) uses it to
//! parse its command line and format what it prints, and host tests use it to build the command
//! line and to check what came back on the serial console. Keeping both directions here means a
//! format cannot drift between the two.
//!
//! ```
//! use zygote_guest_proto::{Workload, TouchResult, pattern_checksum};
//!
//! let workload = Workload::Touch { mib: 2, pattern: 0xfeed };
//! let arg = format!("{}", workload.cmdline_arg());
//! assert_eq!(arg, "zygote.workload=touch:2:0xfeed");
//! assert_eq!(Workload::from_cmdline(&arg), Ok(workload));
//!
//! // What the guest prints after touching memory, and how the host checks it.
//! let line = "zygote-guest: touch addr=0x200000 mib=2 checksum=0x0123456789abcdef";
//! let result = TouchResult::parse_line(line).unwrap();
//! assert_eq!(result.mib, 2);
//! let _expected = pattern_checksum(0xfeed, 2);
//! ```
#![no_std]

pub mod agent;
mod hostile;
mod hostile_queue;
mod identity;
mod lines;
mod mmio;
mod pattern;
mod ports;
mod string_io;
mod workload;

pub use agent::{AGENT_COUNTER_ADDR, AGENT_PORT};
pub use hostile::{
    HostileBlk, HostileOutcome, HostileVsock, HOSTILE_BLK_PREFIX, HOSTILE_VSOCK_PREFIX,
};
pub use hostile_queue::{
    BadBuf, HostileQueue, HostileQueueId, BAD_HUGE_LEN, BAD_MMIO_GAP, BAD_OUTSIDE_RAM,
    HOSTILE_QUEUE_PREFIX,
};
pub use identity::{VmIdentity, VM_IDENTITY_ADDR, VM_IDENTITY_LEN, VM_IDENTITY_MAGIC, VM_ID_LEN};
pub use lines::{
    ExceptionReport, TouchResult, ERROR_PREFIX, EXCEPTION_PREFIX, LINE_PREFIX, PANIC_PREFIX,
    READY_LINE, TOUCH_PREFIX,
};
pub use mmio::{MmioDevice, MAX_MMIO_DEVICES, VIRTIO_MMIO_KEY};
pub use pattern::{pattern_checksum, pattern_word, Checksum, PATTERN_MULTIPLIER, WORDS_PER_MIB};
pub use ports::{
    exit_code, COM1_PORT, DEBUG_EXIT_PORT, FAULT_PORT, I8042_COMMAND_PORT, I8042_RESET_COMMAND,
    IDLE_MAX_WAIT_US, IDLE_PORT,
};
pub use string_io::{
    StringIoReport, INSB_LEN, INSD_COUNT, INSW_COUNT, STRING_IO_INPUT, STRING_IO_OUT_LINES,
    STRING_IO_PREFIX,
};
pub use workload::{CmdlineArg, FaultKind, UnknownWorkload, Workload, WORKLOAD_KEY};

/// Physical (= virtual) address the guest kernel is linked and loaded at: 1 MiB.
pub const KERNEL_LOAD_ADDR: u64 = 0x10_0000;

/// The guest identity-maps physical memory from 0 up to this address (16 GiB), user-accessible.
/// Anything at or above it is unmapped in the guest; `fault:pf` reads [`UNMAPPED_ADDR`].
pub const IDENTITY_MAP_LIMIT: u64 = 16 << 30;

/// The address `fault:pf` reads: the first byte past the identity map.
pub const UNMAPPED_ADDR: u64 = IDENTITY_MAP_LIMIT;

/// `touch` starts at the first multiple of this (2 MiB) at or after the end of the kernel image.
pub const TOUCH_ALIGN: u64 = 2 << 20;
