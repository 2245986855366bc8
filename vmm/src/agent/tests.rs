//! The agent client against fake agents on Unix sockets: framing errors, and the connect
//! deadline, request timeout and stop check kept apart.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zygote_guest_proto::agent::{Request, Response};

use super::conn::Conn;
use super::*;

fn client(stream: UnixStream, timeout: Duration) -> AgentClient {
    AgentClient {
        stream: BufReader::new(
            Conn::new(stream, timeout, None)
                .map_err(|(e, _)| e)
                .unwrap(),
        ),
        frame: Vec::new(),
        broken: false,
        request_timeout: timeout,
    }
}

#[test]
fn a_request_cut_short_desynchronizes_the_client() {
    let (ours, mut agent) = UnixStream::pair().unwrap();
    let mut client = client(ours, Duration::from_millis(100));
    // The agent answers half a frame, then goes quiet.
    let server = std::thread::spawn(move || {
        let mut request = [0u8; 5];
        agent.read_exact(&mut request).unwrap();
        agent.write_all(&[6, 0, 0, 0, 0]).unwrap();
        agent
    });
    assert!(matches!(client.ping(), Err(AgentError::Io(_))));
    // Whatever arrives later must not be taken for the next answer.
    let _agent = server.join().unwrap();
    assert!(matches!(client.ping(), Err(AgentError::Desynchronized)));
}

#[test]
fn a_garbled_length_desynchronizes_the_client() {
    let (ours, mut agent) = UnixStream::pair().unwrap();
    let mut client = client(ours, REQUEST_TIMEOUT);
    agent.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(matches!(client.ping(), Err(AgentError::Decode(_))));
    assert!(matches!(client.ping(), Err(AgentError::Desynchronized)));
}

/// A socket path unique to this test process and `name`.
fn socket_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "zygote-agent-unit-{}-{name}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// How a fake agent behaves on its one connection.
struct Fake {
    /// Before answering the handshake.
    accept_delay: Duration,
    /// Before answering each ping.
    answer_delay: Duration,
    /// Pings to answer.
    pings: usize,
}

/// Serves one connection at `path` the way the vsock device and the agent would: the
/// `CONNECT` line, `OK`, then pongs.
fn fake_agent(path: &std::path::Path, fake: Fake) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8];
        while !line.ends_with(b"\n") {
            stream.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        assert!(line.starts_with(b"CONNECT "));
        std::thread::sleep(fake.accept_delay);
        stream.write_all(b"OK 1\n").unwrap();
        let mut pong = vec![0u8; Response::Pong.encoded_len()];
        let n = Response::Pong.encode(&mut pong).unwrap();
        for _ in 0..fake.pings {
            let mut request = [0u8; 5];
            stream.read_exact(&mut request).unwrap();
            assert!(matches!(Request::decode(&request), Ok((Request::Ping, _))));
            std::thread::sleep(fake.answer_delay);
            stream.write_all(&pong[..n]).unwrap();
        }
    })
}

/// Issue 8, item 7: a client connected with a 100 ms deadline timed out every request that
/// took longer than what was left of those 100 ms, and was then unusable.
#[test]
fn the_connect_deadline_does_not_become_the_request_timeout() {
    let path = socket_path("deadline");
    let server = fake_agent(
        &path,
        Fake {
            // Most of the deadline goes on connecting, like a 9.9 s connect out of 10 s.
            accept_delay: Duration::from_millis(50),
            answer_delay: Duration::from_millis(300),
            pings: 2,
        },
    );
    let mut client = AgentClient::connect(&path, 1024, Duration::from_millis(100)).unwrap();
    assert_eq!(client.request_timeout(), REQUEST_TIMEOUT);
    client.ping().unwrap();
    client.ping().unwrap();
    server.join().unwrap();
    let _ = std::fs::remove_file(&path);
}

