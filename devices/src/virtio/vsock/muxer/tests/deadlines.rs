//! Nothing waits on a peer without a bound: silent host programs, a guest that never answers
//! a REQUEST or a clean disconnect, and a host program that never reads what a closed guest
//! connection sent.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::super::super::packet::{Op, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::super::super::test_support::{guest_header, temp_socket, GUEST};
use super::super::{
    Muxer, CLOSE_TIMEOUT, HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, MAX_HANDSHAKES, RESPONSE_TIMEOUT,
};
use super::{guest_connection, host_request, next, shutdown};

/// Whether the muxer closed the host's end (it reads end of stream or a reset).
fn closed_by_muxer(host: &mut UnixStream) -> bool {
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    matches!(host.read(&mut byte), Ok(0) | Err(_))
}

/// What a misbehaving local program does: fill the VM's connection allowance with
/// connections that never send a `CONNECT` line.
#[test]
fn silent_host_connections_cannot_take_every_slot_from_a_well_behaved_one() {
    let path = temp_socket("silent-flood");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut silent = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        silent.push(UnixStream::connect(&path).unwrap());
        muxer.process_events();
    }
    let (_host, request) = host_request(&mut muxer, &path, 1024);
    assert_eq!(request.dst_port, 1024);
    // The silent ones hold at most MAX_HANDSHAKES slots; the rest were closed.
    assert!(muxer.handshakes.len() <= MAX_HANDSHAKES);
    assert!(
        closed_by_muxer(&mut silent[0]),
        "the oldest silent connection went first"
    );
}

#[test]
fn a_handshake_without_its_connect_line_is_closed_at_its_deadline() {
    let path = temp_socket("silent-deadline");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut silent = UnixStream::connect(&path).unwrap();
    let mut partial = UnixStream::connect(&path).unwrap();
    partial.write_all(b"CONNECT 10").unwrap();
    for _ in 0..20 {
        muxer.process_events();
    }
    assert_eq!(muxer.handshakes.len(), 2);
    muxer.expire(Instant::now());
    assert_eq!(muxer.handshakes.len(), 2, "not yet");
    muxer.expire(Instant::now() + HANDSHAKE_TIMEOUT);
    assert!(muxer.handshakes.is_empty());
    assert!(closed_by_muxer(&mut silent));
    assert!(closed_by_muxer(&mut partial));
}

/// The deadline timer sits on the muxer's epoll, so the VMM's event loop runs the expiry.
#[test]
fn the_deadline_timer_wakes_the_muxer_epoll() {
    let path = temp_socket("timer");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut silent = UnixStream::connect(&path).unwrap();
    muxer.process_events();
    assert_eq!(muxer.handshakes.len(), 1);
    // Bring the deadline forward instead of waiting HANDSHAKE_TIMEOUT.
    let now = Instant::now();
    for handshake in muxer.handshakes.values_mut() {
        handshake.deadline = now;
    }
    muxer.timer_armed_for = None;
    muxer.schedule(now);
    let mut events = vec![vmm_sys_util::epoll::EpollEvent::default(); 4];
    let ready = muxer.epoll.wait(5_000, &mut events).unwrap();
    assert_eq!(ready, 1, "the epoll wakes for the timer");
    muxer.process_events();
    assert!(muxer.handshakes.is_empty());
    assert!(closed_by_muxer(&mut silent));
}

#[test]
fn a_request_the_guest_never_answers_is_reset_at_its_deadline() {
    let path = temp_socket("no-response");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let (mut host, request) = host_request(&mut muxer, &path, 1024);
    muxer.expire(Instant::now());
    assert_eq!(muxer.connection_count(), 1, "not yet");
    muxer.expire(Instant::now() + RESPONSE_TIMEOUT);
    let mut buf = vec![0u8; 64];
    let rst = next(&mut muxer, &mut buf).header;
    assert_eq!(rst.op(), Some(Op::Rst));
    assert_eq!((rst.src_port, rst.dst_port), (request.src_port, 1024));
    assert_eq!(muxer.connection_count(), 0);
    assert!(closed_by_muxer(&mut host));
    // The answer that comes too late is refused.
    muxer.recv_from_guest(&guest_header(Op::Response, 1024, request.src_port, 0), &[]);
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
}

/// The guest dropped its RST (its control queue was full): the connection would stay
/// half-open for ever.
#[test]
fn a_clean_disconnect_the_guest_never_answers_is_reset_at_its_deadline() {
    let path = temp_socket("no-rst");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let host = guest_connection(&mut muxer, &path, 794, 5014);
    drop(host);
    let mut buf = vec![0u8; 64];
    let closed = next(&mut muxer, &mut buf).header;
    assert_eq!(closed.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    muxer.expire(Instant::now());
    assert_eq!(muxer.connection_count(), 1, "not yet");
    muxer.expire(Instant::now() + CLOSE_TIMEOUT);
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    assert_eq!(muxer.connection_count(), 0);
}

/// The guest closed its socket but the host program never reads what it sent.
#[test]
fn a_guest_close_whose_data_the_host_never_reads_is_reset_at_its_deadline() {
    let path = temp_socket("never-read");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let _host = guest_connection(&mut muxer, &path, 795, 5015);
    let chunk = vec![7u8; 64 * 1024];
    for _ in 0..4 {
        muxer.recv_from_guest(&guest_header(Op::Rw, 795, 5015, chunk.len() as u32), &chunk);
    }
    muxer.recv_from_guest(&shutdown(795, 5015, SHUTDOWN_RCV | SHUTDOWN_SEND), &[]);
    assert_eq!(muxer.connection_count(), 1, "still writing");
    muxer.expire(Instant::now() + CLOSE_TIMEOUT);
    let mut buf = vec![0u8; 64];
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    assert_eq!(muxer.connection_count(), 0);
}

/// A connection the guest only half-closed waits for the host program's answer as long as
/// that takes: no deadline applies.
#[test]
fn a_half_closed_connection_has_no_deadline() {
    let path = temp_socket("half-no-deadline");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut host = guest_connection(&mut muxer, &path, 796, 5016);
    muxer.recv_from_guest(&shutdown(796, 5016, SHUTDOWN_SEND), &[]);
    muxer.expire(Instant::now() + CLOSE_TIMEOUT * 100);
    assert_eq!(muxer.connection_count(), 1);
    host.write_all(b"late answer").unwrap();
    let mut buf = vec![0u8; 64];
    let data = next(&mut muxer, &mut buf);
    assert_eq!(&buf[..data.len], b"late answer");
}
