use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::super::packet::Op;
use super::super::test_support::{guest_header, temp_socket, GUEST};
use super::*;

/// Runs the muxer's event processing until it has a packet for the guest.
fn next(muxer: &mut Muxer, buf: &mut [u8]) -> RxPacket {
    for _ in 0..200 {
        muxer.process_events();
        if let Some(packet) = muxer.next_rx(buf) {
            return packet;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no packet for the guest");
}

#[test]
fn host_initiated_connection_handshake_and_data_both_ways() {
    let path = temp_socket("host-init");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut host = UnixStream::connect(&path).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let mut buf = vec![0u8; 4096];
    let request = next(&mut muxer, &mut buf).header;
    assert_eq!(request.op(), Some(Op::Request));
    assert_eq!(request.dst_port, 1024);
    assert_eq!(request.dst_cid, GUEST);
    let local = request.src_port;

    muxer.recv_from_guest(&guest_header(Op::Response, 1024, local, 0), &[]);
    let mut ok = vec![0u8; format!("OK {local}\n").len()];
    host.read_exact(&mut ok).unwrap();
    assert_eq!(ok, format!("OK {local}\n").as_bytes());

    muxer.recv_from_guest(&guest_header(Op::Rw, 1024, local, 5), b"hello");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    host.write_all(b"world").unwrap();
    let packet = next(&mut muxer, &mut buf);
    assert_eq!(packet.header.op(), Some(Op::Rw));
    assert_eq!(&buf[..packet.len], b"world");
    assert_eq!(packet.header.fwd_cnt, 5);

    drop(host);
    let shutdown = next(&mut muxer, &mut buf).header;
    assert_eq!(shutdown.op(), Some(Op::Shutdown));
    muxer.recv_from_guest(&guest_header(Op::Rst, 1024, local, 0), &[]);
    assert_eq!(muxer.connection_count(), 0);
}

#[test]
fn guest_initiated_connection_reaches_the_port_socket() {
    let path = temp_socket("guest-init");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let port_path = format!("{}_5000", path.display());
    let _ = std::fs::remove_file(&port_path);
    let listener = UnixListener::bind(&port_path).unwrap();
    muxer.recv_from_guest(&guest_header(Op::Request, 777, 5000, 0), &[]);
    let mut buf = vec![0u8; 4096];
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Response));
    let (mut accepted, _) = listener.accept().unwrap();
    muxer.recv_from_guest(&guest_header(Op::Rw, 777, 5000, 3), b"hey");
    let mut got = [0u8; 3];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hey");
    // Nobody listens on port 5001: the guest is refused.
    muxer.recv_from_guest(&guest_header(Op::Request, 778, 5001, 0), &[]);
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    let _ = std::fs::remove_file(&port_path);
}

#[test]
fn bad_packets_are_reset_and_credit_overruns_close_the_connection() {
    let path = temp_socket("bad");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut buf = vec![0u8; 4096];
    // Data for a connection that does not exist.
    muxer.recv_from_guest(&guest_header(Op::Rw, 1, 2, 1), b"x");
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    // An unknown op and a datagram type.
    let mut odd = guest_header(Op::Rw, 1, 2, 0);
    odd.op = 42;
    muxer.recv_from_guest(&odd, &[]);
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    odd.type_ = 2;
    muxer.recv_from_guest(&odd, &[]);
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    // Spoofed source CID: dropped without an answer.
    let mut spoofed = guest_header(Op::Request, 1, 2, 0);
    spoofed.src_cid = 99;
    muxer.recv_from_guest(&spoofed, &[]);
    muxer.process_events();
    assert!(muxer.next_rx(&mut buf).is_none());

    // A guest that ignores the credit it was given is reset.
    let mut host = UnixStream::connect(&path).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    let local = next(&mut muxer, &mut buf).header.src_port;
    muxer.recv_from_guest(&guest_header(Op::Response, 9, local, 0), &[]);
    let flood = vec![0u8; 64 * 1024];
    for _ in 0..8 {
        muxer.recv_from_guest(&guest_header(Op::Rw, 9, local, flood.len() as u32), &flood);
    }
    assert_eq!(muxer.connection_count(), 0);
    let _ = host.set_read_timeout(Some(Duration::from_secs(1)));
}

#[test]
fn a_garbled_handshake_is_closed() {
    let path = temp_socket("garbled");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut host = UnixStream::connect(&path).unwrap();
    host.write_all(b"HELLO\n").unwrap();
    for _ in 0..50 {
        muxer.process_events();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut byte = [0u8; 1];
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(host.read(&mut byte).unwrap(), 0, "closed");
    assert_eq!(muxer.connection_count(), 0);
}

#[test]
fn a_full_listener_backlog_refuses_instead_of_blocking() {
    let path = temp_socket("backlog");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let port_path = format!("{}_6000", path.display());
    let _ = std::fs::remove_file(&port_path);
    // A listener that never accepts: its backlog fills after a few connections.
    let _listener = UnixListener::bind(&port_path).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut refused = false;
    for guest_port in 0..4096 {
        muxer.recv_from_guest(&guest_header(Op::Request, guest_port, 6000, 0), &[]);
        let reply = next(&mut muxer, &mut buf).header;
        if reply.op() == Some(Op::Rst) {
            refused = true;
            break;
        }
    }
    assert!(refused, "connections were never refused");
    let _ = std::fs::remove_file(&port_path);
}
