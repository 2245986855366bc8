//! The connection the agent serves: a byte stream it can split in two and half-close, and the
//! framing of requests and responses on it.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use zygote_guest_proto::agent::{Response, LEN_PREFIX, MAX_FRAME};

/// A stream the agent serves requests on: vsock in the guest, a Unix socket in host tests.
/// Its fd is polled while a command runs, to notice the host hanging up.
pub trait Conn: Read + Write + AsRawFd + Send + Sized + 'static {
    /// A second handle on the same stream (for a bridge, which reads and writes at once).
    fn try_clone(&self) -> io::Result<Self>;
    /// `shutdown(2)`: `Write` says the agent will write no more (reading goes on), `Both`
    /// also wakes a reader blocked on the other handle.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl Conn for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }
}

/// What reading a request frame found.
pub(crate) enum Incoming {
    /// A whole frame (length prefix included) is in the buffer.
    Frame,
    /// The peer closed the connection between frames.
    Closed,
    /// The length prefix is 0 or above `MAX_FRAME`: the stream cannot be trusted further.
    BadLength,
}

/// Reads one frame into `frame` (cleared first).
pub(crate) fn read_frame(conn: &mut impl Read, frame: &mut Vec<u8>) -> io::Result<Incoming> {
    let mut prefix = [0u8; LEN_PREFIX];
    let mut got = 0;
    while got < LEN_PREFIX {
        match conn.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Ok(Incoming::Closed),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let body = u32::from_le_bytes(prefix) as usize;
    if body == 0 || body > MAX_FRAME {
        return Ok(Incoming::BadLength);
    }
    frame.clear();
    frame.extend_from_slice(&prefix);
    frame.resize(LEN_PREFIX + body, 0);
    conn.read_exact(&mut frame[LEN_PREFIX..])?;
    Ok(Incoming::Frame)
}

/// Encodes `response` into `buf` and writes it as one `write_all`.
pub(crate) fn send(
    conn: &mut impl Write,
    buf: &mut Vec<u8>,
    response: &Response<'_>,
) -> io::Result<()> {
    buf.clear();
    buf.resize(response.encoded_len(), 0);
    let n = response
        .encode(buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    conn.write_all(&buf[..n])
}
