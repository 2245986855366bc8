//! Responses from the agent to the host: the type and its codec.

use super::codec::{split_frame, whole_sectors, Reader, Writer};
use super::exec::event;
use super::{
    DecodeError, EncodeError, Entries, ErrorCode, ExitStatus, FileStat, GuestKind, Opcode,
    OutputStream, PortList, DISK_ID_LEN, LEN_PREFIX, MAX_FILE_CHUNK, MAX_FRAME, MAX_HOST_REPLY,
    MAX_NET_FRAME, VM_ID_LEN,
};
// Only named in doc links.
#[cfg(doc)]
use super::{Request, StreamChecksum};
#[cfg(doc)]
use crate::pattern::Checksum;

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
    /// Answers [`Request::Identity`].
    Identity {
        /// The generation the guest last read from its identity page (0 if it has none).
        generation: u64,
        /// The VM id it read there (zeros if it has none).
        id: [u8; VM_ID_LEN],
        /// The seed of the guest's random state: taken anew (from the TSC and the id) when
        /// the agent starts and whenever the generation changes, unchanged otherwise.
        seed: u64,
        /// One fresh value from that random state.
        random: u64,
    },
    /// Answers [`Request::Hello`].
    Hello {
        /// The guest's [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).
        version: u32,
        /// Which guest it is.
        guest: GuestKind,
    },
    /// First answer to [`Request::Exec`]: the program started.
    ExecStarted {
        /// Its process ID (also its process group's).
        pid: u32,
    },
    /// Bytes the program wrote, in the order they were read.
    ExecOutput {
        /// Which output.
        stream: OutputStream,
        /// The bytes (at least one).
        data: &'a [u8],
    },
    /// Last answer to [`Request::Exec`]: the program ended.
    ExecExited {
        /// How it ended.
        status: ExitStatus,
        /// Whether the agent killed it because its timeout passed.
        timed_out: bool,
    },
    /// Answers [`Request::Signal`].
    Signaled,
    /// Answers [`Request::WriteFile`].
    Written,
    /// Answers [`Request::ReadFile`].
    FileData(&'a [u8]),
    /// Answers [`Request::Stat`].
    Stat(FileStat),
    /// Answers [`Request::List`].
    Entries {
        /// Index to ask for next, or 0 when these were the last.
        next: u32,
        /// The entries.
        entries: Entries<'a>,
    },
    /// Answers [`Request::Remove`].
    Removed,
    /// Answers [`Request::Mkdir`].
    MadeDir,
    /// Answers [`Request::Ports`]: each listening port once, ascending.
    Ports(PortList<'a>),
    /// Answers [`Request::WaitPort`]: the port is listening.
    PortOpen,
    /// Answers [`Request::Bridge`]: raw bytes follow both ways.
    Bridged,
    /// The request failed.
    Error(ErrorCode),
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
            Response::Identity { .. } => Opcode::Identity,
            Response::Hello { .. } => Opcode::Hello,
            Response::ExecStarted { .. }
            | Response::ExecOutput { .. }
            | Response::ExecExited { .. } => Opcode::Exec,
            Response::Signaled => Opcode::Signal,
            Response::Written => Opcode::WriteFile,
            Response::FileData(_) => Opcode::ReadFile,
            Response::Stat(_) => Opcode::Stat,
            Response::Entries { .. } => Opcode::List,
            Response::Removed => Opcode::Remove,
            Response::MadeDir => Opcode::Mkdir,
            Response::Ports(_) => Opcode::Ports,
            Response::PortOpen => Opcode::WaitPort,
            Response::Bridged => Opcode::Bridge,
            Response::Error(_) => return None,
        })
    }

    /// Bytes of the body (status, opcode and fields), without the length prefix.
    fn body_len(&self) -> usize {
        let fields = match self {
            Response::Error(_) => return 1,
            Response::Pong
            | Response::DiskWritten
            | Response::DiskFlushed
            | Response::NetSent
            | Response::Signaled
            | Response::Written
            | Response::Removed
            | Response::MadeDir
            | Response::PortOpen
            | Response::Bridged => 0,
            Response::Echo(data)
            | Response::DiskData(data)
            | Response::NetFrame(data)
            | Response::HostReply(data)
            | Response::FileData(data) => data.len(),
            Response::Hello { .. } => 5,
            Response::ExecStarted { .. } => 5,
            Response::ExecOutput { data, .. } => 2 + data.len(),
            Response::ExecExited { .. } => 7,
            Response::Stat(_) => FileStat::LEN,
            Response::Entries { entries, .. } => 4 + entries.as_bytes().len(),
            Response::Ports(ports) => ports.as_bytes().len(),
            Response::Touched { .. } | Response::Sunk { .. } => 16,
            Response::Checksum(_) | Response::Counter(_) | Response::Sourcing { .. } => 8,
            Response::DiskId(_) => DISK_ID_LEN,
            Response::Exiting(_) => 4,
            Response::Identity { .. } => 8 + VM_ID_LEN + 8 + 8,
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
            Response::FileData(data) => data.len() <= MAX_FILE_CHUNK,
            Response::ExecOutput { data, .. } => !data.is_empty() && self.body_len() <= MAX_FRAME,
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
        self.write_fields(&mut w);
        Ok(w.finish())
    }

    /// Writes the fields after the status and opcode of an ok response.
    fn write_fields(&self, w: &mut Writer<'_>) {
        match *self {
            Response::Pong
            | Response::DiskWritten
            | Response::DiskFlushed
            | Response::NetSent
            | Response::Signaled
            | Response::Written
            | Response::Removed
            | Response::MadeDir
            | Response::PortOpen
            | Response::Bridged
            | Response::Error(_) => {}
            Response::Echo(data)
            | Response::DiskData(data)
            | Response::NetFrame(data)
            | Response::HostReply(data)
            | Response::FileData(data) => w.bytes(data),
            Response::Hello { version, guest } => {
                w.u32(version);
                w.u8(guest as u8);
            }
            Response::ExecStarted { pid } => {
                w.u8(event::STARTED);
                w.u32(pid);
            }
            Response::ExecOutput { stream, data } => {
                w.u8(event::OUTPUT);
                w.u8(stream as u8);
                w.bytes(data);
            }
            Response::ExecExited { status, timed_out } => {
                w.u8(event::EXITED);
                status.write(w);
                w.u8(timed_out as u8);
            }
            Response::Stat(stat) => stat.write(w),
            Response::Entries { next, entries } => {
                w.u32(next);
                w.bytes(entries.as_bytes());
            }
            Response::Ports(ports) => w.bytes(ports.as_bytes()),
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
            Response::Identity {
                generation,
                id,
                seed,
                random,
            } => {
                w.u64(generation);
                w.bytes(&id);
                w.u64(seed);
                w.u64(random);
            }
        }
    }

    /// Decodes the first frame in `bytes`: the response (borrowing from `bytes`) and how many
    /// bytes the frame took. `CounterAdd` and `CounterGet` both decode as [`Response::Counter`].
    pub fn decode(bytes: &'a [u8]) -> Result<(Self, usize), DecodeError> {
        let (body, total) = split_frame(bytes)?;
        let mut r = Reader::new(body);
        let status = r.u8()?;
        if status != 0 {
            let code = ErrorCode::from_u8(status).ok_or(DecodeError::UnknownOpcode(status))?;
            r.end()?;
            return Ok((Response::Error(code), total));
        }
        let op = r.u8()?;
        let opcode = Opcode::from_u8(op).ok_or(DecodeError::UnknownOpcode(op))?;
        let response = Self::read_fields(opcode, &mut r)?;
        r.end()?;
        if !response.valid() {
            return Err(DecodeError::Invalid);
        }
        Ok((response, total))
    }

    /// Reads the fields of an ok response to `opcode` (the body after status and opcode).
    fn read_fields(opcode: Opcode, r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(match opcode {
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
            Opcode::Identity => {
                let generation = r.u64()?;
                let mut id = [0u8; VM_ID_LEN];
                id.copy_from_slice(r.take(VM_ID_LEN)?);
                Response::Identity {
                    generation,
                    id,
                    seed: r.u64()?,
                    random: r.u64()?,
                }
            }
            Opcode::Hello => Response::Hello {
                version: r.u32()?,
                guest: GuestKind::from_u8(r.u8()?).ok_or(DecodeError::Invalid)?,
            },
            Opcode::Exec => Self::read_exec_event(r)?,
            Opcode::Signal => Response::Signaled,
            Opcode::WriteFile => Response::Written,
            Opcode::ReadFile => Response::FileData(r.rest()),
            Opcode::Stat => Response::Stat(FileStat::read(r)?),
            Opcode::List => Response::Entries {
                next: r.u32()?,
                entries: Entries::new(r.rest()).ok_or(DecodeError::Invalid)?,
            },
            Opcode::Remove => Response::Removed,
            Opcode::Mkdir => Response::MadeDir,
            Opcode::Ports => Response::Ports(PortList::new(r.rest()).ok_or(DecodeError::Invalid)?),
            Opcode::WaitPort => Response::PortOpen,
            Opcode::Bridge => Response::Bridged,
        })
    }

    /// Reads one of the three answers to `Exec` (the body after status and opcode).
    fn read_exec_event(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            event::STARTED => Response::ExecStarted { pid: r.u32()? },
            event::OUTPUT => Response::ExecOutput {
                stream: OutputStream::read(r)?,
                data: r.rest(),
            },
            event::EXITED => Response::ExecExited {
                status: ExitStatus::read(r)?,
                timed_out: r.flag()?,
            },
            _ => return Err(DecodeError::Invalid),
        })
    }
}
