//! The agent protocol: what a host program and the guest's `agent` workload say to each other
//! over vsock port [`AGENT_PORT`].
//!
//! Every message is a frame: a `u32` little-endian length of what follows, then that many
//! bytes. A request's body is a `u8` opcode and the operation's fields; a response's body is a
//! `u8` status (0 ok, else an [`ErrorCode`]) and, when ok, the opcode it answers and its fields.
//! Integers are little-endian; a trailing byte string takes the rest of the frame. Bodies are at
//! most [`MAX_FRAME`] bytes; decoders never panic and tell a frame that is not complete yet
//! ([`DecodeError::Incomplete`]) from one that is wrong.
//!
//! Two operations stream raw bytes outside frames on the same connection: after a
//! [`Request::Sink`] the host sends `len` bytes, and the guest answers [`Response::Sunk`] with
//! their [`StreamChecksum`]; after answering [`Request::Source`] with [`Response::Sourcing`]
//! the guest sends `len` bytes of [`source_byte`].
//!
//! ```
//! use zygote_guest_proto::agent::{Request, Response};
//!
//! let mut buf = [0u8; 64];
//! let n = Request::Echo(b"hi").encode(&mut buf).unwrap();
//! let (request, used) = Request::decode(&buf[..n]).unwrap();
//! assert_eq!((request, used), (Request::Echo(b"hi"), n));
//!
//! let n = Response::Counter(7).encode(&mut buf).unwrap();
//! assert_eq!(Response::decode(&buf[..n]).unwrap(), (Response::Counter(7), n));
//! ```

use core::fmt;

use crate::pattern::{pattern_word, Checksum};

/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// Largest frame body (the value of the length prefix): 1 MiB.
pub const MAX_FRAME: usize = 1 << 20;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Disk sector size the agent's disk operations count in.
pub const SECTOR_SIZE: usize = 512;

/// Most sectors one `DiskRead` or `DiskWrite` moves.
pub const MAX_DISK_SECTORS: u32 = 256;

/// Length of a virtio-blk device ID.
pub const DISK_ID_LEN: usize = 20;

/// Most bytes `Echo` carries: its response (status, opcode, data) must fit in [`MAX_FRAME`].
pub const MAX_ECHO: usize = MAX_FRAME - 2;

/// Longest Ethernet frame (without FCS) `NetSend` accepts and `NetRecv` returns.
pub const MAX_NET_FRAME: usize = 1514;

/// Most bytes `ConnectHost` reads back from the host.
pub const MAX_HOST_REPLY: usize = 4096;

/// Guest-physical address of the agent's counter: a little-endian `u64` that `CounterAdd` and
/// `CounterGet` use and a host may read from guest memory. Zeroed when the agent starts. It sits
/// in a page the kernel's linker script reserves for it (the last 4 KiB below 2 MiB).
pub const AGENT_COUNTER_ADDR: u64 = 0x1f_f000;

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
    /// The length prefix exceeded [`MAX_FRAME`]; the guest closes the connection after this.
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
        };
        f.write_str(text)
    }
}

/// Why bytes are not (yet) a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is not complete yet: read more bytes and try again.
    Incomplete,
    /// The length prefix exceeds [`MAX_FRAME`] (or is 0): the stream cannot be trusted further.
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

/// The whole frame length (prefix included) announced by the first bytes of `bytes`.
/// [`DecodeError::Incomplete`] until 4 bytes are there; [`DecodeError::BadLength`] for a body
/// length of 0 or above [`MAX_FRAME`].
pub fn frame_len(bytes: &[u8]) -> Result<usize, DecodeError> {
    let prefix: [u8; LEN_PREFIX] = match bytes.get(..LEN_PREFIX) {
        Some(prefix) => prefix.try_into().map_err(|_| DecodeError::Incomplete)?,
        None => return Err(DecodeError::Incomplete),
    };
    let len = u32::from_le_bytes(prefix);
    if len == 0 || len as usize > MAX_FRAME {
        return Err(DecodeError::BadLength(len));
    }
    Ok(LEN_PREFIX + len as usize)
}

/// The body of the first frame in `bytes` and the frame's whole length.
fn split_frame(bytes: &[u8]) -> Result<(&[u8], usize), DecodeError> {
    let total = frame_len(bytes)?;
    let body = bytes
        .get(LEN_PREFIX..total)
        .ok_or(DecodeError::Incomplete)?;
    Ok((body, total))
}

