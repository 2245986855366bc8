//! Every order in which the host program and the guest shut a connection down, in each
//! state (connecting, established, closing): nothing either side already sent is lost, and
//! SHUTDOWN follows virtio 1.2 §5.10.6.5.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use super::super::super::packet::{Op, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::super::super::test_support::{guest_header, temp_socket, GUEST};
use super::super::Muxer;
use super::{guest_connection, host_request_then, next, shutdown};

/// Reads exactly `len` bytes from the host's end.
fn read_n(host: &mut std::os::unix::net::UnixStream, len: usize) -> Vec<u8> {
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = vec![0u8; len];
    host.read_exact(&mut got).unwrap();
    got
}

/// The input: `CONNECT 1111\nhello`, then shutdown(SHUT_WR), before the guest
/// answered the REQUEST.
#[test]
fn a_host_half_close_before_the_guest_accepts_still_gets_ok_and_delivers_its_data() {
    let path = temp_socket("hc-connecting");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let (mut host, request) = host_request_then(&mut muxer, &path, 1111, |host| {
        host.write_all(b"hello").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
    });
    let local = request.src_port;
    // The half-close is seen while connecting: the request stands.
    for _ in 0..20 {
        muxer.process_events();
    }
    let mut buf = vec![0u8; 4096];
    assert!(muxer.next_rx(&mut buf).is_none(), "no RST for a half-close");
    assert_eq!(muxer.connection_count(), 1);

    muxer.recv_from_guest(&guest_header(Op::Response, 1111, local, 0), &[]);
    let ok = format!("OK {local}\n");
    assert_eq!(read_n(&mut host, ok.len()), ok.as_bytes());
    let data = next(&mut muxer, &mut buf);
    assert_eq!(data.header.op(), Some(Op::Rw));
    assert_eq!(&buf[..data.len], b"hello");
    let eof = next(&mut muxer, &mut buf).header;
    assert_eq!((eof.op(), eof.flags), (Some(Op::Shutdown), SHUTDOWN_SEND));
    // The guest can still answer, until it closes.
    muxer.recv_from_guest(&guest_header(Op::Rw, 1111, local, 5), b"world");
    assert_eq!(read_n(&mut host, 5), b"world");
    muxer.recv_from_guest(&shutdown(1111, local, SHUTDOWN_RCV | SHUTDOWN_SEND), &[]);
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    assert_eq!(muxer.connection_count(), 0);
    assert_eq!(host.read(&mut buf).unwrap(), 0, "end of stream");
}

/// The same with the half-close already there when the muxer reads the `CONNECT` line.
#[test]
fn a_host_half_close_right_after_its_connect_line_still_gets_ok() {
    let path = temp_socket("hc-line");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let (mut host, request) = host_request_then(&mut muxer, &path, 1111, |host| {
        host.shutdown(Shutdown::Write).unwrap();
    });
    let local = request.src_port;
    for _ in 0..20 {
        muxer.process_events();
    }
    muxer.recv_from_guest(&guest_header(Op::Response, 1111, local, 0), &[]);
    let ok = format!("OK {local}\n");
    assert_eq!(read_n(&mut host, ok.len()), ok.as_bytes());
    let mut buf = vec![0u8; 64];
    let eof = next(&mut muxer, &mut buf).header;
    assert_eq!((eof.op(), eof.flags), (Some(Op::Shutdown), SHUTDOWN_SEND));
    assert_eq!(muxer.connection_count(), 1);
}

#[test]
fn a_host_close_before_the_guest_accepts_still_delivers_what_it_sent() {
    let path = temp_socket("close-connecting");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let (host, request) = host_request_then(&mut muxer, &path, 1111, |host| {
        host.write_all(b"hello").unwrap();
    });
    let local = request.src_port;
    drop(host);
    for _ in 0..20 {
        muxer.process_events();
    }
    let mut buf = vec![0u8; 4096];
    assert!(muxer.next_rx(&mut buf).is_none(), "no RST: data waits");
    muxer.recv_from_guest(&guest_header(Op::Response, 1111, local, 0), &[]);
    let data = next(&mut muxer, &mut buf);
    assert_eq!(data.header.op(), Some(Op::Rw));
    assert_eq!(&buf[..data.len], b"hello");
    // Nobody can read an answer: both directions are shut, and the guest answers with RST.
    let eof = next(&mut muxer, &mut buf).header;
    assert_eq!(eof.op(), Some(Op::Shutdown));
    assert_eq!(eof.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    muxer.recv_from_guest(&guest_header(Op::Rst, 1111, local, 0), &[]);
    assert_eq!(muxer.connection_count(), 0);
}

#[test]
fn a_guest_shutdown_before_it_accepts_is_reset() {
    let path = temp_socket("shut-connecting");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let (mut host, request) = host_request_then(&mut muxer, &path, 1111, |_| {});
    let local = request.src_port;
    muxer.recv_from_guest(&shutdown(1111, local, SHUTDOWN_SEND), &[]);
    let mut buf = vec![0u8; 64];
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    assert_eq!(muxer.connection_count(), 0);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut buf).unwrap(), 0, "closed without OK");
}

