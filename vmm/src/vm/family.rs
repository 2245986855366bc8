//! What a VM shares with every VM forked from it, at any depth: the names derived for them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::devices::VsockConfig;

/// Shared by a VM, its ancestors and all its descendants: the last vsock CID derived for one
/// of them, and the socket path every derived socket is named after.
///
/// Deriving from the parent alone does not work at depth: its CID plus its own fork count
/// repeats across generations (a grandchild would get its uncle's CID), and its socket path
/// plus a suffix grows with every generation past `SUN_LEN` (108 bytes).
#[derive(Default)]
pub(super) struct Family {
    last_cid: AtomicU64,
    base_uds: OnceLock<PathBuf>,
}

impl Family {
    /// The vsock of a child of the VM whose own vsock is `parent`: the next CID no relative
    /// got (one past the highest derived in the family so far, or past `parent.guest_cid` if
    /// that is higher), and the socket `<base>.fork<CID>`, where `<base>` is the socket of
    /// the family's first VM to fork.
    pub(super) fn derive_vsock(&self, parent: &VsockConfig) -> VsockConfig {
        let mut last = self.last_cid.load(Ordering::Relaxed);
        let guest_cid = loop {
            let next = last.max(parent.guest_cid) + 1;
            match self.last_cid.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break next,
                Err(now) => last = now,
            }
        };
        let base = self.base_uds.get_or_init(|| parent.uds_path.clone());
        let mut uds_path = base.clone().into_os_string();
        uds_path.push(format!(".fork{guest_cid}"));
        VsockConfig {
            guest_cid,
            uds_path: uds_path.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vsock(guest_cid: u64, path: &str) -> VsockConfig {
        VsockConfig {
            guest_cid,
            uds_path: path.into(),
        }
    }

    #[test]
    fn relatives_at_any_depth_get_distinct_cids_and_short_paths() {
        let family = Family::default();
        let child = family.derive_vsock(&vsock(3, "/tmp/p.vsock"));
        let sibling = family.derive_vsock(&vsock(3, "/tmp/p.vsock"));
        let mut deepest = family.derive_vsock(&child);
        for _ in 0..100 {
            deepest = family.derive_vsock(&deepest);
        }
        assert_eq!((child.guest_cid, sibling.guest_cid), (4, 5));
        assert_eq!(deepest.guest_cid, 106);
        assert_eq!(child.uds_path, PathBuf::from("/tmp/p.vsock.fork4"));
        assert_eq!(deepest.uds_path, PathBuf::from("/tmp/p.vsock.fork106"));
    }

    #[test]
    fn a_cid_the_caller_chose_is_passed_not_repeated() {
        let family = Family::default();
        assert_eq!(family.derive_vsock(&vsock(3, "/p")).guest_cid, 4);
        assert_eq!(family.derive_vsock(&vsock(50, "/q")).guest_cid, 51);
        assert_eq!(family.derive_vsock(&vsock(3, "/p")).guest_cid, 52);
    }
}