/// A request from the host to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Answered [`Response::Pong`].
    Ping,
    /// Answered [`Response::Echo`] with the same bytes (at most [`MAX_ECHO`]).
    Echo(&'a [u8]),
    /// Writes `mib` MiB of the `touch` pattern on the region the `touch` workload uses, reads it
    /// back; answered [`Response::Touched`].
    Touch {
        /// MiB to write.
        mib: u32,
        /// The pattern ([`crate::pattern_word`]).
        pattern: u64,
    },
    /// The [`Checksum`] of `len / 8` u64 words of guest RAM at `addr` (both multiples of 8);
    /// answered [`Response::Checksum`].
    Checksum {
        /// Guest-physical start, 8-byte aligned.
        addr: u64,
        /// Bytes, a multiple of 8.
        len: u64,
    },
    /// Writes whole sectors (1 to [`MAX_DISK_SECTORS`]) at `sector`; [`Response::DiskWritten`].
    DiskWrite {
        /// First sector (512 bytes each).
        sector: u64,
        /// The data, a multiple of [`SECTOR_SIZE`] bytes.
        data: &'a [u8],
    },
    /// Reads `count` (1 to [`MAX_DISK_SECTORS`]) sectors; answered [`Response::DiskData`].
    DiskRead {
        /// First sector.
        sector: u64,
        /// How many sectors.
        count: u32,
    },
    /// Flushes the disk; [`Response::DiskFlushed`].
    DiskFlush,
    /// The disk's ID string; [`Response::DiskId`].
    DiskId,
    /// Sends one Ethernet frame (1 to [`MAX_NET_FRAME`] bytes); [`Response::NetSent`].
    NetSend(&'a [u8]),
    /// Waits up to `timeout_ms` for a frame; [`Response::NetFrame`] or [`ErrorCode::NoFrame`].
    NetRecv {
        /// How long to wait, in milliseconds.
        timeout_ms: u32,
    },
    /// Adds to the counter at [`AGENT_COUNTER_ADDR`] (wrapping); [`Response::Counter`] with
    /// the new value.
    CounterAdd(u64),
    /// [`Response::Counter`] with the counter's value.
    CounterGet,
    /// The host sends `len` raw bytes after this frame; the guest answers [`Response::Sunk`].
    Sink {
        /// Bytes that follow.
        len: u64,
    },
    /// The guest answers [`Response::Sourcing`], then sends `len` bytes of [`source_byte`].
    Source {
        /// Bytes to send.
        len: u64,
        /// The pattern seed.
        seed: u64,
    },
    /// The guest connects to the host (CID 2) on vsock `port`, sends `payload`, reads until the
    /// host closes or [`MAX_HOST_REPLY`] bytes; [`Response::HostReply`].
    ConnectHost {
        /// The host's port.
        port: u32,
        /// What to send.
        payload: &'a [u8],
    },
    /// Answered [`Response::Exiting`], then the guest exits with `code`.
    Exit(u32),
}

/// A response from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// Answers [`Request::Ping`].
    Pong,
    /// Answers [`Request::Echo`].
    Echo(&'a [u8]),
    /// Answers [`Request::Touch`].
    Touched {
        /// Guest-physical address of the first word written.
        addr: u64,
        /// The [`Checksum`] read back (equals [`crate::pattern_checksum`]).
        checksum: u64,
    },
    /// Answers [`Request::Checksum`].
    Checksum(u64),
    /// Answers [`Request::DiskWrite`].
    DiskWritten,
    /// Answers [`Request::DiskRead`]: `count * 512` bytes.
    DiskData(&'a [u8]),
    /// Answers [`Request::DiskFlush`].
    DiskFlushed,
    /// Answers [`Request::DiskId`].
    DiskId([u8; DISK_ID_LEN]),
    /// Answers [`Request::NetSend`].
    NetSent,
    /// Answers [`Request::NetRecv`]: the frame, without the virtio-net header.
    NetFrame(&'a [u8]),
    /// Answers [`Request::CounterAdd`] and [`Request::CounterGet`].
    Counter(u64),
    /// Answers [`Request::Sink`] once all bytes arrived.
    Sunk {
        /// Bytes received.
        len: u64,
        /// Their [`StreamChecksum`].
        checksum: u64,
    },
    /// Answers [`Request::Source`]; `len` raw bytes follow.
    Sourcing {
        /// Bytes that follow.
        len: u64,
    },
    /// Answers [`Request::ConnectHost`]: what the host sent back.
    HostReply(&'a [u8]),
    /// Answers [`Request::Exit`]; the guest exits after sending it.
    Exiting(u32),
    /// The request failed.
    Error(ErrorCode),
}

/// Writes frames field by field; the caller checked the size beforehand.
struct Writer<'b> {
    out: &'b mut [u8],
    at: usize,
}

impl<'b> Writer<'b> {
    /// Starts a frame of `body` bytes in `out`, or says how much room it needs.
    fn start(out: &'b mut [u8], body: usize) -> Result<Self, EncodeError> {
        if body == 0 || body > MAX_FRAME {
            return Err(EncodeError::Invalid);
        }
        let needed = LEN_PREFIX + body;
        if out.len() < needed {
            return Err(EncodeError::BufferTooSmall { needed });
        }
        let mut writer = Writer { out, at: 0 };
        writer.bytes(&(body as u32).to_le_bytes());
        Ok(writer)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    fn u8(&mut self, value: u8) {
        self.bytes(&[value]);
    }

    fn u32(&mut self, value: u32) {
        self.bytes(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    fn finish(self) -> usize {
        self.at
    }
}

/// Reads a frame body field by field.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Invalid);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut value = [0u8; 4];
        value.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(value))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut value = [0u8; 8];
        value.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(value))
    }

    /// The rest of the body.
    fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.rest)
    }

    /// Fails unless every byte was read.
    fn end(&self) -> Result<(), DecodeError> {
        match self.rest.is_empty() {
            true => Ok(()),
            false => Err(DecodeError::Invalid),
        }
    }
}

