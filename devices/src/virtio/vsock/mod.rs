//! virtio-vsock (virtio 1.2 §5.10): stream sockets between the guest and host programs,
//! multiplexed onto Unix sockets.

mod connection;
mod device;
mod muxer;
mod packet;
mod socket_file;
mod state;

pub use connection::CONN_BUF_ALLOC;
pub use device::{Vsock, VsockConfig, VsockError};
pub use muxer::guest::connect_nonblocking;
pub use muxer::{
    CLOSE_TIMEOUT, CONTROL_QUEUE_LEN, HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, MAX_HANDSHAKES,
    RESPONSE_TIMEOUT,
};
pub use packet::{Header, Op, HEADER_LEN, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};
pub use state::VsockState;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
