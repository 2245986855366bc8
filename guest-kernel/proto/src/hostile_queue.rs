//! The `hostile` workload's per-queue cases for virtio-net and virtio-vsock: one buffer of a
//! chain made bad in one way ([`BadBuf`]), on each of the net rx and tx queues and the vsock
//! rx, tx and event queues, and one line per queue ([`HostileQueue`]):
//!
//! `zygote-guest: hostile queue net.rx loop=dropped outside_ram=dropped mmio_gap=dropped
//! huge_len=dropped zero_len=timeout wrong_direction=dropped recovered=yes`

use core::fmt;

use crate::hostile::HostileOutcome;
use crate::lines::Fields;

/// Starts the line formatted by [`HostileQueue`].
pub const HOSTILE_QUEUE_PREFIX: &str = "zygote-guest: hostile queue ";

/// Where [`BadBuf::OutsideRam`] points a buffer: 12 GiB, far past the test guests' RAM.
pub const BAD_OUTSIDE_RAM: u64 = 0x3_0000_0000;
/// Where [`BadBuf::MmioGap`] points a buffer: the first virtio-mmio window, in the 3-4 GiB
/// MMIO gap (a device that wrote there would be writing another device's registers).
pub const BAD_MMIO_GAP: u64 = 0xd000_0000;
/// What [`BadBuf::HugeLen`] claims for a buffer in RAM: a multiple of 4 KiB just below 4 GiB.
pub const BAD_HUGE_LEN: u32 = 0xffff_f000;

/// One thing wrong with one buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadBuf {
    /// `loop`: the chain's last descriptor has NEXT set and points back at its head.
    Loop,
    /// `outside_ram`: the buffer lies at [`BAD_OUTSIDE_RAM`].
    OutsideRam,
    /// `mmio_gap`: the buffer lies at [`BAD_MMIO_GAP`].
    MmioGap,
    /// `huge_len`: the buffer claims [`BAD_HUGE_LEN`] bytes from a RAM address.
    HugeLen,
    /// `zero_len`: the buffer's descriptor is zero bytes long.
    ZeroLen,
    /// `wrong_direction`: device-readable where the device must write, or the reverse.
    WrongDirection,
}

impl BadBuf {
    /// Every case, in the order a [`HostileQueue`] line reports them.
    pub const ALL: [BadBuf; 6] = [
        BadBuf::Loop,
        BadBuf::OutsideRam,
        BadBuf::MmioGap,
        BadBuf::HugeLen,
        BadBuf::ZeroLen,
        BadBuf::WrongDirection,
    ];

    /// The case's key on a [`HostileQueue`] line.
    pub fn key(self) -> &'static str {
        match self {
            BadBuf::Loop => "loop",
            BadBuf::OutsideRam => "outside_ram",
            BadBuf::MmioGap => "mmio_gap",
            BadBuf::HugeLen => "huge_len",
            BadBuf::ZeroLen => "zero_len",
            BadBuf::WrongDirection => "wrong_direction",
        }
    }

    fn index(self) -> usize {
        match self {
            BadBuf::Loop => 0,
            BadBuf::OutsideRam => 1,
            BadBuf::MmioGap => 2,
            BadBuf::HugeLen => 3,
            BadBuf::ZeroLen => 4,
            BadBuf::WrongDirection => 5,
        }
    }
}

/// A queue the cases run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostileQueueId {
    /// `net.rx`: virtio-net receive queue (the device writes).
    NetRx,
    /// `net.tx`: virtio-net transmit queue (the device reads).
    NetTx,
    /// `vsock.rx`: virtio-vsock receive queue (the device writes).
    VsockRx,
    /// `vsock.tx`: virtio-vsock transmit queue (the device reads).
    VsockTx,
    /// `vsock.event`: virtio-vsock event queue (the device writes).
    VsockEvent,
}

impl HostileQueueId {
    /// Every queue, in the order the workload prints them.
    pub const ALL: [HostileQueueId; 5] = [
        HostileQueueId::NetRx,
        HostileQueueId::NetTx,
        HostileQueueId::VsockRx,
        HostileQueueId::VsockTx,
        HostileQueueId::VsockEvent,
    ];

    /// The queue's name on the line.
    pub fn name(self) -> &'static str {
        match self {
            HostileQueueId::NetRx => "net.rx",
            HostileQueueId::NetTx => "net.tx",
            HostileQueueId::VsockRx => "vsock.rx",
            HostileQueueId::VsockTx => "vsock.tx",
            HostileQueueId::VsockEvent => "vsock.event",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        HostileQueueId::ALL.into_iter().find(|q| q.name() == name)
    }
}

