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
//! the guest sends `len` bytes of [`source_byte`]. After [`Response::Bridged`] the connection
//! carries raw bytes to and from a guest TCP port until either side closes.
//!
//! Both guests speak this one protocol: a host starts with [`Request::Hello`] to learn the
//! guest's [`PROTOCOL_VERSION`] and [`GuestKind`]. An opcode a guest does not know is answered
//! [`ErrorCode::UnknownOpcode`], one it knows but does not serve [`ErrorCode::Unsupported`];
//! neither closes the connection. Zygote's own guest serves the memory, disk, net and vsock
//! operations; the Linux agent serves `Ping`, `Echo`, the counter, `Touch`, `Sink`, `Source`
//! and its own exec, file, port and bridge operations.
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

mod checksum;
mod codec;
mod error;
mod exec;
mod files;
mod hello;
mod opcode;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use checksum::{fill_source, source_byte, source_checksum, StreamChecksum};
pub use codec::frame_len;
pub use error::{DecodeError, EncodeError};
pub use exec::{Exec, ExitStatus, OutputStream, Strings};
pub use files::{DirEntry, Entries, FileKind, FileStat, PortList, MAX_FILE_CHUNK, MAX_PATH};
pub use hello::{GuestKind, PROTOCOL_VERSION};
pub use opcode::{ErrorCode, Opcode};
pub use request::Request;
pub use response::Response;

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

/// Length of the VM id in [`Response::Identity`] (that of [`crate::VmIdentity::id`]).
pub use crate::identity::VM_ID_LEN;

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