/// The host program sends its last words and closes while the guest's data is on its way:
/// writing that data fails, and the last words must still reach the guest.
#[test]
fn a_host_close_while_the_guest_sends_still_delivers_the_host_data() {
    let path = temp_socket("close-crossing");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut host = guest_connection(&mut muxer, &path, 790, 5010);
    host.write_all(b"last words").unwrap();
    drop(host);
    muxer.recv_from_guest(&guest_header(Op::Rw, 790, 5010, 3), b"req");
    let mut buf = vec![0u8; 4096];
    let data = next(&mut muxer, &mut buf);
    assert_eq!(data.header.op(), Some(Op::Rw));
    assert_eq!(&buf[..data.len], b"last words");
    let eof = next(&mut muxer, &mut buf).header;
    assert_eq!(eof.op(), Some(Op::Shutdown));
    assert_eq!(eof.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!(muxer.connection_count(), 1, "waits for the guest's RST");
}

/// Closing: the host half-closed (the guest was told SEND), then closes its socket: the
/// guest is told RCV too, a clean disconnect it answers with RST.
#[test]
fn a_host_close_after_its_half_close_tells_the_guest_both_directions() {
    let path = temp_socket("hc-then-close");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let host = guest_connection(&mut muxer, &path, 791, 5011);
    host.shutdown(Shutdown::Write).unwrap();
    let mut buf = vec![0u8; 64];
    let eof = next(&mut muxer, &mut buf).header;
    assert_eq!((eof.op(), eof.flags), (Some(Op::Shutdown), SHUTDOWN_SEND));
    drop(host);
    let closed = next(&mut muxer, &mut buf).header;
    assert_eq!(closed.op(), Some(Op::Shutdown));
    assert_eq!(closed.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    muxer.recv_from_guest(&guest_header(Op::Rst, 791, 5011, 0), &[]);
    assert_eq!(muxer.connection_count(), 0);
}

/// The guest will receive no more: host data stops, the host program's writes fail instead
/// of piling up, the guest's data still reaches the host, and a host close ends it cleanly.
#[test]
fn a_guest_rcv_shutdown_fails_host_writes_and_still_carries_guest_data() {
    let path = temp_socket("guest-rcv");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut host = guest_connection(&mut muxer, &path, 792, 5012);
    muxer.recv_from_guest(&shutdown(792, 5012, SHUTDOWN_RCV), &[]);
    let err = host.write_all(b"unwanted").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
    muxer.recv_from_guest(&guest_header(Op::Rw, 792, 5012, 4), b"more");
    assert_eq!(read_n(&mut host, 4), b"more");
    drop(host);
    let mut buf = vec![0u8; 64];
    let closed = next(&mut muxer, &mut buf).header;
    assert_eq!(closed.op(), Some(Op::Shutdown));
    assert_eq!(closed.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!(muxer.connection_count(), 1, "waits for the guest's RST");
}

/// The guest shuts RCV and SEND in two packets: the second completes the disconnect (RST),
/// after what it sent reached the host.
#[test]
fn guest_shutdown_flags_accumulate_to_a_full_close() {
    let path = temp_socket("guest-accumulate");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut host = guest_connection(&mut muxer, &path, 793, 5013);
    muxer.recv_from_guest(&shutdown(793, 5013, SHUTDOWN_RCV), &[]);
    muxer.recv_from_guest(&guest_header(Op::Rw, 793, 5013, 3), b"bye");
    // Flags are hints that stay set: a SHUTDOWN without flags clears nothing.
    muxer.recv_from_guest(&shutdown(793, 5013, 0), &[]);
    assert_eq!(muxer.connection_count(), 1);
    muxer.recv_from_guest(&shutdown(793, 5013, SHUTDOWN_SEND), &[]);
    let mut buf = vec![0u8; 64];
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    assert_eq!(muxer.connection_count(), 0);
    let mut got = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
}
