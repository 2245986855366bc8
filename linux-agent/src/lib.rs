//! The agent inside Zygote's Linux guests.
//!
//! A static `x86_64-unknown-linux-musl` program that runs as the guest's PID 1 (it mounts
//! `/proc`, `/sys` and `/dev`, brings up `lo` and reaps orphans), listens on vsock port
//! [`AGENT_PORT`] and serves each connection on its own thread with the protocol of
//! [`zygote_guest_proto::agent`]: ping, echo, the counter, touch, sink and source (shared with
//! Zygote's own guest), and exec, files, ports and a TCP bridge (this agent's own).
//!
//! Request handling runs over any [`Conn`], so the host tests it over a Unix socket pair:
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use std::sync::Arc;
//! use zygote_linux_agent::{serve, Agent};
//!
//! let (host, guest) = UnixStream::pair().unwrap();
//! let agent = Arc::new(Agent::new());
//! let server = std::thread::spawn(move || serve(&agent, guest));
//! drop(host); // the host hangs up: `serve` returns
//! server.join().unwrap();
//! ```
#![deny(missing_docs)]

mod basic;
mod bridge;
mod conn;
mod errno;
mod exec;
mod files;
mod ports;
mod session;

pub use conn::Conn;
pub use exec::Children;
pub use ports::listening_ports;
pub use session::{serve, Agent};
pub use zygote_guest_proto::agent::AGENT_PORT;

/// The line the agent prints on its stdout (the guest's console, as PID 1) once it listens;
/// the port number follows it.
pub const READY_LINE: &str = "zygote-linux-agent: ready";

/// Where [`initramfs`] installs the agent: `/init`, so it is the guest's PID 1.
pub const GUEST_PATH: &str = "/init";

/// A Linux guest's initramfs with the agent as `/init` (PID 1, see the crate docs) beside
/// Debian's static busybox and its applets in `/bin` (`zygote_linux_guest::busybox_initramfs`),
/// for [`zygote_linux_guest::CMDLINE`] (`rdinit=/init`). Add files with its methods, then
/// `write_to` a path to give the VM as its initrd.
#[cfg(not(target_env = "musl"))]
pub fn initramfs() -> zygote_linux_guest::Initramfs {
    let mut initramfs = zygote_linux_guest::busybox_initramfs("");
    initramfs.host_file(GUEST_PATH, binary_path(), 0o755);
    initramfs
}

/// Path of the agent built for `x86_64-unknown-linux-musl` by this crate's build script: a
/// static program to install in a guest's initramfs (as `/init`, or started by it).
#[cfg(not(target_env = "musl"))]
pub fn binary_path() -> &'static std::path::Path {
    std::path::Path::new(env!("ZYGOTE_LINUX_AGENT_BINARY"))
}
