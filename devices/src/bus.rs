//! Address-range buses that route guest port I/O and MMIO accesses to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that sits on a [`Bus`] and answers accesses within its range.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A half-open address range `[base, base + len)` on a bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusRange {
    /// First address of the range.
    pub base: u64,
    /// Length of the range in bytes; never zero.
    pub len: u64,
}

impl BusRange {
    /// One past the last address of the range, or `None` if that overflows.
    fn end(&self) -> Option<u64> {
        self.base.checked_add(self.len)
    }

    fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.len
    }
}

/// Errors from inserting into or accessing a [`Bus`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A device range of length zero was inserted.
    #[error("bus range at {0:#x} has zero length")]
    EmptyRange(u64),
    /// A device range runs past the end of the address space.
    #[error("bus range at {base:#x} with length {len:#x} overflows the address space")]
    RangeOverflow {
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A device range overlaps one already on the bus.
    #[error("bus range at {base:#x} overlaps the device already at {existing:#x}")]
    Overlap {
        /// First address of the rejected range.
        base: u64,
        /// First address of the device already there.
        existing: u64,
    },
    /// No device answers at the accessed address.
    #[error("no device at address {0:#x}")]
    NoDevice(u64),
    /// The access runs past the end of the device's range.
    #[error("access of {len} bytes at {addr:#x} crosses the end of its device's range")]
    CrossesRange {
        /// Address of the access.
        addr: u64,
        /// Length of the access.
        len: usize,
    },
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Routes accesses by address to the device whose range contains them.
///
/// A bus is filled while the VM is built and then shared, read-only, by all vCPU threads; each
/// device is behind its own lock, so accesses to different devices do not contend.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, (BusRange, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `range`, which must not overlap any device already on the bus.
    pub fn insert(&mut self, device: SharedDevice, range: BusRange) -> Result<(), BusError> {
        if range.len == 0 {
            return Err(BusError::EmptyRange(range.base));
        }
        let end = range.end().ok_or(BusError::RangeOverflow {
            base: range.base,
            len: range.len,
        })?;
        let before = self.devices.range(..end).next_back();
        if let Some((&existing, (other, _))) = before {
            if other.end().is_none_or(|other_end| other_end > range.base) {
                return Err(BusError::Overlap {
                    base: range.base,
                    existing,
                });
            }
        }
        self.devices.insert(range.base, (range, device));
        Ok(())
    }

    /// Finds the device at `addr` for an access of `len` bytes, with the offset into it.
    fn resolve(&self, addr: u64, len: usize) -> Result<(u64, &SharedDevice), BusError> {
        let (range, device) = self
            .devices
            .range(..=addr)
            .next_back()
            .map(|(_, entry)| entry)
            .filter(|(range, _)| range.contains(addr))
            .ok_or(BusError::NoDevice(addr))?;
        let offset = addr - range.base;
        if offset.saturating_add(len as u64) > range.len {
            return Err(BusError::CrossesRange { addr, len });
        }
        Ok((offset, device))
    }

    /// Reads from the device at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        let (offset, device) = self.resolve(addr, data.len())?;
        lock(device).read(offset, data);
        Ok(())
    }

    /// Writes to the device at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), BusError> {
        let (offset, device) = self.resolve(addr, data.len())?;
        lock(device).write(offset, data);
        Ok(())
    }
}

/// Locks a device. A device whose lock was poisoned by a panic elsewhere keeps serving: its
/// state is plain register data, and refusing every later access would only hang the guest.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn range(base: u64, len: u64) -> BusRange {
        BusRange { base, len }
    }

    #[test]
    fn routes_by_address_with_offsets() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), range(0x3f8, 8)).unwrap();
        let mut data = [0u8; 1];
        bus.read(0x3fd, &mut data).unwrap();
        assert_eq!(data, [5]);
        bus.write(0x3f8, &[0x41]).unwrap();
        assert_eq!(dev.lock().unwrap().last_write, Some((0, vec![0x41])));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), range(0x100, 0x10)).unwrap();
        let overlap = bus.insert(dev.clone(), range(0x10f, 1));
        assert_eq!(
            overlap,
            Err(BusError::Overlap {
                base: 0x10f,
                existing: 0x100
            })
        );
        assert!(matches!(
            bus.insert(dev.clone(), range(0xf8, 0x9)),
            Err(BusError::Overlap { .. })
        ));
        assert_eq!(
            bus.insert(dev.clone(), range(0x200, 0)),
            Err(BusError::EmptyRange(0x200))
        );
        assert!(matches!(
            bus.insert(dev.clone(), range(u64::MAX, 2)),
            Err(BusError::RangeOverflow { .. })
        ));
        bus.insert(dev, range(0x110, 0x10)).unwrap();
    }

    #[test]
    fn unknown_addresses_and_straddling_accesses_are_errors() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), range(0x100, 4))
            .unwrap();
        let mut data = [0u8; 4];
        assert_eq!(bus.read(0x104, &mut data), Err(BusError::NoDevice(0x104)));
        assert_eq!(bus.read(0xff, &mut data), Err(BusError::NoDevice(0xff)));
        assert_eq!(
            bus.write(0x102, &[0; 4]),
            Err(BusError::CrossesRange {
                addr: 0x102,
                len: 4
            })
        );
    }
}
