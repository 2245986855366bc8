//! One chain at a time: reading a transmitted frame out of guest memory, writing a received
//! frame into it. Every length and address the guest gave is checked before it is used.

use super::{MAX_FRAME_LEN, NET_HDR_LEN};
use crate::virtio::chain::{read_gathered, segments_in_memory, total_len, SegmentWriter};
use crate::virtio::{ChainBuffers, ChainError, Memory};

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
    if !segments_in_memory(mem, &buffers.readable) {
        return Err(TxError::OutsideMemory);
    }
    // At most NET_HDR_LEN + MAX_FRAME_LEN, checked above.
    buf.resize(total as usize, 0);
    read_gathered(mem, &buffers.readable, buf).map_err(|_| TxError::OutsideMemory)?;
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
    if !segments_in_memory(mem, &buffers.writable) {
        return Err(RxError::OutsideMemory);
    }
    let needed = (NET_HDR_LEN + frame.len()) as u64;
    let available = total_len(&buffers.writable);
    if available < needed {
        return Err(RxError::TooSmall { needed, available });
    }
    let mut header = [0u8; NET_HDR_LEN];
    header[10..12].copy_from_slice(&1u16.to_le_bytes());
    let mut writer = SegmentWriter::new(&buffers.writable);
    writer
        .write(mem, &header)
        .and_then(|()| writer.write(mem, frame))
        .map_err(|_| RxError::OutsideMemory)?;
    // `needed` is at most NET_HDR_LEN + MAX_FRAME_LEN.
    Ok(needed as u32)
}