/// Whether `data` is 1 to [`MAX_DISK_SECTORS`] whole sectors.
fn whole_sectors(data: &[u8]) -> bool {
    !data.is_empty()
        && data.len() % SECTOR_SIZE == 0
        && data.len() <= MAX_DISK_SECTORS as usize * SECTOR_SIZE
}

impl<'a> Request<'a> {
    /// Its opcode.
    pub const fn opcode(&self) -> Opcode {
        match self {
            Request::Ping => Opcode::Ping,
            Request::Echo(_) => Opcode::Echo,
            Request::Touch { .. } => Opcode::Touch,
            Request::Checksum { .. } => Opcode::Checksum,
            Request::DiskWrite { .. } => Opcode::DiskWrite,
            Request::DiskRead { .. } => Opcode::DiskRead,
            Request::DiskFlush => Opcode::DiskFlush,
            Request::DiskId => Opcode::DiskId,
            Request::NetSend(_) => Opcode::NetSend,
            Request::NetRecv { .. } => Opcode::NetRecv,
            Request::CounterAdd(_) => Opcode::CounterAdd,
            Request::CounterGet => Opcode::CounterGet,
            Request::Sink { .. } => Opcode::Sink,
            Request::Source { .. } => Opcode::Source,
            Request::ConnectHost { .. } => Opcode::ConnectHost,
            Request::Exit(_) => Opcode::Exit,
        }
    }

    /// Bytes of the body (opcode and fields), without the length prefix.
    fn body_len(&self) -> usize {
        1 + match self {
            Request::Ping | Request::DiskFlush | Request::DiskId | Request::CounterGet => 0,
            Request::Echo(data) | Request::NetSend(data) => data.len(),
            Request::Touch { .. } => 12,
            Request::Checksum { .. } | Request::Source { .. } => 16,
            Request::DiskWrite { data, .. } => 8 + data.len(),
            Request::DiskRead { .. } => 12,
            Request::NetRecv { .. } | Request::Exit(_) => 4,
            Request::CounterAdd(_) | Request::Sink { .. } => 8,
            Request::ConnectHost { payload, .. } => 4 + payload.len(),
        }
    }

