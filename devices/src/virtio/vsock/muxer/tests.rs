use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::super::packet::{Op, SHUTDOWN_RCV, SHUTDOWN_SEND};
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

/// A host program connects to the device at `path` and asks for guest `port`; returns its
/// stream and the REQUEST the muxer sends the guest.
fn host_request(muxer: &mut Muxer, path: &Path, port: u32) -> (UnixStream, Header) {
    host_request_then(muxer, path, port, |_| {})
}

/// [`host_request`], with `then` run on the host's stream right after its `CONNECT` line,
/// before the muxer reads anything.
fn host_request_then(
    muxer: &mut Muxer,
    path: &Path,
    port: u32,
    then: impl FnOnce(&mut UnixStream),
) -> (UnixStream, Header) {
    let mut host = UnixStream::connect(path).unwrap();
    host.write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    then(&mut host);
    let mut buf = [0u8; 64];
    let request = next(muxer, &mut buf).header;
    assert_eq!((request.op(), request.dst_port), (Some(Op::Request), port));
    (host, request)
}

#[test]
fn host_initiated_connection_handshake_and_data_both_ways() {
    let path = temp_socket("host-init");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let (mut host, request) = host_request(&mut muxer, &path, 1024);
    let mut buf = vec![0u8; 4096];
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
    let (listener, port_path) = port_listener(&path, 5000);
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
    let (host, request) = host_request(&mut muxer, &path, 9);
    let local = request.src_port;
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
    // A listener that never accepts: its backlog fills after a few connections.
    let (_listener, port_path) = port_listener(&path, 6000);
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

/// A host program listening on host port `port` of the device at `path` (`<path>_<port>`).
fn port_listener(path: &Path, port: u32) -> (UnixListener, String) {
    let port_path = format!("{}_{port}", path.display());
    let _ = std::fs::remove_file(&port_path);
    (UnixListener::bind(&port_path).unwrap(), port_path)
}

/// A guest connection from guest port `guest_port` to host port `port`, whose listener accepted
/// it; returns the host's end. The muxer's RESPONSE has been taken.
fn guest_connection(muxer: &mut Muxer, path: &Path, guest_port: u32, port: u32) -> UnixStream {
    let (listener, port_path) = port_listener(path, port);
    muxer.recv_from_guest(&guest_header(Op::Request, guest_port, port, 0), &[]);
    let mut buf = [0u8; 64];
    assert_eq!(next(muxer, &mut buf).header.op(), Some(Op::Response));
    let (accepted, _) = listener.accept().unwrap();
    let _ = std::fs::remove_file(&port_path);
    accepted
}

fn shutdown(guest_port: u32, port: u32, flags: u32) -> Header {
    Header {
        flags,
        ..guest_header(Op::Shutdown, guest_port, port, 0)
    }
}

#[test]
fn the_control_queue_is_bounded_against_a_guest_that_reads_nothing() {
    let path = temp_socket("ctl-bound");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut taken = 0u32;
    // Data for connections that do not exist: each packet is answered with RST. The device
    // takes packets only while the muxer can (see `Vsock::process_tx`).
    while muxer.can_take_packet() {
        muxer.recv_from_guest(&guest_header(Op::Rw, taken, 9, 0), &[]);
        taken += 1;
        assert!(taken <= 1_000, "the muxer never stops taking packets");
    }
    assert_eq!(taken as usize, CONTROL_QUEUE_LEN);
    assert_eq!(muxer.control.len(), CONTROL_QUEUE_LEN);
    // A host connection arriving meanwhile is refused rather than queued.
    let mut host = UnixStream::connect(&path).unwrap();
    host.write_all(b"CONNECT 5\n").unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    for _ in 0..100 {
        muxer.process_events();
        if muxer.handshakes.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(host.read(&mut byte).unwrap(), 0, "refused");
    assert_eq!(muxer.control.len(), CONTROL_QUEUE_LEN);
    // Reading one answer makes room for one more packet.
    let mut buf = [0u8; 64];
    assert_eq!(muxer.next_rx(&mut buf).unwrap().header.op(), Some(Op::Rst));
    assert!(muxer.can_take_packet());
}

#[test]
fn credit_requests_leave_at_most_one_pending_update_per_connection() {
    let path = temp_socket("credit-req");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let _host = guest_connection(&mut muxer, &path, 778, 5002);
    for _ in 0..100_000 {
        muxer.recv_from_guest(&guest_header(Op::CreditRequest, 778, 5002, 0), &[]);
    }
    assert!(muxer.control.is_empty());
    assert!(muxer.has_rx());
    let mut buf = [0u8; 64];
    let update = muxer.next_rx(&mut buf).unwrap().header;
    assert_eq!(update.op(), Some(Op::CreditUpdate));
    assert_eq!((update.src_port, update.dst_port), (5002, 778));
    assert!(
        muxer.next_rx(&mut buf).is_none(),
        "one update answers them all"
    );
    assert!(!muxer.has_rx());
}

#[test]
fn a_guest_half_close_still_delivers_the_host_reply() {
    let path = temp_socket("half-close");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut host = guest_connection(&mut muxer, &path, 777, 5001);
    muxer.recv_from_guest(&guest_header(Op::Rw, 777, 5001, 3), b"req");
    // What shutdown(SHUT_WR) in the guest sends.
    muxer.recv_from_guest(&shutdown(777, 5001, SHUTDOWN_SEND), &[]);
    // The host program reads the request, then end of stream, and answers.
    let mut request = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut request).unwrap();
    assert_eq!(request, b"req");
    host.write_all(b"response").unwrap();
    let mut buf = vec![0u8; 4096];
    let reply = next(&mut muxer, &mut buf);
    assert_eq!(reply.header.op(), Some(Op::Rw));
    assert_eq!(&buf[..reply.len], b"response");
    assert_eq!(muxer.connection_count(), 1);
    // The host closes: both directions are done, so the connection ends with RST.
    drop(host);
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    assert_eq!(muxer.connection_count(), 0);
}

#[test]
fn host_eof_sends_shutdown_send_only_and_the_guest_can_still_answer() {
    let path = temp_socket("host-eof");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut host = guest_connection(&mut muxer, &path, 779, 5003);
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let mut buf = vec![0u8; 4096];
    let eof = next(&mut muxer, &mut buf).header;
    assert_eq!(eof.op(), Some(Op::Shutdown));
    assert_eq!(
        eof.flags, SHUTDOWN_SEND,
        "the host will send no more, and still receives"
    );
    muxer.recv_from_guest(&guest_header(Op::Rw, 779, 5003, 6), b"answer");
    let mut got = [0u8; 6];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"answer");
    assert_eq!(muxer.connection_count(), 1);
    // The guest is done too: both directions are shut, so RST, and the host sees the end.
    muxer.recv_from_guest(&shutdown(779, 5003, SHUTDOWN_SEND), &[]);
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    assert_eq!(muxer.connection_count(), 0);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut got).unwrap(), 0);
}

