//! Virtio-mmio devices announced on the kernel command line in Linux's format:
//! `virtio_mmio.device=<size>@<base>:<irq>`, size in bytes (decimal or `0x` hex) with an
//! optional `K`, `M` or `G` suffix, base in `0x` hex (or decimal), irq in decimal.

use core::fmt;

use crate::workload::{parse_decimal, parse_hex};

/// The command-line key of one virtio-mmio device.
pub const VIRTIO_MMIO_KEY: &str = "virtio_mmio.device=";

/// Most devices the guest takes from one command line; later ones are ignored.
pub const MAX_MMIO_DEVICES: usize = 8;

/// One `virtio_mmio.device=` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MmioDevice {
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Size of the window in bytes.
    pub size: u64,
    /// The interrupt line (the guest polls and never uses it).
    pub irq: u32,
}

impl MmioDevice {
    /// Parses the value after [`VIRTIO_MMIO_KEY`]: `<size>@<base>:<irq>`.
    pub fn parse(value: &str) -> Option<Self> {
        let (size, rest) = value.split_once('@')?;
        let (base, irq) = rest.split_once(':')?;
        let device = MmioDevice {
            size: parse_size(size)?,
            base: parse_number(base)?,
            irq: parse_decimal(irq)?,
        };
        (device.size > 0 && device.base.checked_add(device.size).is_some()).then_some(device)
    }

    /// Every well-formed entry on `cmdline`, in order, at most [`MAX_MMIO_DEVICES`]; malformed
    /// entries are skipped.
    pub fn from_cmdline(cmdline: &str) -> impl Iterator<Item = MmioDevice> + '_ {
        cmdline
            .split_ascii_whitespace()
            .filter_map(|word| word.strip_prefix(VIRTIO_MMIO_KEY))
            .filter_map(MmioDevice::parse)
            .take(MAX_MMIO_DEVICES)
    }
}

impl fmt::Display for MmioDevice {
    /// The whole command-line word, e.g. `virtio_mmio.device=0x1000@0xd0000000:5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VIRTIO_MMIO_KEY}{:#x}@{:#x}:{}",
            self.size, self.base, self.irq
        )
    }
}

/// `0x`-prefixed hex or decimal.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => parse_hex(hex),
        None => parse_decimal(text),
    }
}

/// A number with an optional binary-unit suffix.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let value = parse_number(digits)?;
    value.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::vec::Vec;

    #[test]
    fn parses_linux_entries() {
        assert_eq!(
            MmioDevice::parse("4K@0xd0000000:5"),
            Some(MmioDevice {
                base: 0xd000_0000,
                size: 4096,
                irq: 5
            })
        );
        assert_eq!(
            MmioDevice::parse("0x1000@0xd0001000:6"),
            Some(MmioDevice {
                base: 0xd000_1000,
                size: 4096,
                irq: 6
            })
        );
        assert_eq!(MmioDevice::parse("512@4096:0").map(|d| d.size), Some(512));
        for bad in [
            "",
            "4K",
            "4K@",
            "4K@0xd0000000",
            "4K@0xd0000000:",
            "0@0x1:1",
            "4Q@0x1:1",
            "4K@0xffffffffffffffff:1",
            "4K@0xd0000000:-1",
            "@0x1:1",
        ] {
            assert_eq!(MmioDevice::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn finds_entries_on_a_command_line_and_round_trips() {
        let line = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 x \
                    virtio_mmio.device=bad virtio_mmio.device=4K@0xd0001000:6";
        let found: Vec<_> = MmioDevice::from_cmdline(line).collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].base, 0xd000_1000);
        let word = format!("{}", found[0]);
        assert_eq!(word, "virtio_mmio.device=0x1000@0xd0000000:5");
        assert_eq!(MmioDevice::from_cmdline(&word).next(), Some(found[0]));
        let many = "virtio_mmio.device=4K@0x1000:1 ".repeat(12);
        assert_eq!(MmioDevice::from_cmdline(&many).count(), MAX_MMIO_DEVICES);
    }
}