    /// Bytes [`Request::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        LEN_PREFIX + self.body_len()
    }

    /// Checks the limits [`Request::decode`] enforces.
    fn valid(&self) -> bool {
        match *self {
            Request::DiskWrite { data, .. } => whole_sectors(data),
            Request::DiskRead { count, .. } => (1..=MAX_DISK_SECTORS).contains(&count),
            Request::NetSend(frame) => !frame.is_empty() && frame.len() <= MAX_NET_FRAME,
            Request::Echo(data) => data.len() <= MAX_ECHO,
            _ => self.body_len() <= MAX_FRAME,
        }
    }

    /// Writes the whole frame to the start of `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        if !self.valid() {
            return Err(EncodeError::Invalid);
        }
        let mut w = Writer::start(out, self.body_len())?;
        w.u8(self.opcode() as u8);
        match *self {
            Request::Ping | Request::DiskFlush | Request::DiskId | Request::CounterGet => {}
            Request::Echo(data) | Request::NetSend(data) => w.bytes(data),
            Request::Touch { mib, pattern } => {
                w.u32(mib);
                w.u64(pattern);
            }
            Request::Checksum { addr, len } => {
                w.u64(addr);
                w.u64(len);
            }
            Request::DiskWrite { sector, data } => {
                w.u64(sector);
                w.bytes(data);
            }
            Request::DiskRead { sector, count } => {
                w.u64(sector);
                w.u32(count);
            }
            Request::NetRecv { timeout_ms } => w.u32(timeout_ms),
            Request::CounterAdd(value) => w.u64(value),
            Request::Sink { len } => w.u64(len),
            Request::Source { len, seed } => {
                w.u64(len);
                w.u64(seed);
            }
            Request::ConnectHost { port, payload } => {
                w.u32(port);
                w.bytes(payload);
            }
            Request::Exit(code) => w.u32(code),
        }
        Ok(w.finish())
    }

    /// Decodes the first frame in `bytes`: the request (borrowing from `bytes`) and how many
    /// bytes the frame took.
    pub fn decode(bytes: &'a [u8]) -> Result<(Self, usize), DecodeError> {
        let (body, total) = split_frame(bytes)?;
        let mut r = Reader { rest: body };
        let op = r.u8()?;
        let opcode = Opcode::from_u8(op).ok_or(DecodeError::UnknownOpcode(op))?;
        let request = match opcode {
            Opcode::Ping => Request::Ping,
            Opcode::Echo => Request::Echo(r.rest()),
            Opcode::Touch => Request::Touch {
                mib: r.u32()?,
                pattern: r.u64()?,
            },
            Opcode::Checksum => Request::Checksum {
                addr: r.u64()?,
                len: r.u64()?,
            },
            Opcode::DiskWrite => Request::DiskWrite {
                sector: r.u64()?,
                data: r.rest(),
            },
            Opcode::DiskRead => Request::DiskRead {
                sector: r.u64()?,
                count: r.u32()?,
            },
            Opcode::DiskFlush => Request::DiskFlush,
            Opcode::DiskId => Request::DiskId,
            Opcode::NetSend => Request::NetSend(r.rest()),
            Opcode::NetRecv => Request::NetRecv {
                timeout_ms: r.u32()?,
            },
            Opcode::CounterAdd => Request::CounterAdd(r.u64()?),
            Opcode::CounterGet => Request::CounterGet,
            Opcode::Sink => Request::Sink { len: r.u64()? },
            Opcode::Source => Request::Source {
                len: r.u64()?,
                seed: r.u64()?,
            },
            Opcode::ConnectHost => Request::ConnectHost {
                port: r.u32()?,
                payload: r.rest(),
            },
            Opcode::Exit => Request::Exit(r.u32()?),
        };
        r.end()?;
        if !request.valid() {
            return Err(DecodeError::Invalid);
        }
        Ok((request, total))
    }
}

impl<'a> Response<'a> {
    /// The opcode an ok response answers; `None` for [`Response::Error`].
    pub const fn opcode(&self) -> Option<Opcode> {
        Some(match self {
            Response::Pong => Opcode::Ping,
            Response::Echo(_) => Opcode::Echo,
            Response::Touched { .. } => Opcode::Touch,
            Response::Checksum(_) => Opcode::Checksum,
            Response::DiskWritten => Opcode::DiskWrite,
            Response::DiskData(_) => Opcode::DiskRead,
            Response::DiskFlushed => Opcode::DiskFlush,
            Response::DiskId(_) => Opcode::DiskId,
            Response::NetSent => Opcode::NetSend,
            Response::NetFrame(_) => Opcode::NetRecv,
            Response::Counter(_) => Opcode::CounterGet,
            Response::Sunk { .. } => Opcode::Sink,
            Response::Sourcing { .. } => Opcode::Source,
            Response::HostReply(_) => Opcode::ConnectHost,
            Response::Exiting(_) => Opcode::Exit,
            Response::Error(_) => return None,
        })
    }

