//! The sandbox flow on a real Linux guest: boot Linux with the agent as PID 1, write
//! `index.html`, start `busybox httpd -p 3000`, wait for port 3000, and fetch the page from the
//! host through a forwarded port. Prints the time of each step and ends with one line:
//!
//! `boot_to_agent_ms=<n> exec_ms=<n> preview=<host>:<port> page_ok=<0|1>`
//!
//! - `boot_to_agent_ms`: from `Vm::start` until the agent answered `Hello`;
//! - `exec_ms`: a round trip of `exec("true")` (spawn, wait, exit status back).
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
    vm.shutdown()?;
    let _ = std::fs::remove_dir_all(&dir);
    let (exec, preview, page_ok) = result?;
    println!(
        "boot_to_agent_ms={} exec_ms={} preview={preview} page_ok={}",
        boot_to_agent.as_millis(),
        exec.as_millis(),
        u8::from(page_ok)
    );
    Ok(())
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
