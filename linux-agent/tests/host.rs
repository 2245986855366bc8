//! The agent's operations on the host, over a Unix socket pair: what a Linux guest runs, checked
//! without a VM. Each test serves its own connection(s) from one shared `Agent`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use zygote_guest_proto::agent::{
    source_checksum, ErrorCode, Exec, ExitStatus, FileKind, GuestKind, OutputStream, Request,
    Response, StreamChecksum, Strings, MAX_FILE_CHUNK, MAX_FRAME, PROTOCOL_VERSION,
};
use zygote_guest_proto::pattern_checksum;
use zygote_linux_agent::{serve, Agent};

/// The host end of one connection to an agent thread.
struct Host {
    stream: UnixStream,
    frame: Vec<u8>,
    server: Option<JoinHandle<()>>,
}

impl Host {
    fn connect(agent: &Arc<Agent>) -> Host {
        let (host, guest) = UnixStream::pair().unwrap();
        host.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let agent = Arc::clone(agent);
        let server = std::thread::spawn(move || serve(&agent, guest));
        Host {
            stream: host,
            frame: Vec::new(),
            server: Some(server),
        }
    }

    fn new() -> Host {
        Host::connect(&Arc::new(Agent::new()))
    }

    fn send(&mut self, request: &Request<'_>) {
        let mut out = vec![0u8; request.encoded_len()];
        let n = request.encode(&mut out).unwrap();
        self.stream.write_all(&out[..n]).unwrap();
    }

    fn receive(&mut self) -> Response<'_> {
        let mut prefix = [0u8; 4];
        self.stream.read_exact(&mut prefix).unwrap();
        let len = u32::from_le_bytes(prefix) as usize;
        self.frame.clear();
        self.frame.extend_from_slice(&prefix);
        self.frame.resize(4 + len, 0);
        self.stream.read_exact(&mut self.frame[4..]).unwrap();
        Response::decode(&self.frame).unwrap().0
    }

    fn call(&mut self, request: &Request<'_>) -> Response<'_> {
        self.send(request);
        self.receive()
    }

    /// Runs `argv` to its end: (stdout, stderr, status, timed out).
    fn exec(&mut self, exec: Exec<'_>) -> Result<(Vec<u8>, Vec<u8>, ExitStatus, bool), ErrorCode> {
        self.send(&Request::Exec(exec));
        match self.receive() {
            Response::ExecStarted { .. } => {}
            Response::Error(code) => return Err(code),
            other => panic!("{other:?}"),
        }
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.receive() {
                Response::ExecOutput {
                    stream: OutputStream::Stdout,
                    data,
                } => stdout.extend_from_slice(data),
                Response::ExecOutput {
                    stream: OutputStream::Stderr,
                    data,
                } => stderr.extend_from_slice(data),
                Response::ExecExited { status, timed_out } => {
                    return Ok((stdout, stderr, status, timed_out))
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(server) = self.server.take() {
            server.join().unwrap();
        }
    }
}

fn packed(items: &[&str]) -> Vec<u8> {
    items.iter().flat_map(|s| s.bytes().chain([0])).collect()
}

fn shell<'a>(argv: &'a [u8], timeout_ms: u32) -> Exec<'a> {
    Exec {
        argv: Strings::new(argv).unwrap(),
        env: Strings::EMPTY,
        cwd: b"",
        stdin: b"",
        timeout_ms,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zygote-agent-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn hello_names_the_linux_guest_and_version() {
    let mut host = Host::new();
    assert_eq!(
        host.call(&Request::Hello { version: 1 }),
        Response::Hello {
            version: PROTOCOL_VERSION,
            guest: GuestKind::Linux
        }
    );
}

#[test]
fn exec_streams_stdout_stderr_and_the_exit_code() {
    let mut host = Host::new();
    let argv = packed(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]);
    let (stdout, stderr, status, timed_out) = host.exec(shell(&argv, 10_000)).unwrap();
    assert_eq!(stdout, b"out\n");
    assert_eq!(stderr, b"err\n");
    assert_eq!(status, ExitStatus::Exited(3));
    assert!(!timed_out);
}

#[test]
fn exec_passes_stdin_env_and_cwd() {
    let mut host = Host::new();
    let argv = packed(&["sh", "-c", "echo $ZYGOTE_FOO; pwd; wc -c"]);
    let env = packed(&["ZYGOTE_FOO=bar=baz"]);
    let stdin = vec![b'x'; 100_000];
    let (stdout, _, status, _) = host
        .exec(Exec {
            argv: Strings::new(&argv).unwrap(),
            env: Strings::new(&env).unwrap(),
            cwd: b"/",
            stdin: &stdin,
            timeout_ms: 10_000,
        })
        .unwrap();
    let text = String::from_utf8(stdout).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines, ["bar=baz", "/", "100000"]);
    assert!(status.success());
}