/// `net_recv` widens the timeout for its own wait, then must restore the caller's request
/// timeout, not the default.
#[test]
fn a_set_request_timeout_holds() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut client = client(ours, REQUEST_TIMEOUT);
    assert!(matches!(
        client.set_request_timeout(Duration::ZERO),
        Err(AgentError::ZeroTimeout)
    ));
    client
        .set_request_timeout(Duration::from_millis(100))
        .unwrap();
    client.extend_timeout(Duration::from_secs(5)).unwrap();
    client.extend_timeout(Duration::ZERO).unwrap();
    assert_eq!(client.request_timeout(), Duration::from_millis(100));
    assert_eq!(
        client.stream.get_ref().timeout(),
        Duration::from_millis(100)
    );
    // A silent agent: the ping times out after the request timeout.
    match client.ping() {
        Err(AgentError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
        other => panic!("{:?}", other.err()),
    }
    drop(theirs);
}

/// A listener whose backlog is full (a muxer at its connection limit) used to hold a blocking
/// `connect(2)` past the connect deadline, for as long as nobody accepted.
#[test]
fn a_full_backlog_does_not_outlast_the_connect_deadline() {
    let path = socket_path("backlog");
    let _listener = UnixListener::bind(&path).unwrap();
    // Fill the backlog: non-blocking connects succeed until it is full.
    let mut queued = Vec::new();
    while let Ok(stream) = conn::connect_unix(&path) {
        queued.push(stream);
        assert!(queued.len() < 100_000, "the backlog never filled");
    }
    let (done, result) = std::sync::mpsc::channel();
    let target = path.clone();
    std::thread::spawn(move || {
        let _ = done.send(AgentClient::connect(
            &target,
            1024,
            Duration::from_millis(200),
        ));
    });
    // A hang bound, not a speed check: the old client never returned here.
    let result = result
        .recv_timeout(Duration::from_secs(30))
        .expect("connect returned");
    assert!(matches!(result, Err(AgentError::Connect { .. })));
    let _ = std::fs::remove_file(&path);
}

/// A VM that stopped answers nothing: the stop check ends the connect at once, with the
/// reason, instead of retrying until the deadline.
#[test]
fn connecting_to_a_stopped_vm_fails_with_its_exit_reason() {
    let path = socket_path("stopped");
    // A listener that accepts but never answers, like the device of a VM whose guest exited.
    let listener = UnixListener::bind(&path).unwrap();
    let asked = Arc::new(AtomicBool::new(false));
    let seen = asked.clone();
    let result = AgentClient::connect_watching(&path, 1024, Duration::from_secs(3600), move || {
        seen.store(true, Ordering::SeqCst);
        Some(ExitReason::Exited(7))
    });
    assert!(asked.load(Ordering::SeqCst));
    assert!(
        matches!(result, Err(AgentError::VmStopped(ExitReason::Exited(7)))),
        "{:?}",
        result.err()
    );
    drop(listener);
    let _ = std::fs::remove_file(&path);
}

/// A request in flight when the VM stops ends with the exit reason, not after its timeout.
#[test]
fn a_request_to_a_vm_that_stops_fails_with_its_exit_reason() {
    let path = socket_path("stops");
    let listener = UnixListener::bind(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut line = [0u8; 13];
        stream.read_exact(&mut line).unwrap();
        stream.write_all(b"OK 1\n").unwrap();
        let mut request = [0u8; 5];
        stream.read_exact(&mut request).unwrap();
        // The guest stops instead of answering; the device keeps the socket open.
        flag.store(true, Ordering::SeqCst);
        stream
    });
    let mut client =
        AgentClient::connect_watching(&path, 1024, Duration::from_secs(10), move || {
            stop.load(Ordering::SeqCst).then_some(ExitReason::PowerOff)
        })
        .unwrap();
    client
        .set_request_timeout(Duration::from_secs(3600))
        .unwrap();
    assert!(matches!(
        client.ping(),
        Err(AgentError::VmStopped(ExitReason::PowerOff))
    ));
    assert!(matches!(client.ping(), Err(AgentError::Desynchronized)));
    drop(server.join().unwrap());
    let _ = std::fs::remove_file(&path);
}
