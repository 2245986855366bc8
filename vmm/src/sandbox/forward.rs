//! Forwarding a guest TCP port to a host address: a host listener whose connections each
//! reach the guest port through the agent's `Bridge` over vsock.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use zygote_guest_proto::agent::{Request, Response};

use super::conn::{Connection, IO_TIMEOUT};
use super::{unexpected, Sandbox, SandboxError};

/// Bytes copied per read.
const CHUNK: usize = 64 * 1024;

/// A guest TCP port forwarded to a host address. Dropping it stops the listener and closes
/// the connections it carries.
#[derive(Debug)]
pub struct PortForward {
    local_addr: SocketAddr,
    guest_port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// What the listener thread and the handle share.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    next_id: AtomicU64,
    /// The host side of each live connection, to close on drop.
    live: Mutex<HashMap<u64, TcpStream>>,
}

impl Sandbox {
    /// Listens on `host_addr` (port 0 picks one; see [`PortForward::local_addr`]) and carries
    /// each accepted connection to guest TCP `guest_port` through its own vsock connection,
    /// bytes both ways until both sides closed (a half-close is passed on). A connection
    /// whose guest port refuses is closed at once.
    ///
    /// # Errors
    /// [`SandboxError::Io`] when the host address cannot be bound.
    pub fn forward_port(
        &self,
        guest_port: u16,
        host_addr: impl ToSocketAddrs,
    ) -> Result<PortForward, SandboxError> {
        let listener = TcpListener::bind(host_addr)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let uds_path = self.uds_path.clone();
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("forward-{guest_port}"))
                .spawn(move || accept_loop(&listener, &uds_path, guest_port, &shared))?
        };
        Ok(PortForward {
            local_addr,
            guest_port,
            shared,
            accept: Some(accept),
        })
    }
}

impl PortForward {
    /// The host address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The guest port it reaches.
    pub fn guest_port(&self) -> u16 {
        self.guest_port
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept with a connection of our own.
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, std::time::Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let live = self
            .shared
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for tcp in live.values() {
            let _ = tcp.shutdown(Shutdown::Both);
        }
    }
}

impl Shared {
    /// Drops the handle on connection `id` once it ended.
    fn forget(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

fn accept_loop(listener: &TcpListener, uds_path: &Path, guest_port: u16, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((tcp, _)) = accepted else {
            // Out of fds, say: do not spin while it lasts.
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = tcp.try_clone() {
            shared
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, clone);
        }
        let for_thread = Arc::clone(shared);
        let uds_path: PathBuf = uds_path.to_owned();
        let spawned = std::thread::Builder::new()
            .name(format!("forward-{guest_port}-{id}"))
            .spawn(move || {
                let _ = carry(tcp, &uds_path, guest_port);
                for_thread.forget(id);
            });
        if spawned.is_err() {
            // No thread for it: the connection closes with the closure; forget its clone.
            shared.forget(id);
        }
    }
}

/// Opens a bridge to the guest port and copies both ways until both directions ended.
fn carry(tcp: TcpStream, uds_path: &Path, guest_port: u16) -> Result<(), SandboxError> {
    let mut conn = Connection::open(uds_path, IO_TIMEOUT)?;
    match conn.call(&Request::Bridge { port: guest_port })? {
        Response::Bridged => {}
        other => return Err(unexpected(&other)),
    }
    let guest = conn.stream;
    // The bridge is quiet while the client or the server thinks: no timeouts from here on.
    guest.set_read_timeout(None)?;
    guest.set_write_timeout(None)?;
    let (guest_reader, tcp_writer) = (guest.try_clone()?, tcp.try_clone()?);
    let downstream = std::thread::spawn(move || {
        let mut tcp_writer = tcp_writer;
        let failed = copy(guest_reader, &mut tcp_writer).is_err();
        let _ = tcp_writer.shutdown(end_how(failed));
    });
    let mut guest = guest;
    let failed = copy(&tcp, &mut guest).is_err();
    let _ = guest.shutdown(end_how(failed));
    if failed {
        let _ = tcp.shutdown(Shutdown::Both);
    }
    let _ = downstream.join();
    Ok(())
}

/// After a clean end of stream only the write side closes; after an error both, which also
/// wakes the reader of the other direction.
fn end_how(failed: bool) -> Shutdown {
    match failed {
        false => Shutdown::Write,
        true => Shutdown::Both,
    }
}

/// Copies until the end of `from` (`Ok`) or an error on either side.
fn copy(mut from: impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