#[test]
fn exec_timeout_kills_the_process_group() {
    let mut host = Host::new();
    // The child shell's own child must die too, or its held pipes would keep exec waiting.
    let argv = packed(&["/bin/sh", "-c", "sleep 30 & sleep 30; echo never"]);
    let (stdout, _, status, timed_out) = host.exec(shell(&argv, 300)).unwrap();
    assert!(timed_out);
    assert_eq!(status, ExitStatus::Signaled(9));
    assert_eq!(stdout, b"");
    // The connection goes on.
    assert_eq!(host.call(&Request::Ping), Response::Pong);
}

#[test]
fn signal_from_a_second_connection_ends_a_running_program() {
    let agent = Arc::new(Agent::new());
    let mut running = Host::connect(&agent);
    let argv = packed(&["/bin/sh", "-c", "echo started; sleep 30"]);
    running.send(&Request::Exec(shell(&argv, 0)));
    let Response::ExecStarted { pid } = running.receive() else {
        panic!("not started")
    };
    assert!(matches!(running.receive(), Response::ExecOutput { .. }));
    let mut other = Host::connect(&agent);
    assert_eq!(
        other.call(&Request::Signal { pid, signal: 15 }),
        Response::Signaled
    );
    assert_eq!(
        running.receive(),
        Response::ExecExited {
            status: ExitStatus::Signaled(15),
            timed_out: false
        }
    );
    // Only programs the agent started can be signalled.
    assert_eq!(
        other.call(&Request::Signal { pid: 1, signal: 9 }),
        Response::Error(ErrorCode::NotFound)
    );
}

#[test]
fn exec_of_a_missing_program_is_not_found() {
    let mut host = Host::new();
    let argv = packed(&["/no/such/program"]);
    assert_eq!(host.exec(shell(&argv, 0)), Err(ErrorCode::NotFound));
    let env = packed(&["NO_EQUALS_SIGN"]);
    let argv = packed(&["true"]);
    let mut exec = shell(&argv, 0);
    exec.env = Strings::new(&env).unwrap();
    assert_eq!(host.exec(exec), Err(ErrorCode::InvalidArgument));
}

