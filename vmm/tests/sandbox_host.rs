//! The sandbox client against the Linux agent's own request handling, run on the host behind a
//! stand-in for the vsock device's socket (`CONNECT <port>` → `OK <n>`): exec, files, ports and
//! forwarded ports end to end without booting a guest. `linux_agent.rs` does the same on a
//! real Linux guest.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use zygote::sandbox::{Command, ExecEvent, ExitStatus, FileKind, Sandbox, SandboxError};
use zygote_linux_agent::{serve, Agent, AGENT_PORT};

/// A Unix socket that answers the vsock handshake and hands each connection to the agent.
fn fake_vsock(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("zygote-sbx-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let agent = Arc::new(Agent::new());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let agent = Arc::clone(&agent);
            std::thread::spawn(move || handshake_then_serve(&agent, stream));
        }
    });
    path
}

fn handshake_then_serve(agent: &Agent, mut stream: UnixStream) {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while line.last() != Some(&b'\n') {
        if stream.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        line.push(byte[0]);
    }
    if line != format!("CONNECT {AGENT_PORT}\n").as_bytes() {
        return;
    }
    stream.write_all(b"OK 1073741824\n").unwrap();
    serve(agent, stream);
}

fn sandbox(name: &str) -> Sandbox {
    Sandbox::connect(&fake_vsock(name), Duration::from_secs(5)).expect("connect")
}

#[test]
fn exec_collects_output_status_and_typed_failures() {
    let sandbox = sandbox("exec");
    let output = sandbox
        .exec(&Command::shell("echo out; echo err >&2; exit 7"))
        .unwrap();
    assert_eq!(output.stdout, b"out\n");
    assert_eq!(output.stderr, b"err\n");
    assert_eq!(output.status, ExitStatus::Exited(7));

    let output = sandbox
        .exec(&Command::new("cat").stdin(b"piped".to_vec()))
        .unwrap();
    assert_eq!(output.stdout, b"piped");

    let slow = Command::shell("echo before; sleep 30").timeout(Duration::from_millis(300));
    match sandbox.exec(&slow) {
        Err(SandboxError::TimedOut { output }) => {
            assert_eq!(output.stdout, b"before\n");
            assert_eq!(output.status, ExitStatus::Signaled(9));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        sandbox.exec(&Command::new("/no/such/program")),
        Err(SandboxError::NotFound { path }) if path == "/no/such/program"
    ));
    sandbox.ping().expect("the sandbox still answers");
}

#[test]
fn a_streamed_command_can_be_killed() {
    let sandbox = sandbox("kill");
    let mut running = sandbox.spawn(&Command::shell("echo up; sleep 30")).unwrap();
    assert_eq!(
        running.next_event().unwrap(),
        ExecEvent::Stdout(b"up\n".to_vec())
    );
    running.kill().unwrap();
    assert_eq!(
        running.next_event().unwrap(),
        ExecEvent::Exited {
            status: ExitStatus::Signaled(9),
            timed_out: false
        }
    );
    assert!(matches!(
        running.next_event(),
        Err(SandboxError::Protocol(_))
    ));
}

#[test]
fn files_round_trip_across_chunks() {
    let sandbox = sandbox("files");
    let dir = std::env::temp_dir().join(format!("zygote-sbx-{}-files", std::process::id()));
    let dir = dir.to_str().unwrap().to_owned();
    let _ = std::fs::remove_dir_all(&dir);
    sandbox.mkdir_all(&format!("{dir}/sub")).unwrap();
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i ^ (i >> 9)) as u8).collect();
    let path = format!("{dir}/sub/big.bin");
    sandbox.write_file(&path, &data).unwrap();
    assert!(sandbox.read_file(&path).unwrap() == data);
    sandbox.write_file(&path, b"").unwrap();
    assert_eq!(sandbox.read_file(&path).unwrap(), b"");
    let stat = sandbox.stat(&path).unwrap();
    assert_eq!(
        (stat.kind, stat.size, stat.mode),
        (FileKind::File, 0, 0o644)
    );
    let names: Vec<String> = sandbox
        .list(&dir)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["sub"]);
    assert!(matches!(
        sandbox.remove(&dir),
        Err(SandboxError::Refused(_))
    ));
    sandbox.remove_all(&dir).unwrap();
    assert!(matches!(
        sandbox.read_file(&path),
        Err(SandboxError::NotFound { path: p }) if p == path
    ));
    assert!(matches!(
        sandbox.stat(&dir),
        Err(SandboxError::NotFound { .. })
    ));
}

#[test]
fn ports_are_listed_waited_for_and_never_opened_is_typed() {
    let sandbox = sandbox("ports");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(sandbox.listening_ports().unwrap().contains(&port));
    sandbox.wait_for_port(port, Duration::from_secs(1)).unwrap();
    drop(listener);
    assert!(matches!(
        sandbox.wait_for_port(port, Duration::from_millis(100)),
        Err(SandboxError::PortNeverOpened { port: p, .. }) if p == port
    ));
}

#[test]
fn a_forwarded_port_carries_http_both_ways_and_stops_on_drop() {
    let sandbox = sandbox("forward");
    // The "guest" server: one HTTP/1.0 response per connection, after the request's end.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let guest_port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in server.incoming() {
            let mut stream = stream.unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            let body = format!("you asked {}", request.trim());
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).unwrap();
        }
    });
    let forward = sandbox.forward_port(guest_port, "127.0.0.1:0").unwrap();
    for round in 0..3 {
        let mut client = TcpStream::connect(forward.local_addr()).unwrap();
        write!(client, "GET /{round} HTTP/1.0\r\n\r\n").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.0 200 OK"), "{reply}");
        assert!(
            reply.ends_with(&format!("you asked GET /{round} HTTP/1.0")),
            "{reply}"
        );
    }
    let addr = forward.local_addr();
    drop(forward);
    // The port is closed; if something else on the machine took the freed port meanwhile, it
    // must at least not be our forward still answering.
    if let Ok(mut client) = TcpStream::connect(addr) {
        let _ = client.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let _ = write!(client, "GET /after HTTP/1.0\r\n\r\n");
        let _ = client.shutdown(Shutdown::Write);
        let mut reply = String::new();
        let _ = client.read_to_string(&mut reply);
        assert!(
            !reply.contains("you asked"),
            "still forwarding after drop: {reply}"
        );
    }
}

#[test]
fn a_closed_guest_port_closes_the_forwarded_connection() {
    let sandbox = sandbox("closed");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let forward = sandbox.forward_port(port, "127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(forward.local_addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = Vec::new();
    assert_eq!(client.read_to_end(&mut reply).unwrap_or(0), 0);
}

#[test]
fn nothing_listening_is_not_answering() {
    let path = std::env::temp_dir().join(format!("zygote-sbx-{}-none.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    assert!(matches!(
        Sandbox::connect(&path, Duration::from_millis(200)),
        Err(SandboxError::NotAnswering { .. })
    ));
}