#[test]
fn a_host_that_closes_its_socket_sends_shutdown_both_ways() {
    let path = temp_socket("host-close");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let host = guest_connection(&mut muxer, &path, 782, 5006);
    drop(host);
    let mut buf = vec![0u8; 64];
    let eof = next(&mut muxer, &mut buf).header;
    assert_eq!(eof.op(), Some(Op::Shutdown));
    assert_eq!(
        eof.flags,
        SHUTDOWN_RCV | SHUTDOWN_SEND,
        "nothing can be sent to it either"
    );
    // Data the guest sent anyway cannot be written: RST.
    muxer.recv_from_guest(&guest_header(Op::Rw, 782, 5006, 1), b"x");
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    assert_eq!(muxer.connection_count(), 0);
}

#[test]
fn a_guest_full_shutdown_flushes_then_resets() {
    let path = temp_socket("full-shutdown");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let mut host = guest_connection(&mut muxer, &path, 780, 5004);
    muxer.recv_from_guest(&guest_header(Op::Rw, 780, 5004, 3), b"bye");
    muxer.recv_from_guest(&shutdown(780, 5004, SHUTDOWN_RCV | SHUTDOWN_SEND), &[]);
    let mut buf = vec![0u8; 64];
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    assert_eq!(muxer.connection_count(), 0);
    let mut got = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
}

