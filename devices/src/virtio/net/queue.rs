//! One chain at a time: reading a transmitted frame out of guest memory, writing a received
//! frame into it. Every length and address the guest gave is checked before it is used.

use vm_memory::{Address, Bytes, GuestMemoryBackend};

use super::{MAX_FRAME_LEN, NET_HDR_LEN};
use crate::virtio::{ChainBuffers, ChainError, Memory, Segment};

/// Why a transmit chain was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The descriptor chain itself is malformed.
    #[error("malformed transmit chain: {0}")]
    Chain(#[from] ChainError),
    /// The chain has a device-writable buffer; a transmit chain is read-only.
    #[error("transmit chain has a device-writable buffer")]
    WritableBuffer,
    /// The chain is shorter than the 12-byte header.
    #[error("transmit chain of {0} bytes is shorter than the virtio-net header")]
    ShortHeader(u64),
    /// The chain holds a header and no frame.
    #[error("transmit chain holds no frame")]
    EmptyFrame,
    /// The frame is longer than [`MAX_FRAME_LEN`].
    #[error("transmitted frame of {0} bytes is over the limit")]
    FrameTooBig(u64),
    /// A buffer lies outside guest memory.
    #[error("transmit buffer outside guest memory")]
    OutsideMemory,
}

/// Why a received frame could not be written into a receive chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    /// The descriptor chain itself is malformed.
    #[error("malformed receive chain: {0}")]
    Chain(#[from] ChainError),
    /// The chain has a device-readable buffer; a receive chain is write-only.
    #[error("receive chain has a device-readable buffer")]
    ReadableBuffer,
    /// A buffer lies outside guest memory.
    #[error("receive buffer outside guest memory")]
    OutsideMemory,
    /// Header and frame need more room than the chain has; the chain itself is fine.
    #[error("receive chain of {available} bytes is too small for {needed}")]
    TooSmall {
        /// Header plus frame.
        needed: u64,
        /// The chain's writable bytes.
        available: u64,
    },
}

/// Copies the header and frame a transmit chain holds into `buf`, returning the frame.
pub(super) fn read_tx_frame<'a>(
    mem: &Memory,
    buffers: &ChainBuffers,
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], TxError> {
    if !buffers.writable.is_empty() {
        return Err(TxError::WritableBuffer);
    }
    let total = total_len(&buffers.readable);
    let hdr = NET_HDR_LEN as u64;
    if total < hdr {
        return Err(TxError::ShortHeader(total));
    }
    if total == hdr {
        return Err(TxError::EmptyFrame);
    }
    if total - hdr > MAX_FRAME_LEN as u64 {
        return Err(TxError::FrameTooBig(total - hdr));
    }
    check_ranges(mem, &buffers.readable).map_err(|()| TxError::OutsideMemory)?;
    // At most NET_HDR_LEN + MAX_FRAME_LEN, checked above.
    buf.resize(total as usize, 0);
    let mut offset = 0;
    for seg in &buffers.readable {
        let end = offset + seg.len as usize;
        mem.read_slice(&mut buf[offset..end], seg.addr)
            .map_err(|_| TxError::OutsideMemory)?;
        offset = end;
    }
    Ok(&buf[NET_HDR_LEN..])
}

/// Writes a `virtio_net_hdr_v1` (no offloads, `num_buffers = 1`) and `frame` into a receive
/// chain, returning the bytes written. Nothing is written unless all of it fits.
pub(super) fn write_rx_frame(
    mem: &Memory,
    buffers: &ChainBuffers,
    frame: &[u8],
) -> Result<u32, RxError> {
    if !buffers.readable.is_empty() {
        return Err(RxError::ReadableBuffer);
    }
    check_ranges(mem, &buffers.writable).map_err(|()| RxError::OutsideMemory)?;
    let needed = (NET_HDR_LEN + frame.len()) as u64;
    let available = total_len(&buffers.writable);
    if available < needed {
        return Err(RxError::TooSmall { needed, available });
    }
    let mut header = [0u8; NET_HDR_LEN];
    header[10..12].copy_from_slice(&1u16.to_le_bytes());
    let mut cursor = Cursor::new(&buffers.writable);
    cursor.write(mem, &header)?;
    cursor.write(mem, frame)?;
    // `needed` is at most NET_HDR_LEN + MAX_FRAME_LEN.
    Ok(needed as u32)
}

fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

fn check_ranges(mem: &Memory, segments: &[Segment]) -> Result<(), ()> {
    let inside = segments
        .iter()
        .all(|s| GuestMemoryBackend::check_range(mem, s.addr, s.len as usize));
    if inside {
        Ok(())
    } else {
        Err(())
    }
}

/// A write position across a chain's writable buffers.
struct Cursor<'a> {
    segments: &'a [Segment],
    /// Bytes already written into `segments[0]`.
    offset: u32,
}

impl<'a> Cursor<'a> {
    fn new(segments: &'a [Segment]) -> Self {
        Self {
            segments,
            offset: 0,
        }
    }

    /// Writes all of `data`; the caller made sure the buffers have room for it.
    fn write(&mut self, mem: &Memory, mut data: &[u8]) -> Result<(), RxError> {
        while !data.is_empty() {
            let (seg, rest) = self.segments.split_first().ok_or(RxError::TooSmall {
                needed: data.len() as u64,
                available: 0,
            })?;
            let room = (seg.len - self.offset) as usize;
            let n = room.min(data.len());
            let addr = seg
                .addr
                .checked_add(u64::from(self.offset))
                .ok_or(RxError::OutsideMemory)?;
            mem.write_slice(&data[..n], addr)
                .map_err(|_| RxError::OutsideMemory)?;
            data = &data[n..];
            if n == room {
                self.segments = rest;
                self.offset = 0;
            } else {
                self.offset += n as u32;
            }
        }
        Ok(())
    }
}