    /// Bytes of the body (status, opcode and fields), without the length prefix.
    fn body_len(&self) -> usize {
        let fields = match self {
            Response::Error(_) => return 1,
            Response::Pong | Response::DiskWritten | Response::DiskFlushed | Response::NetSent => 0,
            Response::Echo(data)
            | Response::DiskData(data)
            | Response::NetFrame(data)
            | Response::HostReply(data) => data.len(),
            Response::Touched { .. } | Response::Sunk { .. } => 16,
            Response::Checksum(_) | Response::Counter(_) | Response::Sourcing { .. } => 8,
            Response::DiskId(_) => DISK_ID_LEN,
            Response::Exiting(_) => 4,
        };
        2 + fields
    }

    /// Bytes [`Response::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        LEN_PREFIX + self.body_len()
    }

    /// Checks the limits [`Response::decode`] enforces.
    fn valid(&self) -> bool {
        match *self {
            Response::DiskData(data) => whole_sectors(data),
            Response::NetFrame(frame) => !frame.is_empty() && frame.len() <= MAX_NET_FRAME,
            Response::HostReply(data) => data.len() <= MAX_HOST_REPLY,
            _ => self.body_len() <= MAX_FRAME,
        }
    }

    /// Writes the whole frame to the start of `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        if !self.valid() {
            return Err(EncodeError::Invalid);
        }
        let mut w = Writer::start(out, self.body_len())?;
        let opcode = match (self, self.opcode()) {
            (Response::Error(code), _) => {
                w.u8(*code as u8);
                return Ok(w.finish());
            }
            (_, Some(opcode)) => opcode,
            (_, None) => return Err(EncodeError::Invalid),
        };
        w.u8(0);
        w.u8(opcode as u8);
        match *self {
            Response::Pong
            | Response::DiskWritten
            | Response::DiskFlushed
            | Response::NetSent
            | Response::Error(_) => {}
            Response::Echo(data)
            | Response::DiskData(data)
            | Response::NetFrame(data)
            | Response::HostReply(data) => w.bytes(data),
            Response::Touched { addr, checksum } => {
                w.u64(addr);
                w.u64(checksum);
            }
            Response::Sunk { len, checksum } => {
                w.u64(len);
                w.u64(checksum);
            }
            Response::Checksum(value) | Response::Counter(value) => w.u64(value),
            Response::Sourcing { len } => w.u64(len),
            Response::DiskId(id) => w.bytes(&id),
            Response::Exiting(code) => w.u32(code),
        }
        Ok(w.finish())
    }

    /// Decodes the first frame in `bytes`: the response (borrowing from `bytes`) and how many
    /// bytes the frame took. `CounterAdd` and `CounterGet` both decode as [`Response::Counter`].
    pub fn decode(bytes: &'a [u8]) -> Result<(Self, usize), DecodeError> {
        let (body, total) = split_frame(bytes)?;
        let mut r = Reader { rest: body };
        let status = r.u8()?;
        if status != 0 {
            let code = ErrorCode::from_u8(status).ok_or(DecodeError::UnknownOpcode(status))?;
            r.end()?;
            return Ok((Response::Error(code), total));
        }
        let op = r.u8()?;
        let opcode = Opcode::from_u8(op).ok_or(DecodeError::UnknownOpcode(op))?;
        let response = match opcode {
            Opcode::Ping => Response::Pong,
            Opcode::Echo => Response::Echo(r.rest()),
            Opcode::Touch => Response::Touched {
                addr: r.u64()?,
                checksum: r.u64()?,
            },
            Opcode::Checksum => Response::Checksum(r.u64()?),
            Opcode::DiskWrite => Response::DiskWritten,
            Opcode::DiskRead => Response::DiskData(r.rest()),
            Opcode::DiskFlush => Response::DiskFlushed,
            Opcode::DiskId => {
                let mut id = [0u8; DISK_ID_LEN];
                id.copy_from_slice(r.take(DISK_ID_LEN)?);
                Response::DiskId(id)
            }
            Opcode::NetSend => Response::NetSent,
            Opcode::NetRecv => Response::NetFrame(r.rest()),
            Opcode::CounterAdd | Opcode::CounterGet => Response::Counter(r.u64()?),
            Opcode::Sink => Response::Sunk {
                len: r.u64()?,
                checksum: r.u64()?,
            },
            Opcode::Source => Response::Sourcing { len: r.u64()? },
            Opcode::ConnectHost => Response::HostReply(r.rest()),
            Opcode::Exit => Response::Exiting(r.u32()?),
        };
        r.end()?;
        if !response.valid() {
            return Err(DecodeError::Invalid);
        }
        Ok((response, total))
    }
}