#[test]
fn data_after_the_guest_shut_send_resets_the_connection() {
    let path = temp_socket("data-after-shut");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let _host = guest_connection(&mut muxer, &path, 781, 5005);
    muxer.recv_from_guest(&shutdown(781, 5005, SHUTDOWN_SEND), &[]);
    muxer.recv_from_guest(&guest_header(Op::Rw, 781, 5005, 1), b"x");
    let mut buf = vec![0u8; 64];
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    assert_eq!(muxer.connection_count(), 0);
}

/// Set in the child process [`accept_failing_with_emfile_pauses_accepting_until_a_connection_closes`]
/// runs itself in, where it may lower the open-file limit without disturbing other tests.
const EMFILE_CHILD: &str = "ZYGOTE_VSOCK_EMFILE_CHILD";

#[test]
fn accept_failing_with_emfile_pauses_accepting_until_a_connection_closes() {
    if std::env::var_os(EMFILE_CHILD).is_none() {
        let name = "virtio::vsock::muxer::tests::\
                    accept_failing_with_emfile_pauses_accepting_until_a_connection_closes";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1", "--nocapture"])
            .env(EMFILE_CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
        return;
    }
    let path = temp_socket("emfile");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    // Leave exactly three free fds: a first host connection and its accepted end, and a
    // second host connection whose accept then fails with EMFILE.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0);
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    limit.rlim_cur = highest + 64;
    // SAFETY: `limit` is a valid rlimit; lowering the soft limit only affects this process.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(set, 0);
    let mut filler = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        filler.push(file);
    }
    filler.truncate(filler.len() - 3);
    let mut first = UnixStream::connect(&path).unwrap();
    muxer.process_events();
    assert_eq!(muxer.handshakes.len(), 1);
    let mut second = UnixStream::connect(&path).unwrap();
    muxer.process_events();
    assert!(!muxer.accepting, "accept failed, the listener is paused");
    assert_eq!(muxer.handshakes.len(), 1);
    let mut events = vec![EpollEvent::default(); 4];
    assert_eq!(
        muxer.epoll.wait(0, &mut events).unwrap(),
        0,
        "nothing to spin on"
    );
    // The first connection's handshake fails and closes its fd: accepting resumes, and the
    // second connection, which waited in the backlog, is served.
    first.write_all(b"HELLO\n").unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    for _ in 0..100 {
        muxer.process_events();
        if first.read(&mut byte).is_ok() {
            break;
        }
    }
    second.write_all(b"CONNECT 5\n").unwrap();
    let mut buf = [0u8; 64];
    let request = next(&mut muxer, &mut buf).header;
    assert_eq!((request.op(), request.dst_port), (Some(Op::Request), 5));
    // At the limit again (accept fails for want of an fd before it looks at the backlog), so
    // the listener stays paused until the next connection closes.
    assert!(!muxer.accepting);
}

#[test]
fn a_host_that_gives_up_before_the_guest_answers_leaves_nothing_behind() {
    let path = temp_socket("gives-up");
    let mut muxer = Muxer::new(GUEST, &path).unwrap();
    let (host, _request) = host_request(&mut muxer, &path, 1024);
    let mut buf = vec![0u8; 4096];
    assert_eq!(muxer.connection_count(), 1);
    drop(host);
    // The guest learns the request is void, and the half-made connection is gone.
    assert_eq!(next(&mut muxer, &mut buf).header.op(), Some(Op::Rst));
    assert_eq!(muxer.connection_count(), 0);
}

mod close_orders;
mod deadlines;
