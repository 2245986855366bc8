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

/// Path of the agent built for `x86_64-unknown-linux-musl` by this crate's build script: a
/// static program to install in a guest's initramfs (as `/init`, or started by it).
#[cfg(not(target_env = "musl"))]
pub fn binary_path() -> &'static std::path::Path {
    std::path::Path::new(env!("ZYGOTE_LINUX_AGENT_BINARY"))
}