/// Byte `offset` of the stream [`Request::Source`] sends: the little-endian bytes of
/// [`pattern_word`]`(seed, offset / 8)`, one word after another.
#[inline]
pub fn source_byte(seed: u64, offset: u64) -> u8 {
    pattern_word(seed, offset / 8).to_le_bytes()[(offset % 8) as usize]
}

/// Fills `out` with the [`Request::Source`] stream from byte `offset` on.
pub fn fill_source(seed: u64, offset: u64, out: &mut [u8]) {
    let mut at = 0;
    let mut offset = offset;
    // Up to the next word boundary byte by byte, then whole words.
    while at < out.len() && offset % 8 != 0 {
        out[at] = source_byte(seed, offset);
        at += 1;
        offset += 1;
    }
    while out.len() - at >= 8 {
        out[at..at + 8].copy_from_slice(&pattern_word(seed, offset / 8).to_le_bytes());
        at += 8;
        offset += 8;
    }
    while at < out.len() {
        out[at] = source_byte(seed, offset);
        at += 1;
        offset += 1;
    }
}

/// The checksum of a byte stream ([`Response::Sunk`]): the bytes taken as little-endian u64
/// words, the last one zero-padded when the length is not a multiple of 8, mixed into a
/// [`Checksum`]. Feed it any split of the stream; the result is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamChecksum {
    sum: Checksum,
    word: [u8; 8],
    filled: usize,
    len: u64,
}

impl StreamChecksum {
    /// A checksum over no bytes yet.
    pub const fn new() -> Self {
        StreamChecksum {
            sum: Checksum::new(),
            word: [0; 8],
            filled: 0,
            len: 0,
        }
    }

    /// Mixes `bytes` in.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.filled > 0 {
            let n = bytes.len().min(8 - self.filled);
            self.word[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled < 8 {
                return;
            }
            self.sum.update(u64::from_le_bytes(self.word));
            self.filled = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut value = [0u8; 8];
            value.copy_from_slice(word);
            self.sum.update(u64::from_le_bytes(value));
        }
        let rest = words.remainder();
        self.word[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    /// Bytes mixed in so far.
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// Whether no bytes were mixed in.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checksum of the bytes so far (a partial last word zero-padded).
    pub fn value(&self) -> u64 {
        let mut sum = self.sum;
        if self.filled > 0 {
            let mut word = [0u8; 8];
            word[..self.filled].copy_from_slice(&self.word[..self.filled]);
            sum.update(u64::from_le_bytes(word));
        }
        sum.value()
    }
}

/// The [`StreamChecksum`] of `len` bytes of the [`Request::Source`] stream with `seed`.
pub fn source_checksum(seed: u64, len: u64) -> u64 {
    let mut sum = Checksum::new();
    for index in 0..len / 8 {
        sum.update(pattern_word(seed, index));
    }
    let tail = (len % 8) as usize;
    if tail > 0 {
        let mut word = pattern_word(seed, len / 8).to_le_bytes();
        word[tail..].fill(0);
        sum.update(u64::from_le_bytes(word));
    }
    sum.value()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn all_requests(data: &[u8], sectors: &[u8]) -> Vec<Request<'static>> {
        // Leak so the requests can be 'static in a test.
        let data: &'static [u8] = std::boxed::Box::leak(data.to_vec().into_boxed_slice());
        let sectors: &'static [u8] = std::boxed::Box::leak(sectors.to_vec().into_boxed_slice());
        vec![
            Request::Ping,
            Request::Echo(data),
            Request::Echo(b""),
            Request::Touch {
                mib: 3,
                pattern: u64::MAX,
            },
            Request::Checksum {
                addr: 0x20_0000,
                len: 4096,
            },
            Request::DiskWrite {
                sector: 9,
                data: sectors,
            },
            Request::DiskRead {
                sector: u64::MAX,
                count: MAX_DISK_SECTORS,
            },
            Request::DiskFlush,
            Request::DiskId,
            Request::NetSend(data),
            Request::NetRecv { timeout_ms: 250 },
            Request::CounterAdd(5),
            Request::CounterGet,
            Request::Sink { len: 64 << 20 },
            Request::Source { len: 7, seed: 42 },
            Request::ConnectHost {
                port: 5000,
                payload: data,
            },
            Request::Exit(0xdead),
        ]
    }

