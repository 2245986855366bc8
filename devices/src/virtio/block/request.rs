//! Parsing a descriptor chain into a block request, and carrying it out.

use std::io;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Address, Bytes, GuestAddress};

use super::{BlockBackend, ID_BYTES, MAX_REQUEST_BYTES, SECTOR_SIZE, SEG_MAX};
use crate::virtio::chain::{
    read_gathered, segments_in_memory, split_front, split_last_byte, total_len,
};
use crate::virtio::{ChainBuffers, Memory, Segment};

/// Size of `struct virtio_blk_outhdr`: type (le32), ioprio (le32), sector (le64).
const HEADER_LEN: u64 = 16;
/// Bytes moved between the disk and guest memory at a time.
const CHUNK: usize = 64 * 1024;
/// Most buffers a request may have: [`SEG_MAX`] data buffers, the header and the status.
/// virtio-queue follows indirect tables although the device does not offer them, so without
/// this a chain could carry thousands.
const MAX_SEGMENTS: usize = SEG_MAX as usize + 2;

/// Why a request completed with an error status.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The device-readable part is shorter than the 16-byte request header.
    #[error("request header is {0} bytes, expected 16")]
    HeaderTooShort(u64),
    /// The header or a data buffer is not inside guest memory.
    #[error("request buffer is not inside guest memory")]
    BufferOutsideMemory,
    /// The chain has more buffers than `seg_max` allows (data buffers, header and status).
    #[error("request has {0} buffers, at most {MAX_SEGMENTS} allowed")]
    TooManySegments(usize),
    /// The request type is not one the device implements.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// Data buffers point the wrong way for the request type.
    #[error("request has data buffers in the wrong direction")]
    WrongDirection,
    /// The data length is not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(u64),
    /// The data length is above [`MAX_REQUEST_BYTES`].
    #[error("data length {0} is above the request limit")]
    TooLarge(u64),
    /// The request reaches past the end of the disk.
    #[error("sector {sector} with {len} bytes is past the end of the disk")]
    OutOfRange {
        /// First sector of the request.
        sector: u64,
        /// Data length in bytes.
        len: u64,
    },
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// The backend failed.
    #[error("disk I/O failed: {0}")]
    Io(#[from] io::Error),
    /// Copying between guest memory and the disk failed.
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

impl RequestError {
    /// The virtio-blk status byte reporting this error.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// What a well-formed request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Command {
    /// Read the disk at byte `offset` into `data`.
    In { offset: u64, data: Vec<Segment> },
    /// Write `data` to the disk at byte `offset`.
    Out { offset: u64, data: Vec<Segment> },
    /// Make writes durable.
    Flush,
    /// Write the ID string into `data`.
    GetId { data: Vec<Segment> },
}

/// A request with a place for its status byte; the command itself may be bad.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) status: GuestAddress,
    pub(super) command: Result<Command, RequestError>,
}

/// Parses a chain's buffers. `None` when there is no writable status byte inside guest memory,
/// so the request cannot even be answered.
pub(super) fn parse(mem: &Memory, buffers: &ChainBuffers, capacity: u64) -> Option<Request> {
    let (writable, status) = split_last_byte(&buffers.writable)?;
    if !segments_in_memory(
        mem,
        &[Segment {
            addr: status,
            len: 1,
        }],
    ) {
        return None;
    }
    let segments = buffers.readable.len() + buffers.writable.len();
    let command = if segments > MAX_SEGMENTS {
        Err(RequestError::TooManySegments(segments))
    } else {
        parse_command(mem, &buffers.readable, writable, capacity)
    };
    Some(Request { status, command })
}

