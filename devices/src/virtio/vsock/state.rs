//! The vsock device's saved state.
//!
//! Only the configuration is saved. Open connections are host sockets that cannot be carried
//! into another process or VM; like Firecracker, a restored device starts with none, and the
//! guest's sockets are reset (a restored guest is told through the event queue's
//! `TRANSPORT_RESET`, to be sent by the snapshot work).

use super::device::{Vsock, VsockConfig, VsockError};

/// A vsock device as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockState {
    /// The device's configuration.
    pub config: VsockConfig,
}

impl Vsock {
    /// The device's state.
    pub fn save(&self) -> VsockState {
        VsockState {
            config: self.config().clone(),
        }
    }

    /// A device from saved state; the CID is validated and the socket bound again.
    pub fn restore(state: &VsockState) -> Result<Self, VsockError> {
        Self::new(&state.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_and_validation() {
        let path = std::env::temp_dir().join(format!("zygote-vsock-state-{}", std::process::id()));
        let config = VsockConfig {
            guest_cid: 7,
            uds_path: path.clone(),
        };
        let state = Vsock::new(&config).unwrap().save();
        assert_eq!(state.config, config);
        let restored = Vsock::restore(&state).unwrap();
        assert_eq!(restored.save(), state);
        let bad = VsockState {
            config: VsockConfig {
                guest_cid: 2,
                uds_path: path,
            },
        };
        assert!(matches!(
            Vsock::restore(&bad),
            Err(VsockError::InvalidCid(2))
        ));
    }
}
