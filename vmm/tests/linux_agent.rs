//! The sandbox surface on a real Linux guest: one boot per test binary (a Linux boot takes
//! 20-35 s here), shared by the tests one at a time (the guest has one vCPU whose kernel is
//! emulated: tests in parallel would only slow each other past their timeouts). They use
//! their own paths and ports. The guest's `reboot -f` is in `linux_reboot.rs`, since it ends
//! the VM.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use common::linux::LinuxGuest;
use zygote::sandbox::{Command, ExitStatus, FileKind, SandboxError};

/// The shared guest, booted by the first test that asks, held until the test ends.
fn guest() -> MutexGuard<'static, LinuxGuest> {
    static GUEST: OnceLock<Mutex<LinuxGuest>> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let guest = common::linux::boot("linux-agent");
            eprintln!("boot to agent ready: {:?}", guest.boot_to_agent);
            Mutex::new(guest)
        })
        .lock()
        // A failed test leaves the guest as usable as any other test would.
        .unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn exec_returns_output_and_exit_status() {
    let guest = guest();
    let sandbox = &guest.sandbox;
    let output = sandbox
        .exec(&Command::shell("echo hello; echo oops >&2").env("ZYGOTE", "1"))
        .unwrap();
    assert_eq!(output.stdout, b"hello\n");
    assert_eq!(output.stderr, b"oops\n");
    assert_eq!(output.status, ExitStatus::Exited(0));

    let output = sandbox.exec(&Command::shell("exit 42")).unwrap();
    assert_eq!(output.status, ExitStatus::Exited(42));

    let start = Instant::now();
    let output = sandbox.exec(&Command::new("true")).unwrap();
    eprintln!("exec round trip (true): {:?}", start.elapsed());
    assert!(output.status.success());

    assert!(matches!(
        sandbox.exec(&Command::new("/no/such/program")),
        Err(SandboxError::NotFound { .. })
    ));
}

#[test]
fn a_command_past_its_timeout_is_killed() {
    let guest = guest();
    let sandbox = &guest.sandbox;
    let sleepy = Command::new("sleep")
        .arg("600")
        .timeout(Duration::from_secs(3));
    match sandbox.exec(&sleepy) {
        Err(SandboxError::TimedOut { output }) => {
            assert_eq!(output.status, ExitStatus::Signaled(9));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_1_mib_file_round_trips_with_a_matching_checksum() {
    let guest = guest();
    let sandbox = &guest.sandbox;
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    sandbox.mkdir_all("/tmp/files").unwrap();
    let start = Instant::now();
    sandbox.write_file("/tmp/files/blob", &data).unwrap();
    let wrote = start.elapsed();
    let start = Instant::now();
    let back = sandbox.read_file("/tmp/files/blob").unwrap();
    let read = start.elapsed();
    eprintln!(
        "1 MiB file: write {wrote:?} ({:.2} MiB/s), read {read:?} ({:.2} MiB/s)",
        1.0 / wrote.as_secs_f64(),
        1.0 / read.as_secs_f64()
    );
    assert!(back == data, "the file read back differs");

    // The guest's own checksum of what landed there, against the host's of the same bytes.
    let host_file = common::temp_path("blob");
    std::fs::write(&host_file, &data).unwrap();
    let host = std::process::Command::new("sha256sum")
        .arg(&host_file)
        .output()
        .unwrap();
    let guest = sandbox
        .exec(&Command::new("sha256sum").arg("/tmp/files/blob"))
        .unwrap();
    let digest = |out: &[u8]| {
        String::from_utf8_lossy(out)
            .split(' ')
            .next()
            .map(str::to_owned)
    };
    assert_eq!(digest(&guest.stdout), digest(&host.stdout));
    let _ = std::fs::remove_file(host_file);

    let stat = sandbox.stat("/tmp/files/blob").unwrap();
    assert_eq!((stat.kind, stat.size), (FileKind::File, 1 << 20));
    let names: Vec<String> = sandbox
        .list("/tmp/files")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["blob"]);
    sandbox.remove_all("/tmp/files").unwrap();
    assert!(matches!(
        sandbox.read_file("/tmp/files/blob"),
        Err(SandboxError::NotFound { .. })
    ));
}

#[test]
fn a_guest_tcp_server_is_reached_through_a_forwarded_port() {
    let guest = guest();
    let sandbox = &guest.sandbox;
    let page = "served from the guest\n";
    sandbox.mkdir_all("/tmp/www").unwrap();
    sandbox
        .write_file("/tmp/www/index.html", page.as_bytes())
        .unwrap();
    assert!(!sandbox.listening_ports().unwrap().contains(&3001));
    let httpd = Command::new("busybox").args(["httpd", "-p", "3001", "-h", "/tmp/www"]);
    assert!(sandbox.exec(&httpd).unwrap().status.success());
    sandbox
        .wait_for_port(3001, Duration::from_secs(120))
        .unwrap();
    assert!(sandbox.listening_ports().unwrap().contains(&3001));
    assert!(matches!(
        sandbox.wait_for_port(3999, Duration::from_millis(200)),
        Err(SandboxError::PortNeverOpened { port: 3999, .. })
    ));

    let forward = sandbox.forward_port(3001, "127.0.0.1:0").unwrap();
    let start = Instant::now();
    let mut tcp = TcpStream::connect(forward.local_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    tcp.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
    tcp.shutdown(Shutdown::Write).unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    eprintln!("forwarded HTTP GET round trip: {:?}", start.elapsed());
    // busybox httpd answers HTTP/1.1 whatever the request's version.
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with(page), "{response}");
}

/// A Linux guest waits for interrupts. A restored device raises one at once (the vsock
/// TRANSPORT_RESET); it was raised before the vCPUs' LAPICs were restored, which wiped it, so
/// the restored guest never handled the reset and never answered (most restores, not all: it
/// depends on where the guest was). Three restores of the running guest each answer their
/// agent straight away, and the original afterwards.
#[test]
fn a_restored_linux_guest_answers_its_agent_at_once() {
    let guest = guest();
    for round in 0..3 {
        restore_and_ping(&guest, round);
    }
}

fn restore_and_ping(guest: &LinuxGuest, round: u32) {
    guest.sandbox.ping().unwrap();
    guest.vm.pause().unwrap();
    let state = guest.vm.capture().unwrap();
    let memfd = std::sync::Arc::clone(guest.vm.ram().memfd().unwrap());
    let ram = zygote::GuestRam::private_of(memfd, state.memory_bytes).unwrap();
    let config = zygote::RestoreConfig {
        context: Some(guest.vm.context().clone()),
        devices: zygote::state::DeviceResources {
            vsock: Some(zygote::VsockConfig {
                guest_cid: 7,
                uds_path: guest.dir.join(format!("restored-{round}.vsock")),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let restored = zygote::Vm::restore(&state, ram, config)
        .unwrap()
        .start()
        .unwrap();
    // The original stays paused meanwhile: the restored RAM is a private view of its memfd.
    let answered = restored
        .sandbox(Duration::from_secs(20))
        .and_then(|sandbox| sandbox.ping());
    drop(restored);
    guest.vm.resume().unwrap();
    assert!(answered.is_ok(), "restore {round}: {answered:?}");
    guest.sandbox.ping().unwrap();
}
