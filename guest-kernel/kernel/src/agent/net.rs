//! Requests on the virtio-net device: `NetSend`, and `NetRecv`, which waits in place.

use zygote_guest_proto::agent::{ErrorCode, Response, MAX_NET_FRAME};

use super::Agent;

impl Agent {
    pub(super) fn net_send(&mut self, frame: &[u8]) -> Response<'static> {
        let Agent { devices, clock, .. } = self;
        match devices.net.as_mut().map(|net| net.send(clock, frame)) {
            None => Response::Error(ErrorCode::NoDevice),
            Some(Ok(())) => Response::NetSent,
            Some(Err(_)) => Response::Error(ErrorCode::DeviceError),
        }
    }

    /// Waits up to `timeout_ms` for a frame, into the data buffer.
    pub(super) fn net_recv(&mut self, timeout_ms: u32) -> Response<'_> {
        let deadline = self.clock.deadline_ms(u64::from(timeout_ms));
        let Agent { devices, data, .. } = self;
        let Some(net) = devices.net.as_mut() else {
            return Response::Error(ErrorCode::NoDevice);
        };
        let out = &mut data[..MAX_NET_FRAME];
        loop {
            if let Some(len) = net.try_recv(out) {
                return Response::NetFrame(&out[..len]);
            }
            if deadline.passed() {
                return Response::Error(ErrorCode::NoFrame);
            }
            // Keep vsock traffic flowing for the other connections meanwhile.
            if let Some(vsock) = devices.vsock.as_mut() {
                vsock.poll();
            }
        }
    }
}