#[test]
fn files_round_trip_in_chunks_with_stat_list_and_remove() {
    let mut host = Host::new();
    let dir = temp_dir("files");
    let sub = dir.join("a/b");
    let sub_bytes = sub.to_str().unwrap().as_bytes();
    assert_eq!(
        host.call(&Request::Mkdir {
            path: sub_bytes,
            parents: false,
            mode: 0o755
        }),
        Response::Error(ErrorCode::NotFound)
    );
    assert_eq!(
        host.call(&Request::Mkdir {
            path: sub_bytes,
            parents: true,
            mode: 0o755
        }),
        Response::MadeDir
    );
    let file = sub.join("data.bin");
    let path = file.to_str().unwrap().as_bytes();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| ((i * 31) >> 3) as u8).collect();
    let chunk = MAX_FILE_CHUNK;
    for (index, piece) in data.chunks(chunk).enumerate() {
        let response = host.call(&Request::WriteFile {
            path,
            offset: (index * chunk) as u64,
            truncate: index == 0,
            mode: 0o600,
            data: piece,
        });
        assert_eq!(response, Response::Written);
    }
    let mut back = Vec::new();
    loop {
        let len = 700_000u32;
        let Response::FileData(bytes) = host.call(&Request::ReadFile {
            path,
            offset: back.len() as u64,
            len,
        }) else {
            panic!("read failed")
        };
        let short = bytes.len() < len as usize;
        back.extend_from_slice(bytes);
        if short {
            break;
        }
    }
    assert!(back == data, "read back differs");
    let Response::Stat(stat) = host.call(&Request::Stat(path)) else {
        panic!("stat failed")
    };
    assert_eq!(
        (stat.kind, stat.size, stat.mode),
        (FileKind::File, 3_000_000, 0o600)
    );

    let Response::Entries { next, entries } = host.call(&Request::List {
        path: sub_bytes,
        start: 0,
    }) else {
        panic!("list failed")
    };
    assert_eq!(next, 0);
    let listed: Vec<_> = entries
        .iter()
        .map(|e| (e.name.to_vec(), e.kind, e.size))
        .collect();
    assert_eq!(listed, [(b"data.bin".to_vec(), FileKind::File, 3_000_000)]);

    let dir_bytes = dir.to_str().unwrap().as_bytes();
    assert_eq!(
        host.call(&Request::Remove {
            path: dir_bytes,
            recursive: false
        }),
        Response::Error(ErrorCode::AlreadyExists)
    );
    assert_eq!(
        host.call(&Request::Remove {
            path: dir_bytes,
            recursive: true
        }),
        Response::Removed
    );
    assert!(!dir.exists());
    assert_eq!(
        host.call(&Request::ReadFile {
            path,
            offset: 0,
            len: 1
        }),
        Response::Error(ErrorCode::NotFound)
    );
    assert_eq!(
        host.call(&Request::Stat(path)),
        Response::Error(ErrorCode::NotFound)
    );
}

#[test]
fn ports_lists_a_listening_socket_and_wait_port_sees_it() {
    let mut host = Host::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let Response::Ports(ports) = host.call(&Request::Ports) else {
        panic!("ports failed")
    };
    assert!(ports.iter().any(|p| p == port), "{port} not listed");
    assert_eq!(
        host.call(&Request::WaitPort {
            port,
            timeout_ms: 1000
        }),
        Response::PortOpen
    );
    drop(listener);
    assert_eq!(
        host.call(&Request::WaitPort {
            port,
            timeout_ms: 100
        }),
        Response::Error(ErrorCode::TimedOut)
    );
}

#[test]
fn bridge_carries_bytes_both_ways_and_passes_half_close_on() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A server that answers only once the request is complete: reads to the end, replies
    // with the bytes reversed, closes.
    let server = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        tcp.read_to_end(&mut request).unwrap();
        request.reverse();
        tcp.write_all(&request).unwrap();
    });
    let mut host = Host::new();
    assert_eq!(host.call(&Request::Bridge { port }), Response::Bridged);
    let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    host.stream.write_all(&payload).unwrap();
    host.stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    host.stream.read_to_end(&mut reply).unwrap();
    let mut expected = payload.clone();
    expected.reverse();
    assert!(reply == expected, "reply differs");
    server.join().unwrap();
}

#[test]
fn bridge_to_a_closed_port_is_refused_and_the_connection_goes_on() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut host = Host::new();
    assert_eq!(
        host.call(&Request::Bridge { port }),
        Response::Error(ErrorCode::ConnectFailed)
    );
    assert_eq!(host.call(&Request::Ping), Response::Pong);
}