/// How one queue's device answered each [`BadBuf`] case, and whether the device worked again
/// after the driver reset it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostileQueue {
    /// The queue.
    pub queue: HostileQueueId,
    /// One outcome per case, in [`BadBuf::ALL`] order. `dropped`: the chain came back with
    /// nothing written and nothing answered it; `rst`: a vsock RST answered it; `ok`: the
    /// device used it normally; `needs_reset`; `timeout`: the device kept the chain.
    pub outcomes: [HostileOutcome; 6],
    /// After the cases the driver reset the device, set it up again, and a good request on
    /// this queue worked (`yes`/`no`).
    pub recovered: bool,
}

impl HostileQueue {
    /// A result with every case at `timeout` and `recovered=no`.
    pub fn new(queue: HostileQueueId) -> Self {
        HostileQueue {
            queue,
            outcomes: [HostileOutcome::Timeout; 6],
            recovered: false,
        }
    }

    /// The outcome of `case`.
    pub fn outcome(&self, case: BadBuf) -> HostileOutcome {
        self.outcomes[case.index()]
    }

    /// Sets the outcome of `case`.
    pub fn set(&mut self, case: BadBuf, outcome: HostileOutcome) {
        self.outcomes[case.index()] = outcome;
    }

    /// Parses one line; `None` when it is not a well-formed hostile queue line.
    pub fn parse_line(line: &str) -> Option<Self> {
        let line = line.trim_end_matches(['\r', '\n']);
        let rest = line.strip_prefix(HOSTILE_QUEUE_PREFIX)?;
        let (name, _) = rest.split_once(' ')?;
        let queue = HostileQueueId::parse(name)?;
        let prefix_len = HOSTILE_QUEUE_PREFIX.len() + name.len() + 1;
        let mut fields = Fields::new(line.get(prefix_len..)?, "")?;
        let mut result = HostileQueue::new(queue);
        for case in BadBuf::ALL {
            result.set(case, HostileOutcome::parse(fields.value(case.key())?)?);
        }
        result.recovered = match fields.value("recovered")? {
            "yes" => true,
            "no" => false,
            _ => return None,
        };
        fields.end()?;
        Some(result)
    }

    /// The first well-formed line for `queue` in a console transcript.
    pub fn find(output: &str, queue: HostileQueueId) -> Option<Self> {
        output
            .lines()
            .filter_map(Self::parse_line)
            .find(|r| r.queue == queue)
    }
}

impl fmt::Display for HostileQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{HOSTILE_QUEUE_PREFIX}{}", self.queue.name())?;
        for case in BadBuf::ALL {
            write!(f, " {}={}", case.key(), self.outcome(case))?;
        }
        let recovered = if self.recovered { "yes" } else { "no" };
        write!(f, " recovered={recovered}")
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    fn sample() -> HostileQueue {
        let mut result = HostileQueue::new(HostileQueueId::NetRx);
        for case in BadBuf::ALL {
            result.set(case, HostileOutcome::Dropped);
        }
        result.set(BadBuf::ZeroLen, HostileOutcome::Timeout);
        result.recovered = true;
        result
    }

    #[test]
    fn queue_line_round_trips() {
        let result = sample();
        let line = format!("{result}");
        assert_eq!(
            line,
            "zygote-guest: hostile queue net.rx loop=dropped outside_ram=dropped \
             mmio_gap=dropped huge_len=dropped zero_len=timeout wrong_direction=dropped \
             recovered=yes"
        );
        assert_eq!(HostileQueue::parse_line(&line), Some(result));
        assert_eq!(
            HostileQueue::parse_line(&format!("{line}\r\n")),
            Some(result)
        );
        let event = HostileQueue {
            queue: HostileQueueId::VsockEvent,
            ..result
        };
        let out = format!("zygote-guest: ready\n{result}\n{event}\n");
        assert_eq!(
            HostileQueue::find(&out, HostileQueueId::VsockEvent),
            Some(event)
        );
        assert_eq!(HostileQueue::find(&out, HostileQueueId::NetTx), None);
    }

    #[test]
    fn every_queue_name_round_trips() {
        for queue in HostileQueueId::ALL {
            let result = HostileQueue { queue, ..sample() };
            assert_eq!(HostileQueue::parse_line(&format!("{result}")), Some(result));
        }
    }

    #[test]
    fn malformed_queue_lines_are_rejected() {
        let good = format!("{}", sample());
        for bad in [
            good.replace("net.rx", "net.foo"),
            good.replace("net.rx ", ""),
            good.replace("loop=", "looped="),
            good.replace("recovered=yes", "recovered=1"),
            good.replace(" recovered=yes", ""),
            good.replace("mmio_gap=dropped ", ""),
            format!("{good} extra"),
        ] {
            assert_eq!(HostileQueue::parse_line(&bad), None, "{bad}");
        }
    }
}
