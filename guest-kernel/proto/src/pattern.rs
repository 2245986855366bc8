//! The memory pattern `touch` writes and the checksum it reads back.

/// Multiplier spreading word indices over the pattern (the 64-bit golden ratio).
pub const PATTERN_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// Number of 64-bit words in one MiB.
pub const WORDS_PER_MIB: u64 = (1 << 20) / 8;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Word `index` (counted in u64 words from the start of the touched range) of the pattern.
#[inline]
pub const fn pattern_word(pattern: u64, index: u64) -> u64 {
    pattern ^ index.wrapping_mul(PATTERN_MULTIPLIER)
}

/// FNV-1a-style checksum over 64-bit words: `h = (h ^ w) * prime` for each word, starting from
/// the FNV-64 offset basis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum(u64);

impl Checksum {
    /// A checksum over no words yet.
    pub const fn new() -> Self {
        Self(FNV_OFFSET_BASIS)
    }

    /// Mixes one word in.
    #[inline]
    pub fn update(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(FNV_PRIME);
    }

    /// The checksum of the words mixed in so far.
    pub const fn value(&self) -> u64 {
        self.0
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

/// The checksum a correct `touch:<mib>:<pattern>` run reports: that of `mib` MiB of the pattern.
pub fn pattern_checksum(pattern: u64, mib: u32) -> u64 {
    let mut sum = Checksum::new();
    for index in 0..u64::from(mib) * WORDS_PER_MIB {
        sum.update(pattern_word(pattern, index));
    }
    sum.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_zero_is_the_pattern() {
        assert_eq!(pattern_word(0xdead_beef, 0), 0xdead_beef);
        assert_eq!(pattern_word(0, 1), PATTERN_MULTIPLIER);
        assert_eq!(
            pattern_word(u64::MAX, 2),
            u64::MAX ^ PATTERN_MULTIPLIER.wrapping_mul(2)
        );
    }

    #[test]
    fn empty_checksum_is_the_offset_basis() {
        assert_eq!(Checksum::new().value(), 0xcbf2_9ce4_8422_2325);
        assert_eq!(pattern_checksum(1234, 0), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn checksum_matches_a_hand_computation() {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for w in [7u64, 7 ^ PATTERN_MULTIPLIER] {
            h = (h ^ w).wrapping_mul(0x100_0000_01b3);
        }
        let mut sum = Checksum::default();
        sum.update(pattern_word(7, 0));
        sum.update(pattern_word(7, 1));
        assert_eq!(sum.value(), h);
    }

    #[test]
    fn checksum_depends_on_pattern_and_size() {
        let a = pattern_checksum(1, 1);
        assert_ne!(a, pattern_checksum(2, 1));
        assert_ne!(a, pattern_checksum(1, 2));
        assert_eq!(a, pattern_checksum(1, 1));
    }
}
