//! Why bytes are not a frame, and why a message could not be encoded.

use core::fmt;

/// Why bytes are not (yet) a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is not complete yet: read more bytes and try again.
    Incomplete,
    /// The length prefix exceeds [`MAX_FRAME`](super::MAX_FRAME) (or is 0): the stream cannot be trusted further.
    BadLength(u32),
    /// The body's opcode is unknown (requests) or its status/opcode is unknown (responses).
    UnknownOpcode(u8),
    /// The frame is complete but its body is not valid for its opcode.
    Invalid,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Incomplete => f.write_str("incomplete frame"),
            DecodeError::BadLength(len) => {
                write!(f, "frame length {len} is 0 or above the maximum")
            }
            DecodeError::UnknownOpcode(op) => write!(f, "unknown opcode or status {op}"),
            DecodeError::Invalid => f.write_str("invalid frame body"),
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is shorter than the frame: `needed` bytes.
    BufferTooSmall {
        /// Bytes the whole frame takes.
        needed: usize,
    },
    /// A field breaks the protocol's limits (too much data, a partial sector).
    Invalid,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: {needed} bytes needed")
            }
            EncodeError::Invalid => f.write_str("message breaks the protocol's limits"),
        }
    }
}