fn parse_command(
    mem: &Memory,
    readable: &[Segment],
    writable: Vec<Segment>,
    capacity: u64,
) -> Result<Command, RequestError> {
    let (header_segs, readable_data) = split_front(readable, HEADER_LEN);
    if total_len(&header_segs) < HEADER_LEN {
        return Err(RequestError::HeaderTooShort(total_len(&header_segs)));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    read_gathered(mem, &header_segs, &mut header).map_err(|_| RequestError::BufferOutsideMemory)?;
    let [t0, t1, t2, t3, _, _, _, _, s @ ..] = header;
    let kind = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes(s);
    let command = match kind {
        VIRTIO_BLK_T_IN => only(writable, &readable_data, |data| Command::In {
            offset: 0,
            data,
        })?,
        VIRTIO_BLK_T_OUT => only(readable_data, &writable, |data| Command::Out {
            offset: 0,
            data,
        })?,
        VIRTIO_BLK_T_FLUSH => only(Vec::new(), &readable_data, |_| Command::Flush)?,
        VIRTIO_BLK_T_GET_ID => only(writable, &readable_data, |data| Command::GetId { data })?,
        other => return Err(RequestError::Unsupported(other)),
    };
    check_command(mem, command, sector, capacity)
}

/// Builds a command from `data`, refusing data buffers in the other direction.
fn only(
    data: Vec<Segment>,
    other_direction: &[Segment],
    build: impl FnOnce(Vec<Segment>) -> Command,
) -> Result<Command, RequestError> {
    if other_direction.is_empty() {
        Ok(build(data))
    } else {
        Err(RequestError::WrongDirection)
    }
}

/// Checks data buffers against guest memory and sector ranges against the disk, and fills in
/// the byte offset of reads and writes.
fn check_command(
    mem: &Memory,
    command: Command,
    sector: u64,
    capacity: u64,
) -> Result<Command, RequestError> {
    match command {
        Command::In { data, .. } => {
            let offset = check_transfer(mem, &data, sector, capacity)?;
            Ok(Command::In { offset, data })
        }
        Command::Out { data, .. } => {
            let offset = check_transfer(mem, &data, sector, capacity)?;
            Ok(Command::Out { offset, data })
        }
        Command::GetId { data } if segments_in_memory(mem, &data) => Ok(Command::GetId { data }),
        Command::GetId { .. } => Err(RequestError::BufferOutsideMemory),
        Command::Flush => Ok(Command::Flush),
    }
}

/// Validates a read or write of `data` at `sector`; returns its byte offset on the disk.
fn check_transfer(
    mem: &Memory,
    data: &[Segment],
    sector: u64,
    capacity: u64,
) -> Result<u64, RequestError> {
    let len = total_len(data);
    if len & (SECTOR_SIZE - 1) != 0 {
        return Err(RequestError::UnalignedLength(len));
    }
    if len > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge(len));
    }
    let end = sector.checked_add(len / SECTOR_SIZE);
    if end.is_none_or(|end| end > capacity) {
        return Err(RequestError::OutOfRange { sector, len });
    }
    if !segments_in_memory(mem, data) {
        return Err(RequestError::BufferOutsideMemory);
    }
    // Cannot overflow: sector + len / 512 <= capacity = disk size / 512.
    Ok(sector * SECTOR_SIZE)
}

/// Carries out a checked command; returns how many bytes it wrote to guest memory (not
/// counting the status byte).
pub(super) fn execute(
    command: &Command,
    mem: &Memory,
    disk: &mut dyn BlockBackend,
    read_only: bool,
    id: &[u8; ID_BYTES],
) -> Result<u32, RequestError> {
    match command {
        Command::In { offset, data } => {
            disk_to_guest(mem, disk, data, *offset)?;
            // At most MAX_REQUEST_BYTES, well below u32::MAX.
            Ok(total_len(data) as u32)
        }
        Command::Out { .. } if read_only => Err(RequestError::ReadOnly),
        Command::Out { offset, data } => guest_to_disk(mem, disk, data, *offset).map(|()| 0),
        Command::Flush if read_only => Ok(0),
        Command::Flush => disk.flush().map(|()| 0).map_err(RequestError::from),
        Command::GetId { data } => write_id(mem, data, id),
    }
}

fn disk_to_guest(
    mem: &Memory,
    disk: &mut dyn BlockBackend,
    data: &[Segment],
    mut offset: u64,
) -> Result<(), RequestError> {
    let mut buf = chunk_buffer(data);
    for_each_chunk(data, |addr, len| {
        // `len` is at most the buffer's length (see `chunk_buffer`).
        let chunk = &mut buf[..len];
        disk.read_at(chunk, offset)?;
        mem.write_slice(chunk, addr)?;
        offset += len as u64;
        Ok(())
    })
}

fn guest_to_disk(
    mem: &Memory,
    disk: &mut dyn BlockBackend,
    data: &[Segment],
    mut offset: u64,
) -> Result<(), RequestError> {
    let mut buf = chunk_buffer(data);
    for_each_chunk(data, |addr, len| {
        // `len` is at most the buffer's length (see `chunk_buffer`).
        let chunk = &mut buf[..len];
        mem.read_slice(chunk, addr)?;
        disk.write_at(chunk, offset)?;
        offset += len as u64;
        Ok(())
    })
}

/// A bounce buffer as large as the largest piece [`for_each_chunk`] yields for `data`: a 4 KiB
/// request zeroes 4 KiB, not [`CHUNK`] (half the cost of a small read, measured by the
/// `virtio_mock` bench).
fn chunk_buffer(data: &[Segment]) -> Vec<u8> {
    let largest = data.iter().map(|s| s.len as usize).max().unwrap_or(0);
    vec![0u8; largest.min(CHUNK)]
}

/// Calls `f` with each piece of at most [`CHUNK`] bytes of `data`, in order.
fn for_each_chunk(
    data: &[Segment],
    mut f: impl FnMut(GuestAddress, usize) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    for seg in data {
        let mut done = 0u64;
        while done < u64::from(seg.len) {
            let len = (u64::from(seg.len) - done).min(CHUNK as u64);
            let addr = seg
                .addr
                .checked_add(done)
                .ok_or(RequestError::BufferOutsideMemory)?;
            f(addr, len as usize)?;
            done += len;
        }
    }
    Ok(())
}

fn write_id(mem: &Memory, data: &[Segment], id: &[u8; ID_BYTES]) -> Result<u32, RequestError> {
    let mut rest: &[u8] = id;
    for seg in data {
        let n = (seg.len as usize).min(rest.len());
        let (now, later) = rest.split_at(n);
        mem.write_slice(now, seg.addr)?;
        rest = later;
    }
    Ok((ID_BYTES - rest.len()) as u32)
}
