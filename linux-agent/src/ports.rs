//! Which TCP ports are listening (`/proc/net/tcp` and `tcp6`), and waiting for one.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use zygote_guest_proto::agent::{ErrorCode, PortList, Response};

use crate::conn::send;
use crate::errno;

/// The socket tables read; a kernel without IPv6 has no `tcp6`.
const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

/// `st` of a listening socket in those tables (`TCP_LISTEN`).
const LISTEN: &str = "0A";

/// How often `WaitPort` looks again.
const WAIT_STEP: Duration = Duration::from_millis(25);

/// The TCP ports some socket listens on, ascending, each once. Fails only when no table can
/// be read (no `/proc`).
pub fn listening_ports() -> io::Result<Vec<u16>> {
    let mut ports = Vec::new();
    let mut last_error = None;
    let mut read_any = false;
    for table in TABLES {
        match std::fs::read_to_string(table) {
            Ok(text) => {
                read_any = true;
                ports.extend(text.lines().skip(1).filter_map(listening_port));
            }
            Err(error) => last_error = Some(error),
        }
    }
    if !read_any {
        return Err(last_error.unwrap_or_else(|| io::ErrorKind::NotFound.into()));
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// The local port of a table line whose state is LISTEN. A line reads
/// `sl local_address rem_address st ...`, the address `HEXIP:HEXPORT`.
fn listening_port(line: &str) -> Option<u16> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    if state != LISTEN {
        return None;
    }
    let (_, port) = local.rsplit_once(':')?;
    u16::from_str_radix(port, 16).ok()
}

/// Answers `Ports`.
pub(crate) fn list(conn: &mut impl Write, out: &mut Vec<u8>) -> io::Result<()> {
    let ports = match listening_ports() {
        Ok(ports) => ports,
        Err(error) => return send(conn, out, &Response::Error(errno::code(&error))),
    };
    let packed: Vec<u8> = ports.iter().flat_map(|p| p.to_le_bytes()).collect();
    let list = PortList::new(&packed).ok_or(io::ErrorKind::InvalidData)?;
    send(conn, out, &Response::Ports(list))
}

/// Answers `WaitPort`: `PortOpen` once `port` listens, `TimedOut` after `timeout_ms`.
pub(crate) fn wait(port: u16, timeout_ms: u32) -> Response<'static> {
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    loop {
        match listening_ports() {
            Ok(ports) if ports.contains(&port) => return Response::PortOpen,
            Ok(_) => {}
            Err(error) => return Response::Error(errno::code(&error)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Response::Error(ErrorCode::TimedOut);
        }
        std::thread::sleep(left.min(WAIT_STEP));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines_give_listening_ports_only() {
        let listen = "   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0";
        let established = "   1: 0100007F:0BB8 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1";
        let v6 = "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 3 1 0 100 0 0 10 0";
        assert_eq!(listening_port(listen), Some(3000));
        assert_eq!(listening_port(established), None);
        assert_eq!(listening_port(v6), Some(8080));
        assert_eq!(listening_port("  sl  local_address"), None);
        assert_eq!(listening_port("0: garbage 0 0A"), None);
    }
}
