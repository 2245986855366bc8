//! `ConnectHost`: a guest-initiated vsock connection to the host, waited on in place.

use zygote_guest_proto::agent::{ErrorCode, Response, MAX_HOST_REPLY};

use super::Agent;
use crate::virtio::vsock::ConnState;

/// How long `ConnectHost` waits for the host to accept, and then for each reply byte.
const CONNECT_TIMEOUT_MS: u64 = 5_000;

impl Agent {
    /// Connects to the host's `port`, sends `payload`, and reads the reply (into the data
    /// buffer) until the host closes, [`MAX_HOST_REPLY`] bytes, or a timeout.
    pub(super) fn connect_host(&mut self, port: u32, payload: &[u8]) -> Response<'_> {
        let Agent {
            devices,
            clock,
            data,
            ..
        } = self;
        let vsock = devices.vsock.as_mut().expect("checked at start");
        let Ok(conn) = vsock.connect(port) else {
            return Response::Error(ErrorCode::Busy);
        };
        let deadline = clock.deadline_ms(CONNECT_TIMEOUT_MS);
        while vsock.state(conn) == ConnState::Connecting && !deadline.passed() {
            vsock.poll();
        }
        if vsock.state(conn) != ConnState::Established
            || vsock.send_all(conn, payload, CONNECT_TIMEOUT_MS).is_err()
        {
            vsock.close(conn);
            return Response::Error(ErrorCode::ConnectFailed);
        }
        let out = &mut data[..MAX_HOST_REPLY];
        let mut got = 0;
        let mut deadline = clock.deadline_ms(CONNECT_TIMEOUT_MS);
        while got < out.len() && !vsock.at_eof(conn) && !deadline.passed() {
            vsock.poll();
            let n = vsock.recv(conn, &mut out[got..]);
            if n > 0 {
                got += n;
                deadline = clock.deadline_ms(CONNECT_TIMEOUT_MS);
            }
        }
        match vsock.state(conn) {
            ConnState::Closed => vsock.release(conn),
            _ => vsock.close(conn),
        }
        Response::HostReply(&out[..got])
    }
}
