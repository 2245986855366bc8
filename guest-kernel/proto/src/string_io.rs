//! The `string-io` workload: string port I/O (`rep ins`/`rep outs`, byte, word and dword)
//! against COM1, which KVM hands to the VMM as one exit with a count of elements.

use core::fmt;

/// What the host feeds COM1 before the guest starts, all at once: the guest reads the first
/// [`INSB_LEN`] bytes with one `rep insb`, then [`INSW_COUNT`] with one `rep insw` and
/// [`INSD_COUNT`] with one `rep insd` (each word or dword element takes one byte from the
/// receive buffer, the UART's register being 8 bits wide).
pub const STRING_IO_INPUT: &[u8; 24] = b"abcdefghijklmnopqrstuvwx";

/// Bytes read by the `rep insb`: more than COM1's 8 ports, all from its data port.
pub const INSB_LEN: usize = 16;
/// Elements read by the `rep insw`.
pub const INSW_COUNT: usize = 4;
/// Elements read by the `rep insd`.
pub const INSD_COUNT: usize = 4;

/// Starts the line formatted by [`StringIoReport`].
pub const STRING_IO_PREFIX: &str = "zygote-guest: string-io ";

/// Lines the guest writes to COM1's data port with one `rep outsb`, one `rep outsw` and one
/// `rep outsd` (each character an element, zero-extended), in that order.
pub const STRING_IO_OUT_LINES: [&str; 3] = [
    "zygote-guest: string-io rep outsb\n",
    "zygote-guest: string-io rep outsw\n",
    "zygote-guest: string-io rep outsd\n",
];

/// What the `rep ins` instructions read, printed with one `out` per byte as
/// `zygote-guest: string-io insb=<hex> insw=<hex> insd=<hex>`, each element in hex
/// (2, 4 or 8 digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StringIoReport {
    /// Bytes read by `rep insb`.
    pub insb: [u8; INSB_LEN],
    /// Words read by `rep insw`.
    pub insw: [u16; INSW_COUNT],
    /// Dwords read by `rep insd`.
    pub insd: [u32; INSD_COUNT],
}

impl StringIoReport {
    /// The report of a guest that read [`STRING_IO_INPUT`] exactly as single `in`s would.
    pub fn expected() -> Self {
        let input = STRING_IO_INPUT;
        let mut report = Self {
            insb: [0; INSB_LEN],
            insw: [0; INSW_COUNT],
            insd: [0; INSD_COUNT],
        };
        report.insb.copy_from_slice(&input[..INSB_LEN]);
        for (word, &byte) in report.insw.iter_mut().zip(&input[INSB_LEN..]) {
            *word = u16::from(byte);
        }
        for (dword, &byte) in report.insd.iter_mut().zip(&input[INSB_LEN + INSW_COUNT..]) {
            *dword = u32::from(byte);
        }
        report
    }
}

impl fmt::Display for StringIoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STRING_IO_PREFIX}insb=")?;
        self.insb.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        f.write_str(" insw=")?;
        self.insw.iter().try_for_each(|w| write!(f, "{w:04x}"))?;
        f.write_str(" insd=")?;
        self.insd.iter().try_for_each(|d| write!(f, "{d:08x}"))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn the_expected_report_reads_the_input_in_order() {
        let line = format!("{}", StringIoReport::expected());
        assert_eq!(
            line,
            "zygote-guest: string-io insb=6162636465666768696a6b6c6d6e6f70 \
             insw=0071007200730074 insd=00000075000000760000007700000078"
        );
        assert_eq!(INSB_LEN + INSW_COUNT + INSD_COUNT, STRING_IO_INPUT.len());
    }
}
