//! The sandbox flow on a real Linux guest: boot Linux with the agent as PID 1, write
//! `index.html`, start `busybox httpd -p 3000`, wait for port 3000, and fetch the page from the
//! host through a forwarded port. Prints the time of each step and ends with one line:
//!
//! `boot_to_agent_ms=<n> exec_ms=<n> preview=<host>:<port> page_ok=<0|1> fork_ms=<n> child_page_ok=<0|1>`
//!
//! - `boot_to_agent_ms`: from `Vm::start` until the agent answered `Hello`;
//! - `exec_ms`: a round trip of `exec("true")` (spawn, wait, exit status back);
//! - then the sandbox is forked with its server running (`fork_ms`: the `fork()` call), the
//!   child is reached through its own forwarded port, each writes its own page and serves only
//!   its own (`child_page_ok`); then both are hibernated and the child resumed from its
//!   snapshot through the mmap engine and asked for its page again (`resumed_child_page_ok`,
//!   printed on its own line before the last).
//!
//! Needs the Linux test guest's kernel (`./dev test` builds it once per machine).
//! Run: `cargo run --release --example sandbox`

use std::error::Error;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use zygote::sandbox::{Command, Sandbox};
use zygote::{ConsoleBuffer, SerialOutput, VmBuilder, VsockConfig};

const PAGE: &str = "<!doctype html><title>zygote</title><h1>Hello from a Zygote sandbox</h1>\n";
const PORT: u16 = 3000;

/// Prints how long `what` took and passes its value on.
fn step<T>(what: &str, f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    let took = start.elapsed();
    println!("{what:<40} {:>8.1} ms", took.as_secs_f64() * 1e3);
    (value, took)
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("zygote-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kernel = zygote_linux_guest::kernel()?;
    let initrd = dir.join("initramfs.cpio");
    zygote_linux_agent::initramfs().write_to(&initrd)?;
    let console = ConsoleBuffer::new();
    let vm = VmBuilder::new()
        .vcpus(1)
        .memory_mib(256)
        .kernel(&kernel.vmlinux)
        .initrd(&initrd)
        .cmdline(zygote_linux_guest::CMDLINE)
        .vsock(VsockConfig {
            guest_cid: 3,
            uds_path: dir.join("vsock"),
        })
        .serial_output(SerialOutput::Buffer(console.clone()))
        .build()?;
    let boot = Instant::now();
    let mut vm = vm.start()?;
    // Connect once the agent says it listens: refused attempts cost the booting guest time.
    // Linux boots in 20-35 s here, minutes when the host is busy.
    let ready = console.wait_for(zygote_linux_agent::READY_LINE, Duration::from_secs(600));
    let sandbox = match vm.sandbox(Duration::from_secs(30)) {
        Ok(sandbox) if ready => sandbox,
        other => {
            vm.shutdown()?;
            eprintln!("console:\n{}", console.text());
            return Err(other
                .err()
                .map_or("the agent never got ready".into(), Into::into));
        }
    };
    let boot_to_agent = boot.elapsed();
    println!(
        "{:<40} {:>8.1} ms",
        "boot to agent ready",
        boot_to_agent.as_secs_f64() * 1e3
    );

    let result = run(&sandbox);
    drop(sandbox);
    let (exec, preview, page_ok) = match result {
        Ok(result) => result,
        Err(e) => {
            vm.shutdown()?;
            return Err(e);
        }
    };
    let (fork, child_page_ok) = fork_and_hibernate(vm, &dir)?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "boot_to_agent_ms={} exec_ms={} preview={preview} page_ok={} fork_ms={} child_page_ok={}",
        boot_to_agent.as_millis(),
        exec.as_millis(),
        u8::from(page_ok),
        fork.as_millis(),
        u8::from(child_page_ok)
    );
    Ok(())
}

