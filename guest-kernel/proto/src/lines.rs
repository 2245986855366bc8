//! Lines the guest prints on COM1, with formatting (guest side) and parsing (host side).
//!
//! Every line starts with [`LINE_PREFIX`] and ends with `\n`. The `Display` impls here format a
//! line without its `\n`; `parse_line` accepts a line with or without a trailing `\r`/`\n`.

use core::fmt;

use crate::workload::{parse_decimal, parse_hex};

/// What every guest line starts with.
pub const LINE_PREFIX: &str = "zygote-guest: ";

/// Printed once the guest has booted and parsed a known workload (before running it).
pub const READY_LINE: &str = "zygote-guest: ready\n";

/// Starts the line printed on a Rust panic, followed by its location and message.
pub const PANIC_PREFIX: &str = "zygote-guest: panic ";

/// Starts the line printed when a workload cannot run, followed by the reason.
pub const ERROR_PREFIX: &str = "zygote-guest: error ";

/// Starts the line formatted by [`ExceptionReport`].
pub const EXCEPTION_PREFIX: &str = "zygote-guest: exception ";

/// Starts the line formatted by [`TouchResult`].
pub const TOUCH_PREFIX: &str = "zygote-guest: touch ";

/// The result of a `touch` workload:
/// `zygote-guest: touch addr=0x<hex> mib=<n> checksum=0x<16 hex digits>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TouchResult {
    /// Guest-physical address of the first word written.
    pub addr: u64,
    /// How many MiB were written and read back.
    pub mib: u32,
    /// The [`crate::Checksum`] of what was read back.
    pub checksum: u64,
}

impl TouchResult {
    /// Parses one line; `None` when it is not a well-formed touch line.
    pub fn parse_line(line: &str) -> Option<Self> {
        let mut fields = Fields::new(line, TOUCH_PREFIX)?;
        let result = TouchResult {
            addr: fields.hex("addr")?,
            mib: parse_decimal(fields.value("mib")?)?,
            checksum: fields.hex("checksum")?,
        };
        fields.end()?;
        Some(result)
    }

    /// The first well-formed touch line in a console transcript.
    pub fn find(output: &str) -> Option<Self> {
        output.lines().find_map(Self::parse_line)
    }
}

impl fmt::Display for TouchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOUCH_PREFIX}addr={:#x} mib={} checksum=0x{:016x}",
            self.addr, self.mib, self.checksum
        )
    }
}

/// What the guest's exception handler prints before reporting the vector on the fault port:
/// `zygote-guest: exception vector=<n> error=0x<hex> rip=0x<hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExceptionReport {
    /// The exception vector (0–31).
    pub vector: u8,
    /// The error code the CPU pushed, or 0 for exceptions without one.
    pub error: u64,
    /// The faulting instruction's address.
    pub rip: u64,
}

impl ExceptionReport {
    /// Parses one line; `None` when it is not a well-formed exception line.
    pub fn parse_line(line: &str) -> Option<Self> {
        let mut fields = Fields::new(line, EXCEPTION_PREFIX)?;
        let report = ExceptionReport {
            vector: parse_decimal(fields.value("vector")?)?,
            error: fields.hex("error")?,
            rip: fields.hex("rip")?,
        };
        fields.end()?;
        Some(report)
    }

    /// The first well-formed exception line in a console transcript.
    pub fn find(output: &str) -> Option<Self> {
        output.lines().find_map(Self::parse_line)
    }
}

impl fmt::Display for ExceptionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{EXCEPTION_PREFIX}vector={} error={:#x} rip={:#x}",
            self.vector, self.error, self.rip
        )
    }
}

/// `key=value` fields separated by single spaces after a fixed prefix.
pub(crate) struct Fields<'a> {
    words: core::str::Split<'a, char>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(line: &'a str, prefix: &str) -> Option<Self> {
        let line = line.trim_end_matches(['\r', '\n']);
        Some(Fields {
            words: line.strip_prefix(prefix)?.split(' '),
        })
    }

    pub(crate) fn value(&mut self, key: &str) -> Option<&'a str> {
        self.words.next()?.strip_prefix(key)?.strip_prefix('=')
    }

    pub(crate) fn hex(&mut self, key: &str) -> Option<u64> {
        parse_hex(self.value(key)?.strip_prefix("0x")?)
    }

    pub(crate) fn end(mut self) -> Option<()> {
        match self.words.next() {
            None => Some(()),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn touch_line_round_trips() {
        let result = TouchResult {
            addr: 0x20_0000,
            mib: 64,
            checksum: 0xab,
        };
        let line = format!("{result}");
        assert_eq!(
            line,
            "zygote-guest: touch addr=0x200000 mib=64 checksum=0x00000000000000ab"
        );
        assert_eq!(TouchResult::parse_line(&line), Some(result));
        assert_eq!(
            TouchResult::parse_line(&format!("{line}\r\n")),
            Some(result)
        );
    }

    #[test]
    fn touch_line_found_in_a_transcript() {
        let out = "zygote-guest: ready\nzygote-guest: touch addr=0x400000 mib=1 \
                   checksum=0xffffffffffffffff\n";
        let found = TouchResult::find(out).unwrap();
        assert_eq!(
            found,
            TouchResult {
                addr: 0x40_0000,
                mib: 1,
                checksum: u64::MAX
            }
        );
        assert_eq!(TouchResult::find(READY_LINE), None);
    }

    #[test]
    fn malformed_touch_lines_are_rejected() {
        for bad in [
            "zygote-guest: touch addr=0x1 mib=1",
            "zygote-guest: touch addr=1 mib=1 checksum=0x1",
            "zygote-guest: touch addr=0x1 mib=0x1 checksum=0x1",
            "zygote-guest: touch mib=1 addr=0x1 checksum=0x1",
            "zygote-guest: touch addr=0x1 mib=1 checksum=0x1 extra",
            "zygote-guest: touch addr=0x1  mib=1 checksum=0x1",
            "touch addr=0x1 mib=1 checksum=0x1",
        ] {
            assert_eq!(TouchResult::parse_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn exception_line_round_trips() {
        let report = ExceptionReport {
            vector: 14,
            error: 0x4,
            rip: 0x10_2345,
        };
        let line = format!("{report}");
        assert_eq!(
            line,
            "zygote-guest: exception vector=14 error=0x4 rip=0x102345"
        );
        assert_eq!(ExceptionReport::parse_line(&line), Some(report));
        let zero = ExceptionReport {
            vector: 0,
            error: 0,
            rip: 0,
        };
        assert_eq!(
            format!("{zero}"),
            "zygote-guest: exception vector=0 error=0x0 rip=0x0"
        );
        assert_eq!(
            ExceptionReport::find(&format!("junk\n{line}\n")),
            Some(report)
        );
        assert_eq!(
            ExceptionReport::parse_line("zygote-guest: exception vector=256 error=0x0 rip=0x0"),
            None
        );
    }

    #[test]
    fn ready_line_has_the_prefix() {
        assert!(READY_LINE.starts_with(LINE_PREFIX));
        assert!(PANIC_PREFIX.starts_with(LINE_PREFIX));
        assert!(ERROR_PREFIX.starts_with(LINE_PREFIX));
    }
}
