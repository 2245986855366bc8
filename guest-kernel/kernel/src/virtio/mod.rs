//! Virtio over MMIO, polled from user mode: device discovery from the command line, the shared
//! transport and split virtqueues, and the block, net and vsock drivers.

pub mod blk;
pub mod net;
pub mod queue;
pub mod transport;
pub mod vsock;

use zygote_guest_proto::{MmioDevice, ERROR_PREFIX};

use crate::arena::Arena;
use crate::clock::Clock;
use crate::println;
use blk::Blk;
use net::Net;
use queue::{Used, Virtqueue};
use transport::{device_id, Mmio, VirtioError};
use vsock::Vsock;

/// Lowest address a virtio-mmio window may have: anything lower would be RAM or the kernel.
const MMIO_FLOOR: u64 = 0xc000_0000;
/// First address past the MMIO gap.
const MMIO_CEILING: u64 = 0x1_0000_0000;

/// The devices the guest found and bound (the first of each kind).
#[derive(Default)]
pub struct Devices {
    /// virtio-blk.
    pub blk: Option<Blk>,
    /// virtio-net.
    pub net: Option<Net>,
    /// virtio-vsock.
    pub vsock: Option<Vsock>,
}

/// Probes every `virtio_mmio.device=` entry on `cmdline` and binds a driver to the first
/// device of each kind. Failures are printed as error lines and leave that device unbound.
/// `clock` is the caller's (calibrating the TSC can take 10 ms: do it once).
pub fn discover(cmdline: &str, arena: &mut Arena, clock: Clock) -> Devices {
    let mut devices = Devices::default();
    for entry in MmioDevice::from_cmdline(cmdline) {
        if entry.base < MMIO_FLOOR || entry.base + entry.size > MMIO_CEILING || entry.size < 0x200 {
            println!(
                "{ERROR_PREFIX}virtio-mmio window {:#x} outside the MMIO gap",
                entry.base
            );
            continue;
        }
        // SAFETY: the window lies in the MMIO gap (checked), which the identity map covers
        // user-accessible; the VMM put a virtio-mmio device there (command line).
        let Some((mmio, id)) = (unsafe { Mmio::probe(entry.base) }) else {
            continue;
        };
        let result = match id {
            device_id::BLOCK if devices.blk.is_none() => {
                Blk::new(mmio, arena).map(|d| devices.blk = Some(d))
            }
            device_id::NET if devices.net.is_none() => {
                Net::new(mmio, arena).map(|d| devices.net = Some(d))
            }
            device_id::VSOCK if devices.vsock.is_none() => {
                Vsock::new(mmio, arena, clock).map(|d| devices.vsock = Some(d))
            }
            _ => Ok(()),
        };
        if let Err(error) = result {
            println!(
                "{ERROR_PREFIX}virtio device {id} at {:#x}: {error}",
                entry.base
            );
        }
    }
    devices
}

/// Polls `queue` until the chain at `head` comes back, checking the device status now and
/// then (a VM exit) and giving up after `timeout_ms`.
pub fn wait_used(
    queue: &mut Virtqueue,
    mmio: &Mmio,
    clock: &Clock,
    timeout_ms: u64,
    head: u16,
) -> Result<Used, VirtioError> {
    let deadline = clock.deadline_ms(timeout_ms);
    let mut spins = 0u32;
    loop {
        while let Some(used) = queue.pop_used() {
            if used.head == head {
                return Ok(used);
            }
        }
        spins = spins.wrapping_add(1);
        if spins % (1 << 12) == 0 {
            if deadline.passed() {
                mmio.check()?;
                return Err(VirtioError::Timeout);
            }
            if spins % (1 << 20) == 0 {
                mmio.check()?;
            }
        }
        core::hint::spin_loop();
    }
}
