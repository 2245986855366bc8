//! The fields of `Exec` and of its responses: packed string lists, output streams, exit status.

use super::codec::{Reader, Writer};
use super::DecodeError;

/// A list of byte strings packed as each string followed by a NUL byte (argv and environment
/// entries cannot contain NUL, so the packing is exact). Empty bytes are the empty list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strings<'a>(&'a [u8]);

impl<'a> Strings<'a> {
    /// The empty list.
    pub const EMPTY: Strings<'static> = Strings(b"");

    /// Wraps packed bytes: `None` unless they are empty or end with NUL.
    pub fn new(packed: &'a [u8]) -> Option<Self> {
        match packed.last() {
            None | Some(0) => Some(Strings(packed)),
            Some(_) => None,
        }
    }

    /// The packed bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Whether the list has no strings.
    pub const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The strings, without their NUL.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        // Every piece ends with the NUL `new` checked for.
        self.0
            .split_inclusive(|&b| b == 0)
            .map(|piece| &piece[..piece.len() - 1])
    }
}

/// What `Exec` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exec<'a> {
    /// The program (searched in `PATH` when it has no `/`) and its arguments: at least one.
    pub argv: Strings<'a>,
    /// `KEY=VALUE` entries added to the agent's environment.
    pub env: Strings<'a>,
    /// Working directory; empty for the agent's own (`/`).
    pub cwd: &'a [u8],
    /// Bytes written to the program's standard input, which is then closed.
    pub stdin: &'a [u8],
    /// Milliseconds before the agent kills the program's process group (0: no limit).
    pub timeout_ms: u32,
}

impl<'a> Exec<'a> {
    pub(super) fn body_len(&self) -> usize {
        4 + 4 + self.argv.0.len() + 4 + self.env.0.len() + 4 + self.cwd.len() + self.stdin.len()
    }

    pub(super) fn valid(&self) -> bool {
        !self.argv.is_empty() && !self.cwd.contains(&0)
    }

    pub(super) fn write(&self, w: &mut Writer<'_>) {
        w.u32(self.timeout_ms);
        w.sized(self.argv.0);
        w.sized(self.env.0);
        w.sized(self.cwd);
        w.bytes(self.stdin);
    }

    pub(super) fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let timeout_ms = r.u32()?;
        let argv = Strings::new(r.sized()?).ok_or(DecodeError::Invalid)?;
        let env = Strings::new(r.sized()?).ok_or(DecodeError::Invalid)?;
        Ok(Exec {
            timeout_ms,
            argv,
            env,
            cwd: r.sized()?,
            stdin: r.rest(),
        })
    }
}

/// Which output of a program bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OutputStream {
    /// Standard output (fd 1).
    Stdout = 1,
    /// Standard error (fd 2).
    Stderr = 2,
}

impl OutputStream {
    pub(super) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            1 => Ok(OutputStream::Stdout),
            2 => Ok(OutputStream::Stderr),
            _ => Err(DecodeError::Invalid),
        }
    }
}

/// How a program ended (POSIX `wait` status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code (0-255).
    Exited(i32),
    /// A signal ended it (SIGKILL is 9).
    Signaled(u32),
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub const fn success(&self) -> bool {
        matches!(self, ExitStatus::Exited(0))
    }

    pub(super) fn write(&self, w: &mut Writer<'_>) {
        match *self {
            ExitStatus::Exited(code) => {
                w.u8(0);
                w.u32(code as u32);
            }
            ExitStatus::Signaled(signal) => {
                w.u8(1);
                w.u32(signal);
            }
        }
    }

    pub(super) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match (r.u8()?, r.u32()?) {
            (0, code) => Ok(ExitStatus::Exited(code as i32)),
            (1, signal) => Ok(ExitStatus::Signaled(signal)),
            _ => Err(DecodeError::Invalid),
        }
    }
}

/// The first field of every ok response to `Exec`: which event it is.
pub(super) mod event {
    pub(in super::super) const STARTED: u8 = 0;
    pub(in super::super) const OUTPUT: u8 = 1;
    pub(in super::super) const EXITED: u8 = 2;
}
