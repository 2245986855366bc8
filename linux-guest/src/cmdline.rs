//! The kernel command line for the project's Linux guest.

/// The kernel command line the Linux guest needs here (LINUX-GUEST.md §3 and §4): a serial
/// console, reset through the i8042 (`reboot=k`, which Zygote turns into
/// `ExitReason::Reset`), no reboot delay after a panic, and the flags that keep the kernel off
/// the instructions a CPL0-emulating host cannot run (`noxsave`, `no_int3_selftest` from the
/// project's patch, `clearcpuid=...`, `nofsgsbase`, `noinvpcid`, `nopku`). `quiet`,
/// `rodata=off` and `tsc=reliable` save seconds of emulated boot.
///
/// `no-kvmclock` is not in LINUX-GUEST.md's recipe: with kvm-clock, when two or more of these
/// guests boot at once on this project's hosts, all but one stop for good just before
/// "clocksource: Switched to clocksource kvm-clock" (seen in four parallel runs, never with
/// one guest); with `no-kvmclock` (the clocksource is then the TSC) parallel boots finish.
///
/// The initramfs's `/init` runs (`rdinit=/init`). For a disk root append
/// `root=/dev/vda rw init=<path>`; Zygote appends the `virtio_mmio.device=` entries itself.
/// Drop `quiet` and add `earlyprintk=serial,ttyS0,115200` to watch the boot.
pub const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 noxsave no_int3_selftest \
     clearcpuid=smap,fsgsbase,rdpid,serialize,rdtscp,popcnt,md_clear nofsgsbase noinvpcid nopku \
     rdinit=/init quiet rodata=off tsc=reliable no-kvmclock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_is_one_line_of_single_spaced_flags() {
        assert!(!CMDLINE.contains("  "), "{CMDLINE:?}");
        assert!(!CMDLINE.contains('\n'));
        for flag in [
            "console=ttyS0",
            "reboot=k",
            "noxsave",
            "no_int3_selftest",
            "quiet",
        ] {
            assert!(CMDLINE.split(' ').any(|f| f == flag), "{flag} missing");
        }
    }
}
