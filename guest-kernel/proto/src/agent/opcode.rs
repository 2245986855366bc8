//! What an operation is on the wire, and why the agent refused or failed one.

use core::fmt;

/// What an operation is, on the wire (the first byte of a request body, the second of an ok
/// response body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Opcode {
    Ping = 1,
    Echo = 2,
    Touch = 3,
    Checksum = 4,
    DiskWrite = 5,
    DiskRead = 6,
    DiskFlush = 7,
    DiskId = 8,
    NetSend = 9,
    NetRecv = 10,
    CounterAdd = 11,
    CounterGet = 12,
    Sink = 13,
    Source = 14,
    ConnectHost = 15,
    Exit = 16,
    Hello = 17,
    Exec = 18,
    Signal = 19,
    WriteFile = 20,
    ReadFile = 21,
    Stat = 22,
    List = 23,
    Remove = 24,
    Mkdir = 25,
    Ports = 26,
    WaitPort = 27,
    Bridge = 28,
    Identity = 29,
}

impl Opcode {
    /// The opcode with this wire value.
    pub const fn from_u8(value: u8) -> Option<Self> {
        use Opcode::*;
        Some(match value {
            1 => Ping,
            2 => Echo,
            3 => Touch,
            4 => Checksum,
            5 => DiskWrite,
            6 => DiskRead,
            7 => DiskFlush,
            8 => DiskId,
            9 => NetSend,
            10 => NetRecv,
            11 => CounterAdd,
            12 => CounterGet,
            13 => Sink,
            14 => Source,
            15 => ConnectHost,
            16 => Exit,
            17 => Hello,
            18 => Exec,
            19 => Signal,
            20 => WriteFile,
            21 => ReadFile,
            22 => Stat,
            23 => List,
            24 => Remove,
            25 => Mkdir,
            26 => Ports,
            27 => WaitPort,
            28 => Bridge,
            29 => Identity,
            _ => return None,
        })
    }
}

/// Why the agent refused or failed a request: the nonzero status byte of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCode {
    /// The request frame could not be decoded (wrong length for its opcode, bad field).
    Malformed = 1,
    /// The length prefix exceeded [`MAX_FRAME`](super::MAX_FRAME); the guest closes the connection after this.
    FrameTooLarge = 2,
    /// The opcode is not one the agent knows.
    UnknownOpcode = 3,
    /// A field is out of its allowed range (zero or too many sectors, unaligned checksum range).
    InvalidArgument = 4,
    /// The guest has no device of the kind the operation needs.
    NoDevice = 5,
    /// The device reported an error (or needs a reset).
    DeviceError = 6,
    /// The range is outside the disk or outside usable guest RAM.
    OutOfRange = 7,
    /// `NetRecv`: no frame arrived before the timeout.
    NoFrame = 8,
    /// `ConnectHost`: the host refused or reset the connection.
    ConnectFailed = 9,
    /// The guest lacks the resources right now (no free connection, say).
    Busy = 10,
    /// The disk is read-only.
    ReadOnly = 11,
    /// The guest knows the operation but does not serve it (Zygote's own guest has no exec,
    /// the Linux agent no disk operations); see [`GuestKind`](super::GuestKind).
    Unsupported = 12,
    /// The path (or the program to run) does not exist (`ENOENT`).
    NotFound = 13,
    /// The guest refused access (`EACCES`, `EPERM`).
    PermissionDenied = 14,
    /// The path exists already (`EEXIST`), or a directory to remove is not empty.
    AlreadyExists = 15,
    /// What the request waited for did not happen in time (`WaitPort`).
    TimedOut = 16,
    /// Another I/O error in the guest.
    IoError = 17,
}

impl ErrorCode {
    /// The code with this status byte (`None` for 0, which is ok, and unknown values).
    pub const fn from_u8(value: u8) -> Option<Self> {
        use ErrorCode::*;
        Some(match value {
            1 => Malformed,
            2 => FrameTooLarge,
            3 => UnknownOpcode,
            4 => InvalidArgument,
            5 => NoDevice,
            6 => DeviceError,
            7 => OutOfRange,
            8 => NoFrame,
            9 => ConnectFailed,
            10 => Busy,
            11 => ReadOnly,
            12 => Unsupported,
            13 => NotFound,
            14 => PermissionDenied,
            15 => AlreadyExists,
            16 => TimedOut,
            17 => IoError,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ErrorCode::Malformed => "malformed request",
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::UnknownOpcode => "unknown opcode",
            ErrorCode::InvalidArgument => "invalid argument",
            ErrorCode::NoDevice => "no such device in the guest",
            ErrorCode::DeviceError => "device error",
            ErrorCode::OutOfRange => "out of range",
            ErrorCode::NoFrame => "no frame before the timeout",
            ErrorCode::ConnectFailed => "connection to the host failed",
            ErrorCode::Busy => "guest busy",
            ErrorCode::ReadOnly => "read-only disk",
            ErrorCode::Unsupported => "the guest does not serve this operation",
            ErrorCode::NotFound => "no such file or program",
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::AlreadyExists => "already exists or not empty",
            ErrorCode::TimedOut => "timed out",
            ErrorCode::IoError => "I/O error in the guest",
        };
        f.write_str(text)
    }
}