/// Forks the sandbox with its server running, gives each its own page, checks each serves its
/// own, then hibernates both and resumes the child: (fork time, whether it all held).
fn fork_and_hibernate(
    mut parent: zygote::RunningVm,
    dir: &std::path::Path,
) -> Result<(Duration, bool), Box<dyn Error>> {
    let (fork, fork_time) = step("fork the sandbox (server running)", || {
        parent.fork(zygote::ForkConfig::default())
    });
    let child = fork?.child;
    let timeout = Duration::from_secs(120);
    let (parent_box, child_box) = (parent.sandbox(timeout)?, child.sandbox(timeout)?);
    let parent_page = "<h1>parent</h1>\n";
    let child_page = "<h1>child</h1>\n";
    step("write a page in each", || -> Result<(), Box<dyn Error>> {
        parent_box.write_file("/srv/www/index.html", parent_page.as_bytes())?;
        child_box.write_file("/srv/www/index.html", child_page.as_bytes())?;
        Ok(())
    })
    .0?;
    let parent_fwd = parent_box.forward_port(PORT, "127.0.0.1:0")?;
    let child_fwd = child_box.forward_port(PORT, "127.0.0.1:0")?;
    println!(
        "child preview at http://{}/index.html",
        child_fwd.local_addr()
    );
    let served = |addr, page: &str| get(addr).is_ok_and(|r| r.ends_with(page));
    let (each_own, _) = step("GET each one's page", || {
        served(child_fwd.local_addr(), child_page) && served(parent_fwd.local_addr(), parent_page)
    });
    drop((parent_fwd, child_fwd, parent_box, child_box));
    let snapshots = [dir.join("parent.snap"), dir.join("child.snap")];
    step("hibernate both", || -> Result<(), Box<dyn Error>> {
        parent.pause()?;
        parent.hibernate(&snapshots[0], zygote::MemoryFormat::Raw)?;
        child.pause()?;
        child.hibernate(&snapshots[1], zygote::MemoryFormat::Raw)?;
        Ok(())
    })
    .0?;
    let resumed = step("resume the child (mmap engine)", || {
        resume(&snapshots[1], dir)
    })
    .0?;
    let again = step(
        "GET the resumed child's page",
        || -> Result<bool, Box<dyn Error>> {
            let resumed_box = resumed.sandbox(Duration::from_secs(60))?;
            let fwd = resumed_box.forward_port(PORT, "127.0.0.1:0")?;
            Ok(served(fwd.local_addr(), child_page))
        },
    )
    .0;
    println!(
        "resumed_child_page_ok={}",
        u8::from(matches!(again, Ok(true)))
    );
    if let Err(e) = again {
        println!("the resumed child did not answer: {e}");
    }
    Ok((fork_time, each_own))
}

/// Restores the hibernated sandbox in `snapshot` lazily, with a vsock socket of its own.
fn resume(
    snapshot: &std::path::Path,
    dir: &std::path::Path,
) -> Result<zygote::RunningVm, Box<dyn Error>> {
    let snapshot = zygote::Snapshot::load(snapshot)?;
    let config = zygote::RestoreConfig {
        devices: zygote::state::DeviceResources {
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: dir.join("resumed.vsock"),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut engine = zygote::snapshot_format::MmapEngine::new();
    Ok(zygote::Vm::restore_snapshot(&snapshot, &mut engine, config)?.start()?)
}

/// The sandbox script: (exec round trip, preview address, whether the page came back).
fn run(sandbox: &Sandbox) -> Result<(Duration, SocketAddr, bool), Box<dyn Error>> {
    step("ping", || sandbox.ping()).0?;
    step("ping again", || sandbox.ping()).0?;
    let (status, exec) = step("exec true", || sandbox.exec(&Command::new("true")));
    status?;
    let blob: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7) as u8).collect();
    step("write a 1 MiB file", || {
        sandbox.write_file("/tmp/blob", &blob)
    })
    .0?;
    let back = step("read it back", || sandbox.read_file("/tmp/blob")).0?;
    if back != blob {
        return Err("the 1 MiB file came back different".into());
    }
    step("mkdir /srv/www", || sandbox.mkdir_all("/srv/www")).0?;
    step("write index.html", || {
        sandbox.write_file("/srv/www/index.html", PAGE.as_bytes())
    })
    .0?;
    // httpd puts itself in the background; the exec returns once the parent exits.
    let httpd = Command::new("busybox").args(["httpd", "-p", "3000", "-h", "/srv/www"]);
    let output = step("exec busybox httpd -p 3000", || sandbox.exec(&httpd)).0?;
    if !output.status.success() {
        return Err(format!("httpd failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    step("wait for port 3000", || {
        sandbox.wait_for_port(PORT, Duration::from_secs(60))
    })
    .0?;
    let forward = step("forward port 3000 to the host", || {
        sandbox.forward_port(PORT, "127.0.0.1:0")
    })
    .0?;
    let preview = forward.local_addr();
    println!("preview at http://{preview}/index.html");
    let (page, _) = step("GET /index.html through the preview", || get(preview));
    let page = page?;
    let page_ok = page.starts_with("HTTP/1.") && page.contains("200") && page.ends_with(PAGE);
    let _ = step("GET again (connection already warm)", || get(preview));
    Ok((exec, preview, page_ok))
}

/// A plain HTTP/1.0 GET of `/index.html`: the whole response, headers included.
fn get(addr: SocketAddr) -> Result<String, Box<dyn Error>> {
    let mut tcp = TcpStream::connect(addr)?;
    // httpd forks per connection: seconds here, minutes on a busy host.
    tcp.set_read_timeout(Some(Duration::from_secs(300)))?;
    tcp.write_all(b"GET /index.html HTTP/1.0\r\nHost: sandbox\r\n\r\n")?;
    tcp.shutdown(Shutdown::Write)?;
    let mut response = String::new();
    tcp.read_to_string(&mut response)?;
    Ok(response)
}