    fn all_responses(data: &'static [u8], sectors: &'static [u8]) -> Vec<Response<'static>> {
        vec![
            Response::Pong,
            Response::Echo(data),
            Response::Touched {
                addr: 0x20_0000,
                checksum: 1,
            },
            Response::Checksum(2),
            Response::DiskWritten,
            Response::DiskData(sectors),
            Response::DiskFlushed,
            Response::DiskId(*b"zygote-disk-id-12345"),
            Response::NetSent,
            Response::NetFrame(data),
            Response::Counter(u64::MAX),
            Response::Sunk {
                len: 10,
                checksum: 11,
            },
            Response::Sourcing { len: 12 },
            Response::HostReply(data),
            Response::HostReply(b""),
            Response::Exiting(3),
            Response::Error(ErrorCode::NoFrame),
            Response::Error(ErrorCode::ReadOnly),
        ]
    }

    #[test]
    fn requests_round_trip_and_truncations_are_incomplete() {
        let sectors = vec![0xa5u8; 2 * SECTOR_SIZE];
        for request in all_requests(b"hello frame", &sectors) {
            let mut buf = vec![0u8; request.encoded_len() + 3];
            let n = request.encode(&mut buf).unwrap();
            assert_eq!(n, request.encoded_len());
            // Trailing bytes (the next frame) are left alone.
            assert_eq!(Request::decode(&buf), Ok((request, n)), "{request:?}");
            for cut in 0..n {
                assert_eq!(
                    Request::decode(&buf[..cut]),
                    Err(DecodeError::Incomplete),
                    "{request:?} cut at {cut}"
                );
            }
            assert_eq!(
                request.encode(&mut buf[..n - 1]),
                Err(EncodeError::BufferTooSmall { needed: n })
            );
        }
    }

    #[test]
    fn responses_round_trip_and_truncations_are_incomplete() {
        let sectors: &'static [u8] = std::boxed::Box::leak(vec![7u8; SECTOR_SIZE].into());
        for response in all_responses(b"reply", sectors) {
            let mut buf = vec![0u8; response.encoded_len()];
            let n = response.encode(&mut buf).unwrap();
            assert_eq!(Response::decode(&buf), Ok((response, n)), "{response:?}");
            for cut in 0..n {
                assert_eq!(Response::decode(&buf[..cut]), Err(DecodeError::Incomplete));
            }
        }
    }

    #[test]
    fn wire_format_is_as_documented() {
        let mut buf = [0u8; 32];
        let n = Request::CounterAdd(0x0102).encode(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[9, 0, 0, 0, 11, 2, 1, 0, 0, 0, 0, 0, 0]);
        let n = Response::Counter(1).encode(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[10, 0, 0, 0, 0, 12, 1, 0, 0, 0, 0, 0, 0, 0]);
        let n = Response::Error(ErrorCode::NoFrame)
            .encode(&mut buf)
            .unwrap();
        assert_eq!(&buf[..n], &[1, 0, 0, 0, 8]);
    }

    #[test]
    fn bad_lengths_are_rejected_before_reading_the_body() {
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert_eq!(
            Request::decode(&huge),
            Err(DecodeError::BadLength(MAX_FRAME as u32 + 1))
        );
        assert_eq!(
            Response::decode(&[0xff, 0xff, 0xff, 0xff, 1]),
            Err(DecodeError::BadLength(u32::MAX))
        );
        assert_eq!(
            Request::decode(&[0, 0, 0, 0]),
            Err(DecodeError::BadLength(0))
        );
        assert_eq!(frame_len(&[1, 0, 0]), Err(DecodeError::Incomplete));
        assert_eq!(
            frame_len(&(MAX_FRAME as u32).to_le_bytes()),
            Ok(MAX_FRAME + 4)
        );
    }

    #[test]
    fn garbage_is_an_error() {
        // Unknown opcode, unknown status.
        assert_eq!(
            Request::decode(&[1, 0, 0, 0, 99]),
            Err(DecodeError::UnknownOpcode(99))
        );
        assert_eq!(
            Response::decode(&[1, 0, 0, 0, 200]),
            Err(DecodeError::UnknownOpcode(200))
        );
        assert_eq!(
            Response::decode(&[2, 0, 0, 0, 0, 0]),
            Err(DecodeError::UnknownOpcode(0))
        );
        // Fixed-size bodies with extra or missing bytes.
        assert_eq!(
            Request::decode(&[2, 0, 0, 0, 1, 0]),
            Err(DecodeError::Invalid)
        );
        assert_eq!(
            Request::decode(&[2, 0, 0, 0, 11, 0]),
            Err(DecodeError::Invalid)
        );
        assert_eq!(
            Response::decode(&[2, 0, 0, 0, 8, 0]),
            Err(DecodeError::Invalid)
        );
        // Partial sectors, zero sectors, too many sectors.
        let mut frame = vec![0u8; 4 + 1 + 8 + 100];
        frame[..4].copy_from_slice(&(1u32 + 8 + 100).to_le_bytes());
        frame[4] = Opcode::DiskWrite as u8;
        assert_eq!(Request::decode(&frame), Err(DecodeError::Invalid));
        for count in [0u32, MAX_DISK_SECTORS + 1] {
            let mut buf = [0u8; 17];
            buf[..4].copy_from_slice(&13u32.to_le_bytes());
            buf[4] = Opcode::DiskRead as u8;
            buf[13..17].copy_from_slice(&count.to_le_bytes());
            assert_eq!(Request::decode(&buf), Err(DecodeError::Invalid));
        }
        // Encoding refuses what decoding would refuse.
        let mut buf = vec![0u8; 4096];
        assert_eq!(
            Request::DiskWrite {
                sector: 0,
                data: &[0; 3]
            }
            .encode(&mut buf),
            Err(EncodeError::Invalid)
        );
        assert_eq!(
            Request::NetSend(&[]).encode(&mut buf),
            Err(EncodeError::Invalid)
        );
        let big = vec![0u8; MAX_FRAME];
        assert_eq!(
            Request::Echo(&big).encode(&mut buf),
            Err(EncodeError::Invalid)
        );
    }

    #[test]
    fn pseudo_random_bytes_never_panic() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut buf = [0u8; 64];
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (state >> 58) as usize;
            for byte in buf.iter_mut() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                *byte = (state >> 33) as u8;
            }
            // Keep the length prefix small sometimes so bodies get parsed.
            if state & 1 == 0 {
                buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
            }
            let _ = Request::decode(&buf[..len.max(4)]);
            let _ = Response::decode(&buf[..len.max(4)]);
        }
    }

    #[test]
    fn stream_checksum_is_split_independent_and_matches_the_source() {
        for len in [0u64, 1, 7, 8, 9, 100, 4096 + 3] {
            let mut bytes = vec![0u8; len as usize];
            fill_source(77, 0, &mut bytes);
            for (i, &b) in bytes.iter().enumerate() {
                assert_eq!(b, source_byte(77, i as u64));
            }
            let mut whole = StreamChecksum::new();
            whole.update(&bytes);
            let mut pieces = StreamChecksum::new();
            for chunk in bytes.chunks(3) {
                pieces.update(chunk);
            }
            assert_eq!(whole.value(), pieces.value());
            assert_eq!(whole.value(), source_checksum(77, len));
            assert_eq!(whole.len(), len);
            // Filling from an offset continues the same stream.
            if len > 5 {
                let mut tail = vec![0u8; len as usize - 5];
                fill_source(77, 5, &mut tail);
                assert_eq!(&tail[..], &bytes[5..]);
            }
        }
        // Whole words: the same as the touch checksum of the pattern.
        assert_eq!(source_checksum(9, 1 << 20), crate::pattern_checksum(9, 1));
    }
}
