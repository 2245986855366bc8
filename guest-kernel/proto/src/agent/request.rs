//! Requests from the host to the agent: the type and its codec.

use super::codec::{split_frame, whole_sectors, Reader, Writer};
use super::files::valid_path;
use super::{
    DecodeError, EncodeError, Exec, Opcode, LEN_PREFIX, MAX_DISK_SECTORS, MAX_ECHO, MAX_FILE_CHUNK,
    MAX_FRAME, MAX_NET_FRAME,
};
// Only named in doc links.
#[cfg(doc)]
use super::{source_byte, ErrorCode, Response, AGENT_COUNTER_ADDR, MAX_HOST_REPLY, SECTOR_SIZE};
#[cfg(doc)]
use crate::pattern::Checksum;

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
    /// What the guest read from its identity page ([`crate::VmIdentity`]) and its random
    /// state; [`Response::Identity`].
    Identity,
    /// The host's protocol version; answered [`Response::Hello`] with the guest's.
    Hello {
        /// [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION) of the host.
        version: u32,
    },
    /// Runs a program. Answered [`Response::ExecStarted`], then any number of
    /// [`Response::ExecOutput`] while it runs, then [`Response::ExecExited`]; a program that
    /// cannot be started is answered with an error instead (`NotFound`, `PermissionDenied`).
    Exec(Exec<'a>),
    /// Sends `signal` to the process group of a program `Exec` started (its `pid`);
    /// [`Response::Signaled`].
    Signal {
        /// The pid [`Response::ExecStarted`] named.
        pid: u32,
        /// The signal number (SIGKILL is 9, SIGTERM 15).
        signal: u32,
    },
    /// Writes `data` (at most [`MAX_FILE_CHUNK`]) at `offset`, creating the file with `mode`
    /// if it is missing; [`Response::Written`].
    WriteFile {
        /// The file (at most [`MAX_PATH`](super::MAX_PATH) bytes, no NUL).
        path: &'a [u8],
        /// Byte offset to write at.
        offset: u64,
        /// Truncate the file to 0 bytes first.
        truncate: bool,
        /// Permission bits for a new file.
        mode: u32,
        /// The bytes.
        data: &'a [u8],
    },
    /// Reads up to `len` (at most [`MAX_FILE_CHUNK`]) bytes at `offset`; [`Response::FileData`],
    /// shorter than `len` only at the end of the file.
    ReadFile {
        /// The file.
        path: &'a [u8],
        /// Byte offset to read at.
        offset: u64,
        /// Most bytes to read.
        len: u32,
    },
    /// The path's metadata, not following a final symlink; [`Response::Stat`].
    Stat(&'a [u8]),
    /// A directory's entries, sorted by name, from the `start`th; [`Response::Entries`].
    List {
        /// The directory.
        path: &'a [u8],
        /// Index of the first entry wanted.
        start: u32,
    },
    /// Removes a file or an empty directory (or a whole tree, `recursive`); [`Response::Removed`].
    Remove {
        /// What to remove.
        path: &'a [u8],
        /// Remove a directory and everything in it.
        recursive: bool,
    },
    /// Creates a directory (and its missing parents, `parents`); [`Response::MadeDir`].
    Mkdir {
        /// The directory.
        path: &'a [u8],
        /// Create missing parents too and accept an existing directory.
        parents: bool,
        /// Permission bits.
        mode: u32,
    },
    /// The TCP ports listening in the guest; [`Response::Ports`].
    Ports,
    /// Waits up to `timeout_ms` for a TCP port to be listening; [`Response::PortOpen`] or
    /// [`ErrorCode::TimedOut`].
    WaitPort {
        /// The port.
        port: u16,
        /// How long to wait, in milliseconds.
        timeout_ms: u32,
    },
    /// Connects to the guest's TCP `port` on the loopback address; after [`Response::Bridged`]
    /// the connection carries raw bytes both ways, each side's end of stream passed on.
    Bridge {
        /// The guest's TCP port.
        port: u16,
    },
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
            Request::Identity => Opcode::Identity,
            Request::Hello { .. } => Opcode::Hello,
            Request::Exec(_) => Opcode::Exec,
            Request::Signal { .. } => Opcode::Signal,
            Request::WriteFile { .. } => Opcode::WriteFile,
            Request::ReadFile { .. } => Opcode::ReadFile,
            Request::Stat(_) => Opcode::Stat,
            Request::List { .. } => Opcode::List,
            Request::Remove { .. } => Opcode::Remove,
            Request::Mkdir { .. } => Opcode::Mkdir,
            Request::Ports => Opcode::Ports,
            Request::WaitPort { .. } => Opcode::WaitPort,
            Request::Bridge { .. } => Opcode::Bridge,
        }
    }

    /// Bytes of the body (opcode and fields), without the length prefix.
    fn body_len(&self) -> usize {
        1 + match self {
            Request::Ping
            | Request::DiskFlush
            | Request::DiskId
            | Request::CounterGet
            | Request::Identity
            | Request::Ports => 0,
            Request::Echo(data) | Request::NetSend(data) => data.len(),
            Request::Touch { .. } => 12,
            Request::Checksum { .. } | Request::Source { .. } => 16,
            Request::DiskWrite { data, .. } => 8 + data.len(),
            Request::DiskRead { .. } => 12,
            Request::NetRecv { .. } | Request::Exit(_) => 4,
            Request::CounterAdd(_) | Request::Sink { .. } => 8,
            Request::ConnectHost { payload, .. } => 4 + payload.len(),
            Request::Hello { .. } => 4,
            Request::Exec(exec) => exec.body_len(),
            Request::Signal { .. } => 8,
            Request::WriteFile { path, data, .. } => 8 + 1 + 4 + 4 + path.len() + data.len(),
            Request::ReadFile { path, .. } => 12 + path.len(),
            Request::Stat(path) => path.len(),
            Request::List { path, .. } => 4 + path.len(),
            Request::Remove { path, .. } => 1 + path.len(),
            Request::Mkdir { path, .. } => 5 + path.len(),
            Request::WaitPort { .. } => 6,
            Request::Bridge { .. } => 2,
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
            Request::Exec(exec) => exec.valid() && self.body_len() <= MAX_FRAME,
            Request::WriteFile { path, data, .. } => {
                valid_path(path) && data.len() <= MAX_FILE_CHUNK
            }
            Request::ReadFile { path, len, .. } => {
                valid_path(path) && len as usize <= MAX_FILE_CHUNK
            }
            Request::Stat(path)
            | Request::List { path, .. }
            | Request::Remove { path, .. }
            | Request::Mkdir { path, .. } => valid_path(path),
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
        self.write_fields(&mut w);
        Ok(w.finish())
    }

    /// Writes the fields after the opcode.
    fn write_fields(&self, w: &mut Writer<'_>) {
        match *self {
            Request::Ping
            | Request::DiskFlush
            | Request::DiskId
            | Request::CounterGet
            | Request::Identity
            | Request::Ports => {}
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
            Request::Exit(code) | Request::Hello { version: code } => w.u32(code),
            Request::Exec(exec) => exec.write(w),
            Request::Signal { pid, signal } => {
                w.u32(pid);
                w.u32(signal);
            }
            Request::WriteFile {
                path,
                offset,
                truncate,
                mode,
                data,
            } => {
                w.u64(offset);
                w.u8(truncate as u8);
                w.u32(mode);
                w.sized(path);
                w.bytes(data);
            }
            Request::ReadFile { path, offset, len } => {
                w.u64(offset);
                w.u32(len);
                w.bytes(path);
            }
            Request::Stat(path) => w.bytes(path),
            Request::List { path, start } => {
                w.u32(start);
                w.bytes(path);
            }
            Request::Remove { path, recursive } => {
                w.u8(recursive as u8);
                w.bytes(path);
            }
            Request::Mkdir {
                path,
                parents,
                mode,
            } => {
                w.u8(parents as u8);
                w.u32(mode);
                w.bytes(path);
            }
            Request::WaitPort { port, timeout_ms } => {
                w.u16(port);
                w.u32(timeout_ms);
            }
            Request::Bridge { port } => w.u16(port),
        }
    }

    /// Decodes the first frame in `bytes`: the request (borrowing from `bytes`) and how many
    /// bytes the frame took.
    pub fn decode(bytes: &'a [u8]) -> Result<(Self, usize), DecodeError> {
        let (body, total) = split_frame(bytes)?;
        let mut r = Reader::new(body);
        let op = r.u8()?;
        let opcode = Opcode::from_u8(op).ok_or(DecodeError::UnknownOpcode(op))?;
        let request = Self::read_fields(opcode, &mut r)?;
        r.end()?;
        if !request.valid() {
            return Err(DecodeError::Invalid);
        }
        Ok((request, total))
    }

    /// Reads the fields of an `opcode` request (the body after the opcode byte).
    fn read_fields(opcode: Opcode, r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(match opcode {
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
            Opcode::Identity => Request::Identity,
            Opcode::Hello => Request::Hello { version: r.u32()? },
            Opcode::Exec => Request::Exec(Exec::read(r)?),
            Opcode::Signal => Request::Signal {
                pid: r.u32()?,
                signal: r.u32()?,
            },
            Opcode::WriteFile => {
                let offset = r.u64()?;
                let truncate = r.flag()?;
                let mode = r.u32()?;
                Request::WriteFile {
                    offset,
                    truncate,
                    mode,
                    path: r.sized()?,
                    data: r.rest(),
                }
            }
            Opcode::ReadFile => Request::ReadFile {
                offset: r.u64()?,
                len: r.u32()?,
                path: r.rest(),
            },
            Opcode::Stat => Request::Stat(r.rest()),
            Opcode::List => Request::List {
                start: r.u32()?,
                path: r.rest(),
            },
            Opcode::Remove => Request::Remove {
                recursive: r.flag()?,
                path: r.rest(),
            },
            Opcode::Mkdir => Request::Mkdir {
                parents: r.flag()?,
                mode: r.u32()?,
                path: r.rest(),
            },
            Opcode::Ports => Request::Ports,
            Opcode::WaitPort => Request::WaitPort {
                port: r.u16()?,
                timeout_ms: r.u32()?,
            },
            Opcode::Bridge => Request::Bridge { port: r.u16()? },
        })
    }
}
