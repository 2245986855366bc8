//! Framing (the length prefix) and the field-by-field writer and reader both message types
//! share.

use super::{DecodeError, EncodeError, LEN_PREFIX, MAX_DISK_SECTORS, MAX_FRAME, SECTOR_SIZE};

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
pub(super) fn split_frame(bytes: &[u8]) -> Result<(&[u8], usize), DecodeError> {
    let total = frame_len(bytes)?;
    let body = bytes
        .get(LEN_PREFIX..total)
        .ok_or(DecodeError::Incomplete)?;
    Ok((body, total))
}

/// Writes frames field by field; the caller checked the size beforehand.
pub(super) struct Writer<'b> {
    out: &'b mut [u8],
    at: usize,
}

impl<'b> Writer<'b> {
    /// Starts a frame of `body` bytes in `out`, or says how much room it needs.
    pub(super) fn start(out: &'b mut [u8], body: usize) -> Result<Self, EncodeError> {
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

    pub(super) fn bytes(&mut self, bytes: &[u8]) {
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    pub(super) fn u8(&mut self, value: u8) {
        self.bytes(&[value]);
    }

    pub(super) fn u16(&mut self, value: u16) {
        self.bytes(&value.to_le_bytes());
    }

    pub(super) fn u32(&mut self, value: u32) {
        self.bytes(&value.to_le_bytes());
    }

    /// A byte string with a `u32` length before it (the caller checked it fits a `u32`).
    pub(super) fn sized(&mut self, bytes: &[u8]) {
        self.u32(bytes.len() as u32);
        self.bytes(bytes);
    }

    pub(super) fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    pub(super) fn finish(self) -> usize {
        self.at
    }
}

/// Reads a frame body field by field.
pub(super) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `body` from its first byte.
    pub(super) fn new(body: &'a [u8]) -> Self {
        Reader { rest: body }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Invalid);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        let mut value = [0u8; 2];
        value.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(value))
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut value = [0u8; 4];
        value.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(value))
    }

    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut value = [0u8; 8];
        value.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(value))
    }

    /// A byte string written by [`Writer::sized`].
    pub(super) fn sized(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A `u8` that must be 0 or 1.
    pub(super) fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid),
        }
    }

    /// The rest of the body.
    pub(super) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.rest)
    }

    /// Whether every byte was read.
    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Fails unless every byte was read.
    pub(super) fn end(&self) -> Result<(), DecodeError> {
        match self.rest.is_empty() {
            true => Ok(()),
            false => Err(DecodeError::Invalid),
        }
    }
}

/// Whether `data` is 1 to [`MAX_DISK_SECTORS`] whole sectors.
pub(super) fn whole_sectors(data: &[u8]) -> bool {
    !data.is_empty()
        && data.len() % SECTOR_SIZE == 0
        && data.len() <= MAX_DISK_SECTORS as usize * SECTOR_SIZE
}
