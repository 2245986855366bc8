//! What the `hostile` workload prints: how each device answered the requests no well-behaved
//! driver sends. One line per device, `key=outcome` per case, in a fixed order:
//!
//! - [`HostileBlk`]: `zygote-guest: hostile blk outside_ram=ioerr past_end=ioerr
//!   wrong_direction=ioerr zero_len=ioerr zero_data=ok huge_len=ioerr loop=needs_reset
//!   good_reads=7 recovered=yes`
//! - [`HostileVsock`]: `zygote-guest: hostile vsock short_payload=rst unknown_conn=rst`

use core::fmt;

use crate::lines::Fields;
use crate::workload::parse_decimal;

/// Starts the line formatted by [`HostileBlk`].
pub const HOSTILE_BLK_PREFIX: &str = "zygote-guest: hostile blk ";

/// Starts the line formatted by [`HostileVsock`].
pub const HOSTILE_VSOCK_PREFIX: &str = "zygote-guest: hostile vsock ";

/// How a device answered one hostile request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostileOutcome {
    /// `ok`: completed with virtio-blk status OK; on net and vsock queues, the device used
    /// the chain as a good one (see `HostileQueue`).
    Ok,
    /// `ioerr`: completed with virtio-blk status IOERR.
    IoErr,
    /// `unsupp`: completed with virtio-blk status UNSUPP.
    Unsupp,
    /// `status:<n>`: completed with any other status byte (the guest puts 255 there before
    /// submitting, so `status:255` is a chain completed without a status and without
    /// DEVICE_NEEDS_RESET).
    Status(u8),
    /// `needs_reset`: completed, and the device set DEVICE_NEEDS_RESET in its status register.
    NeedsReset,
    /// `dropped`: the device gave the chain back with nothing written, and nothing ever
    /// answered it (vsock packets, net frames).
    Dropped,
    /// `rst`: the device answered with RST (vsock).
    Rst,
    /// `timeout`: the device never gave the request back within the wait (a device may keep
    /// a chain it cannot use, as virtio-net does with a receive chain too small for a frame).
    Timeout,
}

impl HostileOutcome {
    /// Parses the value written by `Display`.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "ok" => HostileOutcome::Ok,
            "ioerr" => HostileOutcome::IoErr,
            "unsupp" => HostileOutcome::Unsupp,
            "needs_reset" => HostileOutcome::NeedsReset,
            "dropped" => HostileOutcome::Dropped,
            "rst" => HostileOutcome::Rst,
            "timeout" => HostileOutcome::Timeout,
            _ => HostileOutcome::Status(parse_decimal(value.strip_prefix("status:")?)?),
        })
    }

    /// The outcome of a virtio-blk status byte.
    pub fn from_blk_status(status: u8) -> Self {
        match status {
            0 => HostileOutcome::Ok,
            1 => HostileOutcome::IoErr,
            2 => HostileOutcome::Unsupp,
            other => HostileOutcome::Status(other),
        }
    }
}

impl fmt::Display for HostileOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostileOutcome::Ok => f.write_str("ok"),
            HostileOutcome::IoErr => f.write_str("ioerr"),
            HostileOutcome::Unsupp => f.write_str("unsupp"),
            HostileOutcome::Status(status) => write!(f, "status:{status}"),
            HostileOutcome::NeedsReset => f.write_str("needs_reset"),
            HostileOutcome::Dropped => f.write_str("dropped"),
            HostileOutcome::Rst => f.write_str("rst"),
            HostileOutcome::Timeout => f.write_str("timeout"),
        }
    }
}

/// The virtio-blk cases, each a read request (header, data, status) with one thing wrong,
/// followed by a good read of sector 0 that must return what it returned before the first
/// case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostileBlk {
    /// The data buffer lies outside guest RAM (at 12 GiB).
    pub outside_ram: HostileOutcome,
    /// The read starts at the disk's capacity (one sector past the end).
    pub past_end: HostileOutcome,
    /// The header is device-writable.
    pub wrong_direction: HostileOutcome,
    /// The header descriptor is zero bytes long.
    pub zero_len: HostileOutcome,
    /// The data descriptor is zero bytes long (a read of nothing).
    pub zero_data: HostileOutcome,
    /// The data descriptor claims 0xffff_f000 bytes.
    pub huge_len: HostileOutcome,
    /// The status descriptor's `next` points back at the header: a loop (key `loop`).
    pub looped: HostileOutcome,
    /// How many of the good reads after the cases returned sector 0 unchanged (one per case).
    pub good_reads: u32,
    /// After `loop`, the driver reset the device (status 0), set it up again, and a good read
    /// worked (`yes`/`no`).
    pub recovered: bool,
}

impl HostileBlk {
    /// How many cases the line reports (and good reads it counts).
    pub const CASES: u32 = 7;

    /// Parses one line; `None` when it is not a well-formed hostile blk line.
    pub fn parse_line(line: &str) -> Option<Self> {
        let mut fields = Fields::new(line, HOSTILE_BLK_PREFIX)?;
        let mut outcome = |key| HostileOutcome::parse(fields.value(key)?);
        let mut result = HostileBlk {
            outside_ram: outcome("outside_ram")?,
            past_end: outcome("past_end")?,
            wrong_direction: outcome("wrong_direction")?,
            zero_len: outcome("zero_len")?,
            zero_data: outcome("zero_data")?,
            huge_len: outcome("huge_len")?,
            looped: outcome("loop")?,
            good_reads: 0,
            recovered: false,
        };
        result.good_reads = parse_decimal(fields.value("good_reads")?)?;
        result.recovered = parse_yes_no(fields.value("recovered")?)?;
        fields.end()?;
        Some(result)
    }

