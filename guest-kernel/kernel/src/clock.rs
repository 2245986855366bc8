//! Time from the TSC: `rdtsc` runs natively at CPL3, and its frequency comes from CPUID or,
//! failing that, from timing the PIT's channel 2 once.

use core::arch::x86_64::{__cpuid_count, _rdtsc, CpuidResult};

use crate::arch::port;

/// Assumed when nothing better is known: 2 GHz.
const FALLBACK_HZ: u64 = 2_000_000_000;
/// The PIT's input clock.
const PIT_HZ: u64 = 1_193_182;
/// PIT ticks timed: 10 ms.
const PIT_TICKS: u64 = PIT_HZ / 100;

/// The TSC and its frequency.
#[derive(Clone, Copy)]
pub struct Clock {
    hz: u64,
}

/// A point in time after which [`Deadline::passed`] is true.
#[derive(Clone, Copy)]
pub struct Deadline {
    at: u64,
}

impl Clock {
    /// Finds the TSC frequency (a few VM exits, 10 ms when the PIT must be used).
    pub fn new() -> Self {
        let hz = cpuid_hz().or_else(pit_hz).unwrap_or(FALLBACK_HZ);
        Clock { hz }
    }

    /// The TSC now.
    pub fn now() -> u64 {
        // SAFETY: `rdtsc` only reads the time stamp counter (CR4.TSD is clear: CPL3 may).
        unsafe { _rdtsc() }
    }

    /// TSC ticks in `us` microseconds.
    pub fn ticks_us(&self, us: u64) -> u64 {
        (self.hz / 1_000_000).saturating_mul(us)
    }

    /// A deadline `ms` milliseconds from now.
    pub fn deadline_ms(&self, ms: u64) -> Deadline {
        let ticks = (self.hz / 1000).saturating_mul(ms);
        Deadline {
            at: Self::now().saturating_add(ticks),
        }
    }
}

impl Deadline {
    /// Whether the deadline is behind us.
    pub fn passed(&self) -> bool {
        Clock::now() >= self.at
    }
}

/// The frequency CPUID states: KVM's timing leaf 0x4000_0010, else leaf 0x15, else 0x16.
fn cpuid_hz() -> Option<u64> {
    let hypervisor = cpuid(0x4000_0000, 0);
    if hypervisor.eax >= 0x4000_0010 && hypervisor.eax < 0x4001_0000 {
        let khz = cpuid(0x4000_0010, 0).eax;
        if khz != 0 {
            return Some(u64::from(khz) * 1000);
        }
    }
    let max = cpuid(0, 0).eax;
    if max >= 0x15 {
        let leaf = cpuid(0x15, 0);
        if leaf.eax != 0 && leaf.ebx != 0 && leaf.ecx != 0 {
            return Some(u64::from(leaf.ecx) * u64::from(leaf.ebx) / u64::from(leaf.eax));
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16, 0).eax & 0xffff;
        if mhz != 0 {
            return Some(u64::from(mhz) * 1_000_000);
        }
    }
    None
}

/// CPUID `leaf`/`subleaf` (a VM exit).
#[allow(unused_unsafe)] // `__cpuid_count` is safe from Rust 1.87 on, unsafe before.
fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    // SAFETY: `cpuid` only reads processor identification; every x86_64 CPU has it.
    unsafe { __cpuid_count(leaf, subleaf) }
}

/// Times 10 ms of PIT channel 2 (mode 0, gate on through port 0x61) against the TSC.
fn pit_hz() -> Option<u64> {
    // SAFETY: ports 0x61, 0x42 and 0x43 are the PIT's channel 2 and its gate; programming them
    // affects no memory (the speaker stays off).
    unsafe {
        let gate = port::inb(0x61);
        port::outb(0x61, (gate & !0x02) | 0x01);
        port::outb(0x43, 0xb0);
        port::outb(0x42, (PIT_TICKS & 0xff) as u8);
        port::outb(0x42, (PIT_TICKS >> 8) as u8);
    }
    let start = Clock::now();
    let mut polls = 0u32;
    // SAFETY: reading port 0x61 has no side effects.
    while unsafe { port::inb(0x61) } & 0x20 == 0 {
        polls += 1;
        if polls > 100_000 {
            return None;
        }
    }
    let hz = (Clock::now() - start) * 100;
    // Nonsense (no PIT: the bit reads set at once) gives way to the fallback.
    (hz > 100_000_000).then_some(hz)
}
