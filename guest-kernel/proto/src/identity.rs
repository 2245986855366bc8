//! The VM identity page: how a guest learns it is a clone (VMGenID in spirit).
//!
//! The VMM writes one 4 KiB page of guest RAM at [`VM_IDENTITY_ADDR`], which the e820 map
//! marks reserved, and the guest only reads it. Layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | [`VM_IDENTITY_MAGIC`] |
//! | 8 | 8 | generation: 0 for a VM booted from scratch, one more than its parent's for a clone |
//! | 16 | 16 | VM id: random bytes, new for every VM (a clone gets its own) |
//! | 32 | 4064 | zero |
//!
//! The VMM writes it only while no vCPU runs (before the first start, or on a paused clone), so
//! a guest never sees it half-written. A guest that finds another generation than the one it
//! last saw is a clone: it reseeds its random state and takes on the new id. Reading it costs a
//! memory read, no VM exit.
//!
//! ```
//! use zygote_guest_proto::VmIdentity;
//!
//! let identity = VmIdentity { generation: 1, id: [7; 16] };
//! let page = identity.encode();
//! assert_eq!(VmIdentity::decode(&page), Some(identity));
//! assert_eq!(VmIdentity::decode(&[0; 32]), None, "no magic, no identity");
//! ```

/// Guest-physical address of the identity page (4 KiB, below the zero page at 0x7000).
pub const VM_IDENTITY_ADDR: u64 = 0x6000;

/// The first 8 bytes of a written identity page: `ZYGVMID1` as a little-endian `u64`.
pub const VM_IDENTITY_MAGIC: u64 = u64::from_le_bytes(*b"ZYGVMID1");

/// Bytes of the VM id.
pub const VM_ID_LEN: usize = 16;

/// Bytes of the page that carry fields (the rest is zero).
pub const VM_IDENTITY_LEN: usize = 32;

/// What the identity page says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmIdentity {
    /// 0 for a VM booted from scratch; a clone's is one more than its parent's.
    pub generation: u64,
    /// Random bytes, different for every VM.
    pub id: [u8; VM_ID_LEN],
}

impl VmIdentity {
    /// Offset of the magic in the page.
    pub const MAGIC_OFFSET: usize = 0;
    /// Offset of the generation in the page.
    pub const GENERATION_OFFSET: usize = 8;
    /// Offset of the id in the page.
    pub const ID_OFFSET: usize = 16;

    /// The first [`VM_IDENTITY_LEN`] bytes of the page.
    pub fn encode(&self) -> [u8; VM_IDENTITY_LEN] {
        let mut page = [0u8; VM_IDENTITY_LEN];
        page[..Self::GENERATION_OFFSET].copy_from_slice(&VM_IDENTITY_MAGIC.to_le_bytes());
        page[Self::GENERATION_OFFSET..Self::ID_OFFSET]
            .copy_from_slice(&self.generation.to_le_bytes());
        page[Self::ID_OFFSET..].copy_from_slice(&self.id);
        page
    }

    /// The identity in `page` (at least [`VM_IDENTITY_LEN`] bytes); `None` when the magic is
    /// missing (a VMM that writes no identity page) or the bytes are too few.
    pub fn decode(page: &[u8]) -> Option<Self> {
        let page = page.get(..VM_IDENTITY_LEN)?;
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&page[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        if word(Self::MAGIC_OFFSET) != VM_IDENTITY_MAGIC {
            return None;
        }
        let mut id = [0u8; VM_ID_LEN];
        id.copy_from_slice(&page[Self::ID_OFFSET..]);
        Some(VmIdentity {
            generation: word(Self::GENERATION_OFFSET),
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_as_documented() {
        let page = VmIdentity {
            generation: 0x0102,
            id: [0xab; 16],
        }
        .encode();
        assert_eq!(&page[..8], b"ZYGVMID1");
        assert_eq!(&page[8..16], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&page[16..32], &[0xab; 16]);
    }

    #[test]
    fn short_or_unmarked_pages_have_no_identity() {
        let page = VmIdentity::default().encode();
        assert_eq!(VmIdentity::decode(&page[..31]), None);
        let mut wrong = page;
        wrong[0] ^= 1;
        assert_eq!(VmIdentity::decode(&wrong), None);
        assert_eq!(VmIdentity::decode(&page), Some(VmIdentity::default()));
    }
}
