//! The version exchange a host starts a connection with.

/// The protocol version this crate speaks. Version 1 was the operations up to `Exit`; version 2
/// added `Hello` and the Linux guest's operations (exec, files, ports, bridge). A guest answers
/// `Hello` with its own version; an operation it does not serve is refused with
/// [`ErrorCode::Unsupported`](super::ErrorCode::Unsupported), one it does not know with
/// [`ErrorCode::UnknownOpcode`](super::ErrorCode::UnknownOpcode).
pub const PROTOCOL_VERSION: u32 = 2;

/// Which guest answered `Hello`: which operations it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GuestKind {
    /// Zygote's own `no_std` guest kernel (`agent` workload): memory, disk, net, vsock ops.
    Zygote = 1,
    /// The Linux guest agent (`zygote-linux-agent`): exec, files, ports, bridge.
    Linux = 2,
}

impl GuestKind {
    /// The kind with this wire value.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(GuestKind::Zygote),
            2 => Some(GuestKind::Linux),
            _ => None,
        }
    }
}
