//! Knowing which VM this is: the VM identity page the VMM writes at [`VM_IDENTITY_ADDR`]
//! (`zygote_guest_proto::VmIdentity`), and random state seeded from it.
//!
//! A clone of a running VM (a fork) starts with its parent's memory, random state included, so
//! two clones would draw the same "random" numbers. The VMM gives each clone a new generation
//! and a new id on that page; [`Identity::check`] reads the generation word (one memory read,
//! no VM exit) and, when it changed, takes on the new id and reseeds from the TSC and the id.
//! A page without the magic (a VMM that writes none) reads as generation 0 and a zero id.

use core::ptr::read_volatile;

use zygote_guest_proto::{VmIdentity, VM_IDENTITY_ADDR, VM_IDENTITY_LEN, VM_ID_LEN};

use crate::clock::Clock;

/// What this VM is, and its random state.
pub struct Identity {
    /// The raw generation word last seen (compared as is, so a page without the magic does
    /// not look changed on every pass).
    seen: u64,
    current: VmIdentity,
    seed: u64,
    state: u64,
}

impl Identity {
    /// Reads the page and seeds the random state.
    pub fn new() -> Self {
        let mut identity = Identity {
            seen: generation_word(),
            current: VmIdentity::default(),
            seed: 0,
            state: 0,
        };
        identity.reload();
        identity
    }

    /// Polls the generation; on a change (this VM is a clone), takes on the new identity and
    /// reseeds. Returns whether it changed.
    pub fn check(&mut self) -> bool {
        let word = generation_word();
        if word == self.seen {
            return false;
        }
        self.seen = word;
        self.reload();
        true
    }

    fn reload(&mut self) {
        let mut page = [0u8; VM_IDENTITY_LEN];
        for (offset, byte) in page.iter_mut().enumerate() {
            // SAFETY: the identity page is identity-mapped RAM, user-readable, that the VMM
            // reserved (e820) and only it writes; volatile because it does so behind our back.
            *byte = unsafe { read_volatile((VM_IDENTITY_ADDR as *const u8).add(offset)) };
        }
        self.current = VmIdentity::decode(&page).unwrap_or_default();
        let (low, high) = self.current.id.split_at(VM_ID_LEN / 2);
        let word = |bytes: &[u8]| {
            let mut le = [0u8; 8];
            le.copy_from_slice(bytes);
            u64::from_le_bytes(le)
        };
        let mut mix = Clock::now() ^ word(low) ^ word(high).rotate_left(32);
        mix ^= self.current.generation.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.seed = splitmix64(&mut mix);
        self.state = self.seed;
    }

    /// What the page said when last read.
    pub fn current(&self) -> VmIdentity {
        self.current
    }

    /// The seed the random state was last seeded with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next random value.
    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.state)
    }
}

/// The generation word of the page, whatever the magic says.
fn generation_word() -> u64 {
    let at = VM_IDENTITY_ADDR as usize + VmIdentity::GENERATION_OFFSET;
    // SAFETY: as in `reload`; the word is 8-byte aligned inside the page.
    unsafe { read_volatile(at as *const u64) }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state stepped by a Weyl constant, mixed out.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
