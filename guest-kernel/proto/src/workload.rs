//! What the guest does after booting, chosen on the kernel command line.

use core::fmt;

/// The command-line key selecting the workload: `zygote.workload=<value>`. Absent means
/// [`Workload::Ready`]; when it appears more than once, the last one wins.
pub const WORKLOAD_KEY: &str = "zygote.workload=";

/// An exception the `fault:<kind>` workload raises on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// `ud`: executes `ud2` (#UD, vector 6).
    InvalidOpcode,
    /// `gp`: reads a non-canonical address (#GP, vector 13).
    GeneralProtection,
    /// `pf`: reads [`crate::UNMAPPED_ADDR`], past the identity map (#PF, vector 14).
    PageFault,
    /// `de`: divides by zero (#DE, vector 0).
    DivideError,
    /// `triple`: zeroes the IDT, then executes `ud2`: #UD, #NP, #DF, then a triple fault, which
    /// the host sees as a shutdown rather than a fault report.
    TripleFault,
}

impl FaultKind {
    /// Every kind, in a fixed order (handy for host tests that try them all).
    pub const ALL: [FaultKind; 5] = [
        FaultKind::InvalidOpcode,
        FaultKind::GeneralProtection,
        FaultKind::PageFault,
        FaultKind::DivideError,
        FaultKind::TripleFault,
    ];

    /// The name used on the command line (`fault:<name>`).
    pub const fn name(self) -> &'static str {
        match self {
            FaultKind::InvalidOpcode => "ud",
            FaultKind::GeneralProtection => "gp",
            FaultKind::PageFault => "pf",
            FaultKind::DivideError => "de",
            FaultKind::TripleFault => "triple",
        }
    }

    /// The kind with this command-line name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The vector the guest reports on the fault port, or `None` for a triple fault (no report:
    /// the VM shuts down).
    pub const fn expected_vector(self) -> Option<u8> {
        match self {
            FaultKind::InvalidOpcode => Some(6),
            FaultKind::GeneralProtection => Some(13),
            FaultKind::PageFault => Some(14),
            FaultKind::DivideError => Some(0),
            FaultKind::TripleFault => None,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The guest's workload: the value of `zygote.workload=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// `ready`: print [`crate::READY_LINE`] and exit with code 0.
    Ready,
    /// `exit:<code>`: print the ready line and exit with `code` (decimal).
    Exit(u32),
    /// `touch:<mib>:0x<pattern>`: print the ready line, write `mib` MiB of the pattern (see
    /// [`crate::pattern_word`]) from the first [`crate::TOUCH_ALIGN`]-aligned address after the
    /// kernel, read it back, print a [`crate::TouchResult`] line and exit with code 0.
    Touch {
        /// How many MiB to write and read back.
        mib: u32,
        /// The pattern, written in hex with a `0x` prefix.
        pattern: u64,
    },
    /// `fault:<kind>`: print the ready line, then raise an exception on purpose.
    Fault(FaultKind),
    /// `spin`: print the ready line, then spin forever in user mode.
    Spin,
    /// `agent`: bring up the virtio devices on the command line, print the ready line, then
    /// serve the [`crate::agent`] protocol on vsock port [`crate::AGENT_PORT`] until told to
    /// exit.
    Agent,
    /// `string-io`: print the ready line, wait for COM1's receive buffer to hold
    /// [`crate::STRING_IO_INPUT`], read it with `rep insb`, `rep insw` and `rep insd` and print
    /// a [`crate::StringIoReport`], write [`crate::STRING_IO_OUT_LINES`] with `rep outsb`,
    /// `rep outsw` and `rep outsd`, then exit with code 0.
    StringIo,
    /// `hostile`: bring up the devices as `agent` does, send the virtio-blk device the bad
    /// requests [`crate::HostileBlk`] lists and the vsock device the bad packets
    /// [`crate::HostileVsock`] lists, print one line for each device, then carry on exactly as
    /// `agent` (ready line, agent protocol) so the host can check every device still works.
    Hostile,
}

/// A `zygote.workload=` value that is not a [`Workload`]; displays as
/// `unknown workload <value>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownWorkload<'a>(pub &'a str);

impl fmt::Display for UnknownWorkload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown workload {}", self.0)
    }
}

impl Workload {
    /// Parses a `zygote.workload=` value (without the key).
    pub fn parse(value: &str) -> Result<Self, UnknownWorkload<'_>> {
        Self::parse_known(value).ok_or(UnknownWorkload(value))
    }

    /// Finds `zygote.workload=` among the whitespace-separated words of a kernel command line
    /// and parses its value; [`Workload::Ready`] when the key is absent.
    pub fn from_cmdline(cmdline: &str) -> Result<Self, UnknownWorkload<'_>> {
        let value = cmdline
            .split_ascii_whitespace()
            .rev()
            .find_map(|word| word.strip_prefix(WORKLOAD_KEY));
        match value {
            Some(value) => Self::parse(value),
            None => Ok(Workload::Ready),
        }
    }

    /// Displays as the whole command-line word, `zygote.workload=<value>`.
    pub fn cmdline_arg(&self) -> CmdlineArg<'_> {
        CmdlineArg(self)
    }

    fn parse_known(value: &str) -> Option<Self> {
        let (name, rest) = match value.split_once(':') {
            Some((name, rest)) => (name, Some(rest)),
            None => (value, None),
        };
        match (name, rest) {
            ("ready", None) => Some(Workload::Ready),
            ("spin", None) => Some(Workload::Spin),
            ("agent", None) => Some(Workload::Agent),
            ("hostile", None) => Some(Workload::Hostile),
            ("string-io", None) => Some(Workload::StringIo),
            ("exit", Some(code)) => parse_decimal(code).map(Workload::Exit),
            ("fault", Some(kind)) => FaultKind::from_name(kind).map(Workload::Fault),
            ("touch", Some(args)) => {
                let (mib, pattern) = args.split_once(':')?;
                let mib = parse_decimal(mib)?;
                let pattern = pattern
                    .strip_prefix("0x")
                    .or_else(|| pattern.strip_prefix("0X"))?;
                Some(Workload::Touch {
                    mib,
                    pattern: parse_hex(pattern)?,
                })
            }
            _ => None,
        }
    }
}

