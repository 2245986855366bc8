//! The operations both guests serve: `Touch`, `Sink` and `Source`, here on process memory.

use std::io::{self, Read, Write};

use zygote_guest_proto::agent::{fill_source, ErrorCode, Response, StreamChecksum};
use zygote_guest_proto::{pattern_word, Checksum, WORDS_PER_MIB};

use crate::conn::send;

/// Most MiB one `Touch` allocates here.
const MAX_TOUCH_MIB: u32 = 1024;

/// Bytes moved per read or write while sinking or sourcing.
const CHUNK: usize = 256 * 1024;

/// Writes `mib` MiB of the pattern to fresh process memory and checksums it read back;
/// `addr` is the buffer's virtual address.
pub(crate) fn touch(mib: u32, pattern: u64) -> Response<'static> {
    if mib == 0 || mib > MAX_TOUCH_MIB {
        return Response::Error(ErrorCode::InvalidArgument);
    }
    let words = mib as usize * WORDS_PER_MIB as usize;
    let mut memory: Vec<u64> = Vec::new();
    if memory.try_reserve_exact(words).is_err() {
        return Response::Error(ErrorCode::Busy);
    }
    memory.extend((0..words as u64).map(|index| pattern_word(pattern, index)));
    let mut checksum = Checksum::new();
    for &word in std::hint::black_box(&memory).iter() {
        checksum.update(word);
    }
    Response::Touched {
        addr: memory.as_ptr() as u64,
        checksum: checksum.value(),
    }
}

/// Reads `len` raw bytes, then answers their checksum.
pub(crate) fn sink(
    conn: &mut (impl Read + Write),
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    len: u64,
) -> io::Result<()> {
    buf.resize(buf.len().max(CHUNK), 0);
    let mut checksum = StreamChecksum::new();
    let mut left = len;
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        let n = conn.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        checksum.update(&buf[..n]);
        left -= n as u64;
    }
    send(
        conn,
        out,
        &Response::Sunk {
            len,
            checksum: checksum.value(),
        },
    )
}

/// Answers `Sourcing`, then writes `len` bytes of the source pattern for `seed`.
pub(crate) fn source(
    conn: &mut impl Write,
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    len: u64,
    seed: u64,
) -> io::Result<()> {
    send(conn, out, &Response::Sourcing { len })?;
    buf.resize(buf.len().max(CHUNK), 0);
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        fill_source(seed, at, &mut buf[..n]);
        conn.write_all(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}
