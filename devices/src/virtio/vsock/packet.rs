//! The virtio-vsock packet header (virtio 1.2 §5.10.6), parsed from and written to plain bytes,
//! and reading a whole packet out of a tx chain.

use crate::virtio::chain::{read_gathered, total_len};
use crate::virtio::{Memory, Segment};

/// Size of the little-endian header that starts every packet.
pub const HEADER_LEN: usize = 44;
/// The host's context ID.
pub const HOST_CID: u64 = 2;
/// The only socket type supported: stream.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload one packet carries (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Shutdown flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset or refused.
    Rst = 3,
    /// The sender stops receiving and/or sending (see the flags).
    Shutdown = 4,
    /// Data.
    Rw = 5,
    /// The sender's receive buffer state changed.
    CreditUpdate = 6,
    /// The sender asks for a credit update.
    CreditRequest = 7,
}

impl Op {
    fn from_u16(op: u16) -> Option<Self> {
        Some(match op {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }
}

/// A packet header, with the operation decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type (only [`TYPE_STREAM`] is served).
    pub type_: u16,
    /// Raw operation; see [`Header::op`].
    pub op: u16,
    /// Operation flags (shutdown flags).
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far (wrapping).
    pub fwd_cnt: u32,
}

fn u64_at(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    u64::from_le_bytes(std::array::from_fn(|i| b[at + i]))
}

fn u32_at(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_le_bytes(std::array::from_fn(|i| b[at + i]))
}

fn u16_at(b: &[u8; HEADER_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes a header; every bit pattern decodes (validation is the muxer's job).
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The operation, if it is one the spec defines.
    pub fn op(&self) -> Option<Op> {
        Op::from_u16(self.op)
    }
}

/// Why a packet the guest sent could not be taken whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Not even the header could be read: the chain is malformed, shorter than a header, or
    /// outside guest memory. There is nobody to answer.
    #[error("vsock packet header cannot be read")]
    Unreadable,
    /// The header was read but its payload cannot be: longer than [`MAX_PAYLOAD`] or than the
    /// chain, or outside guest memory. The stream has lost data.
    #[error("payload of {} bytes announced by the vsock packet header cannot be read", .0.len)]
    Truncated(Header),
}

/// Reads a packet (header, then `header.len` payload bytes) from a tx chain's buffers into
/// `buf`, which must hold `HEADER_LEN + MAX_PAYLOAD` bytes; returns the header and payload
/// length.
pub(super) fn read_packet(
    mem: &Memory,
    readable: &[Segment],
    buf: &mut [u8],
) -> Result<(Header, usize), PacketError> {
    let available = total_len(readable);
    if available < HEADER_LEN as u64 {
        return Err(PacketError::Unreadable);
    }
    let mut bytes = [0u8; HEADER_LEN];
    read_gathered(mem, readable, &mut bytes).map_err(|_| PacketError::Unreadable)?;
    let header = Header::from_bytes(&bytes);
    let len = header.len as usize;
    if len > MAX_PAYLOAD || (HEADER_LEN + len) as u64 > available {
        return Err(PacketError::Truncated(header));
    }
    let packet = buf
        .get_mut(..HEADER_LEN + len)
        .ok_or(PacketError::Truncated(header))?;
    read_gathered(mem, readable, packet).map_err(|_| PacketError::Truncated(header))?;
    Ok((header, len))
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::testing::guest_memory;

    #[test]
    fn header_round_trip_and_layout() {
        let header = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 52,
            len: 5,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: SHUTDOWN_SEND,
            buf_alloc: 65536,
            fwd_cnt: 7,
        };
        let bytes = header.to_bytes();
        assert_eq!(bytes[0], 3);
        assert_eq!(bytes[20], 52);
        assert_eq!(bytes[30], 5);
        assert_eq!(Header::from_bytes(&bytes), header);
        assert_eq!(header.op(), Some(Op::Rw));
        let odd = Header { op: 99, ..header };
        assert_eq!(odd.op(), None);
    }

    #[test]
    fn read_packet_reports_unreadable_and_truncated_packets_by_type() {
        let mem = guest_memory();
        let header = Header {
            len: 5,
            ..Header::from_bytes(&[0; HEADER_LEN])
        };
        mem.write_slice(&header.to_bytes(), GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(0x2000)).unwrap();
        let seg = |addr, len| Segment {
            addr: GuestAddress(addr),
            len,
        };
        let mut buf = vec![0u8; HEADER_LEN + MAX_PAYLOAD];
        let whole = [seg(0x1000, HEADER_LEN as u32), seg(0x2000, 5)];
        assert_eq!(read_packet(&mem, &whole, &mut buf), Ok((header, 5)));
        assert_eq!(&buf[HEADER_LEN..HEADER_LEN + 5], b"hello");
        let short = [seg(0x1000, 20)];
        assert_eq!(
            read_packet(&mem, &short, &mut buf),
            Err(PacketError::Unreadable)
        );
        let outside = [seg(u64::MAX - 100, HEADER_LEN as u32)];
        assert_eq!(
            read_packet(&mem, &outside, &mut buf),
            Err(PacketError::Unreadable)
        );
        let no_payload = [seg(0x1000, HEADER_LEN as u32)];
        assert_eq!(
            read_packet(&mem, &no_payload, &mut buf),
            Err(PacketError::Truncated(header))
        );
    }
}
