//! `Bridge`: the connection becomes raw bytes to and from a guest TCP port.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};

use zygote_guest_proto::agent::ErrorCode;

use crate::conn::Conn;

/// Bytes copied per read: a few pages (each first touch is a page fault), more than the 4 KiB
/// a vsock packet carries to the guest.
const CHUNK: usize = 16 * 1024;

/// Connects to `port` on the guest's loopback address (IPv4, then IPv6).
pub(crate) fn open(port: u16) -> Result<TcpStream, ErrorCode> {
    let addrs = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ];
    let tcp = TcpStream::connect(&addrs[..]).map_err(|_| ErrorCode::ConnectFailed)?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Copies both ways until both directions ended. Each side's end of stream is passed on as a
/// half-close, so a request/response exchange over the bridge completes; an error on either
/// side ends both directions.
pub(crate) fn run<C: Conn>(conn: C, tcp: TcpStream) {
    let (Ok(conn_reader), Ok(tcp_writer)) = (conn.try_clone(), tcp.try_clone()) else {
        return;
    };
    let upstream = std::thread::spawn(move || {
        let mut tcp_writer = tcp_writer;
        let failed = copy(conn_reader, &mut tcp_writer).is_err();
        let _ = tcp_writer.shutdown(end_how(failed));
    });
    let mut conn = conn;
    let failed = copy(&tcp, &mut conn).is_err();
    let _ = Conn::shutdown(&conn, end_how(failed));
    if failed {
        let _ = tcp.shutdown(Shutdown::Both);
    }
    let _ = upstream.join();
}

/// How to shut the destination down once a copy ended: its write side after a clean end of
/// stream, both sides after an error (which also wakes the other direction's reader).
fn end_how(failed: bool) -> Shutdown {
    match failed {
        false => Shutdown::Write,
        true => Shutdown::Both,
    }
}

/// Copies until the end of `from` (`Ok`) or an error on either side.
fn copy(mut from: impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