impl fmt::Display for Workload {
    /// Formats as the `zygote.workload=` value that [`Workload::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Ready => f.write_str("ready"),
            Workload::Exit(code) => write!(f, "exit:{code}"),
            Workload::Touch { mib, pattern } => write!(f, "touch:{mib}:{pattern:#x}"),
            Workload::Fault(kind) => write!(f, "fault:{kind}"),
            Workload::Spin => f.write_str("spin"),
            Workload::Agent => f.write_str("agent"),
            Workload::Hostile => f.write_str("hostile"),
            Workload::StringIo => f.write_str("string-io"),
        }
    }
}

/// A [`Workload`] displayed as a whole command-line word; see [`Workload::cmdline_arg`].
#[derive(Debug, Clone, Copy)]
pub struct CmdlineArg<'a>(&'a Workload);

impl fmt::Display for CmdlineArg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{WORKLOAD_KEY}{}", self.0)
    }
}

/// Strict decimal: one or more ASCII digits, nothing else (no sign, no spaces).
pub(crate) fn parse_decimal<T: core::str::FromStr>(digits: &str) -> Option<T> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Strict hex digits without a prefix: one or more, nothing else.
pub(crate) fn parse_hex(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn parses_every_workload() {
        assert_eq!(Workload::parse("ready"), Ok(Workload::Ready));
        assert_eq!(Workload::parse("spin"), Ok(Workload::Spin));
        assert_eq!(Workload::parse("agent"), Ok(Workload::Agent));
        assert_eq!(Workload::parse("hostile"), Ok(Workload::Hostile));
        assert_eq!(Workload::parse("string-io"), Ok(Workload::StringIo));
        assert_eq!(Workload::parse("exit:0"), Ok(Workload::Exit(0)));
        assert_eq!(
            Workload::parse("exit:4294967295"),
            Ok(Workload::Exit(u32::MAX))
        );
        assert_eq!(
            Workload::parse("touch:64:0xDeadBeef"),
            Ok(Workload::Touch {
                mib: 64,
                pattern: 0xdead_beef
            })
        );
        for kind in FaultKind::ALL {
            assert_eq!(
                Workload::parse(&format!("fault:{kind}")),
                Ok(Workload::Fault(kind))
            );
        }
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "Ready",
            "ready:1",
            "spin:",
            "exit",
            "exit:",
            "exit:-1",
            "exit:+1",
            "exit:4294967296",
            "exit:0x10",
            "touch:1",
            "touch:1:ff",
            "touch:1:0x",
            "touch:x:0x1",
            "touch:1:0x1:2",
            "touch:1:0x10000000000000000",
            "fault:",
            "fault:nmi",
            "reboot",
            "agent:1",
            "hostile:1",
            "Hostile",
            "string-io:1",
            "string_io",
        ] {
            assert_eq!(Workload::parse(bad), Err(UnknownWorkload(bad)), "{bad:?}");
        }
        assert_eq!(format!("{}", UnknownWorkload("x")), "unknown workload x");
    }

    #[test]
    fn display_round_trips() {
        let all = [
            Workload::Ready,
            Workload::Spin,
            Workload::Agent,
            Workload::Hostile,
            Workload::StringIo,
            Workload::Exit(7),
            Workload::Touch {
                mib: 3,
                pattern: u64::MAX,
            },
            Workload::Touch { mib: 0, pattern: 0 },
            Workload::Fault(FaultKind::TripleFault),
        ];
        for workload in all {
            let text = format!("{workload}");
            assert_eq!(Workload::parse(&text), Ok(workload), "{text}");
            let arg = format!("{}", workload.cmdline_arg());
            assert_eq!(Workload::from_cmdline(&arg), Ok(workload), "{arg}");
        }
        assert_eq!(
            format!(
                "{}",
                Workload::Touch {
                    mib: 2,
                    pattern: 0xab
                }
            ),
            "touch:2:0xab"
        );
    }

    #[test]
    fn finds_the_key_on_a_command_line() {
        assert_eq!(Workload::from_cmdline(""), Ok(Workload::Ready));
        assert_eq!(
            Workload::from_cmdline("console=ttyS0 panic=1"),
            Ok(Workload::Ready)
        );
        assert_eq!(
            Workload::from_cmdline("console=ttyS0 zygote.workload=exit:5\tquiet"),
            Ok(Workload::Exit(5))
        );
        assert_eq!(
            Workload::from_cmdline("zygote.workload=spin zygote.workload=exit:1"),
            Ok(Workload::Exit(1))
        );
        assert_eq!(
            Workload::from_cmdline("xzygote.workload=spin"),
            Ok(Workload::Ready)
        );
        assert_eq!(
            Workload::from_cmdline("zygote.workload=nope"),
            Err(UnknownWorkload("nope"))
        );
    }

    #[test]
    fn fault_vectors() {
        assert_eq!(FaultKind::DivideError.expected_vector(), Some(0));
        assert_eq!(FaultKind::InvalidOpcode.expected_vector(), Some(6));
        assert_eq!(FaultKind::GeneralProtection.expected_vector(), Some(13));
        assert_eq!(FaultKind::PageFault.expected_vector(), Some(14));
        assert_eq!(FaultKind::TripleFault.expected_vector(), None);
    }
}
