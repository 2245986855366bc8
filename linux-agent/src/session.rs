//! One connection: read a request frame, carry it out, answer; until the host hangs up.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};

use zygote_guest_proto::agent::{
    DecodeError, ErrorCode, GuestKind, Request, Response, PROTOCOL_VERSION,
};

use crate::conn::{read_frame, send, Conn, Incoming};
use crate::exec::Children;
use crate::{basic, bridge, exec, files, ports};

/// What every connection shares: the counter and the programs `Exec` started.
#[derive(Debug, Default)]
pub struct Agent {
    counter: AtomicU64,
    children: Children,
}

impl Agent {
    /// A fresh agent: counter 0, no programs.
    pub fn new() -> Self {
        Self::default()
    }

    /// The programs `Exec` started and has not yet waited for (PID 1's reaper leaves them to
    /// the connection that started them).
    pub fn children(&self) -> &Children {
        &self.children
    }
}

/// Serves requests on `conn` until the host closes it, an I/O error ends it, or it becomes a
/// bridge and both directions end. Never panics on what the host sends.
pub fn serve<C: Conn>(agent: &Agent, mut conn: C) {
    // Buffers live as long as the connection: every fresh page costs a page fault, which
    // takes milliseconds in an emulated guest kernel.
    let mut frame = Vec::new();
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    loop {
        match read_frame(&mut conn, &mut frame) {
            Ok(Incoming::Frame) => {}
            Ok(Incoming::BadLength) => {
                // The stream's framing is lost: say why, then hang up.
                let _ = send(
                    &mut conn,
                    &mut out,
                    &Response::Error(ErrorCode::FrameTooLarge),
                );
                return;
            }
            Ok(Incoming::Closed) | Err(_) => return,
        }
        let request = match Request::decode(&frame) {
            Ok((request, _)) => request,
            Err(DecodeError::UnknownOpcode(_)) => {
                if send(
                    &mut conn,
                    &mut out,
                    &Response::Error(ErrorCode::UnknownOpcode),
                )
                .is_err()
                {
                    return;
                }
                continue;
            }
            Err(_) => {
                if send(&mut conn, &mut out, &Response::Error(ErrorCode::Malformed)).is_err() {
                    return;
                }
                continue;
            }
        };
        match handle(agent, &mut conn, &mut out, &mut scratch, request) {
            Ok(Next::Continue) => {}
            Ok(Next::Bridge(tcp)) => return bridge::run(conn, tcp),
            Err(_) => return,
        }
    }
}

/// What the connection does after a request.
enum Next {
    /// Reads the next request.
    Continue,
    /// Becomes a raw bridge to this TCP connection (already answered `Bridged`).
    Bridge(TcpStream),
}

/// Carries out one request, writing its response(s).
fn handle<C: Conn>(
    agent: &Agent,
    conn: &mut C,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    request: Request<'_>,
) -> io::Result<Next> {
    let simple = match request {
        Request::Ping => Response::Pong,
        Request::Echo(data) => Response::Echo(data),
        Request::Hello { .. } => Response::Hello {
            version: PROTOCOL_VERSION,
            guest: GuestKind::Linux,
        },
        Request::CounterAdd(value) => Response::Counter(
            agent
                .counter
                .fetch_add(value, Ordering::Relaxed)
                .wrapping_add(value),
        ),
        Request::CounterGet => Response::Counter(agent.counter.load(Ordering::Relaxed)),
        Request::Touch { mib, pattern } => basic::touch(mib, pattern),
        Request::Sink { len } => {
            return basic::sink(conn, out, scratch, len).map(|()| Next::Continue)
        }
        Request::Source { len, seed } => {
            return basic::source(conn, out, scratch, len, seed).map(|()| Next::Continue)
        }
        Request::Exec(request) => {
            return exec::run(&agent.children, conn, out, scratch, &request)
                .map(|()| Next::Continue)
        }
        Request::Signal { pid, signal } => agent.children.signal(pid, signal),
        Request::Bridge { port } => {
            return match bridge::open(port) {
                Ok(tcp) => send(conn, out, &Response::Bridged).map(|()| Next::Bridge(tcp)),
                Err(code) => send(conn, out, &Response::Error(code)).map(|()| Next::Continue),
            }
        }
        Request::Ports => return ports::list(conn, out).map(|()| Next::Continue),
        Request::WaitPort { port, timeout_ms } => ports::wait(port, timeout_ms),
        Request::WriteFile { .. }
        | Request::ReadFile { .. }
        | Request::Stat(_)
        | Request::List { .. }
        | Request::Remove { .. }
        | Request::Mkdir { .. } => {
            return files::handle(conn, out, scratch, &request).map(|()| Next::Continue)
        }
        // Zygote's own guest serves these: guest-physical memory, its disk and NIC drivers, the
        // VM's exit port and its identity page (a Linux guest would need ACPI VMGENID, see
        // vmm/DESIGN.md), none of which a Linux process has.
        Request::Checksum { .. }
        | Request::Identity
        | Request::DiskWrite { .. }
        | Request::DiskRead { .. }
        | Request::DiskFlush
        | Request::DiskId
        | Request::NetSend(_)
        | Request::NetRecv { .. }
        | Request::ConnectHost { .. }
        | Request::Exit(_) => Response::Error(ErrorCode::Unsupported),
    };
    send(conn, out, &simple).map(|()| Next::Continue)
}