    /// The first well-formed hostile blk line in a console transcript.
    pub fn find(output: &str) -> Option<Self> {
        output.lines().find_map(Self::parse_line)
    }
}

impl fmt::Display for HostileBlk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{HOSTILE_BLK_PREFIX}outside_ram={} past_end={} wrong_direction={} zero_len={} \
             zero_data={} huge_len={} loop={} good_reads={} recovered={}",
            self.outside_ram,
            self.past_end,
            self.wrong_direction,
            self.zero_len,
            self.zero_data,
            self.huge_len,
            self.looped,
            self.good_reads,
            yes_no(self.recovered),
        )
    }
}

/// The virtio-vsock cases, each a packet on the transmit queue to a connection that does not
/// exist, sent in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostileVsock {
    /// An RW whose header claims 4096 bytes of payload while the chain carries 16.
    pub short_payload: HostileOutcome,
    /// A well-formed RW on a connection the host does not know.
    pub unknown_conn: HostileOutcome,
}

impl HostileVsock {
    /// Parses one line; `None` when it is not a well-formed hostile vsock line.
    pub fn parse_line(line: &str) -> Option<Self> {
        let mut fields = Fields::new(line, HOSTILE_VSOCK_PREFIX)?;
        let result = HostileVsock {
            short_payload: HostileOutcome::parse(fields.value("short_payload")?)?,
            unknown_conn: HostileOutcome::parse(fields.value("unknown_conn")?)?,
        };
        fields.end()?;
        Some(result)
    }

    /// The first well-formed hostile vsock line in a console transcript.
    pub fn find(output: &str) -> Option<Self> {
        output.lines().find_map(Self::parse_line)
    }
}

impl fmt::Display for HostileVsock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{HOSTILE_VSOCK_PREFIX}short_payload={} unknown_conn={}",
            self.short_payload, self.unknown_conn
        )
    }
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

fn parse_yes_no(value: &str) -> Option<bool> {
    match value {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    const BLK: HostileBlk = HostileBlk {
        outside_ram: HostileOutcome::IoErr,
        past_end: HostileOutcome::IoErr,
        wrong_direction: HostileOutcome::Unsupp,
        zero_len: HostileOutcome::IoErr,
        zero_data: HostileOutcome::Ok,
        huge_len: HostileOutcome::Status(255),
        looped: HostileOutcome::NeedsReset,
        good_reads: 7,
        recovered: true,
    };

    #[test]
    fn blk_line_round_trips() {
        let line = format!("{BLK}");
        assert_eq!(
            line,
            "zygote-guest: hostile blk outside_ram=ioerr past_end=ioerr wrong_direction=unsupp \
             zero_len=ioerr zero_data=ok huge_len=status:255 loop=needs_reset good_reads=7 \
             recovered=yes"
        );
        assert_eq!(HostileBlk::parse_line(&line), Some(BLK));
        assert_eq!(HostileBlk::parse_line(&format!("{line}\r\n")), Some(BLK));
        let failed = HostileBlk {
            looped: HostileOutcome::Timeout,
            good_reads: 0,
            recovered: false,
            ..BLK
        };
        let out = format!("zygote-guest: ready\n{failed}\n");
        assert_eq!(HostileBlk::find(&out), Some(failed));
    }

    #[test]
    fn vsock_line_round_trips() {
        let result = HostileVsock {
            short_payload: HostileOutcome::Dropped,
            unknown_conn: HostileOutcome::Rst,
        };
        let line = format!("{result}");
        assert_eq!(
            line,
            "zygote-guest: hostile vsock short_payload=dropped unknown_conn=rst"
        );
        assert_eq!(HostileVsock::find(&format!("x\n{line}\n")), Some(result));
        assert_eq!(HostileVsock::find(&format!("{BLK}")), None);
    }

    #[test]
    fn every_outcome_round_trips() {
        for outcome in [
            HostileOutcome::Ok,
            HostileOutcome::IoErr,
            HostileOutcome::Unsupp,
            HostileOutcome::Status(0),
            HostileOutcome::Status(255),
            HostileOutcome::NeedsReset,
            HostileOutcome::Dropped,
            HostileOutcome::Rst,
            HostileOutcome::Timeout,
        ] {
            assert_eq!(HostileOutcome::parse(&format!("{outcome}")), Some(outcome));
        }
        assert_eq!(HostileOutcome::from_blk_status(1), HostileOutcome::IoErr);
        assert_eq!(
            HostileOutcome::from_blk_status(7),
            HostileOutcome::Status(7)
        );
    }

    #[test]
    fn malformed_lines_are_rejected() {
        let good = format!("{BLK}");
        for bad in [
            good.replace("loop=", "looped="),
            good.replace("=ioerr", "=IOERR"),
            good.replace("recovered=yes", "recovered=1"),
            good.replace("good_reads=7", "good_reads=-1"),
            good.replace("status:255", "status:256"),
            good.replace(" recovered=yes", ""),
            format!("{good} extra"),
            good.replace("hostile blk", "hostile vsock"),
        ] {
            assert_eq!(HostileBlk::parse_line(&bad), None, "{bad}");
        }
        for bad in [
            "zygote-guest: hostile vsock short_payload=dropped",
            "zygote-guest: hostile vsock unknown_conn=rst short_payload=dropped",
            "zygote-guest: hostile vsock short_payload=gone unknown_conn=rst",
        ] {
            assert_eq!(HostileVsock::parse_line(bad), None, "{bad}");
        }
    }
}
