//! The vsock device's saved state.
//!
//! Only the configuration is saved. Open connections are host sockets that cannot be carried
//! into another process or VM; like Firecracker, a restored device starts with none, and tells
//! the guest so with a `TRANSPORT_RESET` event once it is active again, so the guest drops its
//! connections (and reads the CID again) instead of waiting on them forever.

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

    /// A device from saved state; the CID is validated and the socket bound again. Once the
    /// transport reactivates it, the device writes a `TRANSPORT_RESET` event into the first
    /// buffer of the event queue (or the first one the driver posts later) and interrupts.
    ///
    /// Host connections made after the restore get host ports from a random point of the
    /// range: the guest may still hold the saved device's connections (and their ports) until
    /// it handles the reset, and a stale packet of one must never match a new connection.
    pub fn restore(state: &VsockState) -> Result<Self, VsockError> {
        let mut vsock = Self::new(&state.config)?;
        vsock.transport_reset_pending = true;
        vsock.muxer.start_ports_at(random_u32());
        Ok(vsock)
    }
}

/// Four random bytes from `getrandom(2)`; zero if the kernel gives none (ports then simply
/// start at the bottom of the range, as on a fresh device).
fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got == 4 {
        u32::from_le_bytes(bytes)
    } else {
        0
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