#[test]
fn unknown_malformed_and_unsupported_requests_are_typed_refusals() {
    let mut host = Host::new();
    host.stream.write_all(&[1, 0, 0, 0, 250]).unwrap();
    assert_eq!(host.receive(), Response::Error(ErrorCode::UnknownOpcode));
    // Ping with a stray byte.
    host.stream.write_all(&[2, 0, 0, 0, 1, 0]).unwrap();
    assert_eq!(host.receive(), Response::Error(ErrorCode::Malformed));
    assert_eq!(
        host.call(&Request::DiskId),
        Response::Error(ErrorCode::Unsupported)
    );
    assert_eq!(
        host.call(&Request::Exit(0)),
        Response::Error(ErrorCode::Unsupported)
    );
    assert_eq!(host.call(&Request::Ping), Response::Pong);
    // A length past the limit: the agent says so and hangs up.
    host.stream
        .write_all(&((MAX_FRAME + 1) as u32).to_le_bytes())
        .unwrap();
    assert_eq!(host.receive(), Response::Error(ErrorCode::FrameTooLarge));
    let mut rest = Vec::new();
    host.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn shared_operations_answer_as_zygotes_own_guest_does() {
    let mut host = Host::new();
    assert_eq!(host.call(&Request::Echo(b"abc")), Response::Echo(b"abc"));
    assert_eq!(host.call(&Request::CounterAdd(40)), Response::Counter(40));
    assert_eq!(host.call(&Request::CounterAdd(2)), Response::Counter(42));
    assert_eq!(host.call(&Request::CounterGet), Response::Counter(42));
    let Response::Touched { checksum, .. } = host.call(&Request::Touch { mib: 2, pattern: 7 })
    else {
        panic!("touch failed")
    };
    assert_eq!(checksum, pattern_checksum(7, 2));

    let data = vec![0x5au8; 1 << 20];
    host.send(&Request::Sink {
        len: data.len() as u64,
    });
    host.stream.write_all(&data).unwrap();
    let mut sum = StreamChecksum::new();
    sum.update(&data);
    assert_eq!(
        host.receive(),
        Response::Sunk {
            len: 1 << 20,
            checksum: sum.value()
        }
    );
    assert_eq!(
        host.call(&Request::Source {
            len: 100_000,
            seed: 3
        }),
        Response::Sourcing { len: 100_000 }
    );
    let mut bytes = vec![0u8; 100_000];
    host.stream.read_exact(&mut bytes).unwrap();
    let mut sum = StreamChecksum::new();
    sum.update(&bytes);
    assert_eq!(sum.value(), source_checksum(3, 100_000));
}

#[test]
fn the_guest_binary_is_a_static_x86_64_elf() {
    let elf = std::fs::read(zygote_linux_agent::binary_path()).expect("built by build.rs");
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([elf[0x12], elf[0x13]]), 62, "x86_64");
    // No program interpreter: nothing to load from a guest that has no libc.
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let phentsize = u16::from_le_bytes([elf[0x36], elf[0x37]]) as usize;
    let phnum = u16::from_le_bytes([elf[0x38], elf[0x39]]) as usize;
    let interp = (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3
    });
    assert!(!interp, "the agent asks for a dynamic loader");
}

#[test]
fn the_initramfs_runs_the_agent_as_init_beside_busybox() {
    let initramfs = zygote_linux_agent::initramfs();
    let paths: Vec<&str> = initramfs.paths().collect();
    for path in ["init", "bin/busybox", "bin/sh", "proc", "tmp"] {
        assert!(paths.contains(&path), "{path} missing from {paths:?}");
    }
    let mut bytes = Vec::new();
    initramfs.write(&mut bytes).unwrap();
    let agent = std::fs::read(zygote_linux_agent::binary_path()).unwrap();
    // Only /init holds these bytes.
    let found = bytes
        .windows(agent.len())
        .any(|window| window[..64] == agent[..64] && window == &agent[..]);
    assert!(found, "the agent's bytes are not in the archive");
}

#[test]
fn a_host_that_hangs_up_during_a_quiet_command_gets_it_killed() {
    let mut host = Host::new();
    // No timeout and no output: only the hang-up can end it early.
    let argv = packed(&["sleep", "600"]);
    host.send(&Request::Exec(shell(&argv, 0)));
    let Response::ExecStarted { pid } = host.receive() else {
        panic!("not started")
    };
    let proc_entry = PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_entry.exists());
    host.stream.shutdown(Shutdown::Both).unwrap();
    // The agent kills and reaps it once it notices; give it a while before calling it lost.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while proc_entry.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let outlived = proc_entry.exists();
    if outlived {
        // Do not leave the agent's thread (joined by `drop(host)`) waiting 600 s.
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    }
    drop(host);
    assert!(!outlived, "pid {pid} outlived the host's connection");
}
