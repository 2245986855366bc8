//! The raw byte streams of `Sink` and `Source`: the bytes `Source` sends and the checksum
//! `Sunk` answers with.

use crate::pattern::{pattern_word, Checksum};

/// Byte `offset` of the stream [`Request::Source`](super::Request::Source) sends: the little-endian bytes of
/// [`pattern_word`]`(seed, offset / 8)`, one word after another.
#[inline]
pub fn source_byte(seed: u64, offset: u64) -> u8 {
    pattern_word(seed, offset / 8).to_le_bytes()[(offset % 8) as usize]
}

/// Fills `out` with the [`Request::Source`](super::Request::Source) stream from byte `offset` on.
pub fn fill_source(seed: u64, offset: u64, out: &mut [u8]) {
    let mut at = 0;
    let mut offset = offset;
    // Up to the next word boundary byte by byte, then whole words.
    while at < out.len() && offset % 8 != 0 {
        out[at] = source_byte(seed, offset);
        at += 1;
        offset += 1;
    }
    while out.len() - at >= 8 {
        out[at..at + 8].copy_from_slice(&pattern_word(seed, offset / 8).to_le_bytes());
        at += 8;
        offset += 8;
    }
    while at < out.len() {
        out[at] = source_byte(seed, offset);
        at += 1;
        offset += 1;
    }
}

/// The checksum of a byte stream ([`Response::Sunk`](super::Response::Sunk)): the bytes taken as little-endian u64
/// words, the last one zero-padded when the length is not a multiple of 8, mixed into a
/// [`Checksum`]. Feed it any split of the stream; the result is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamChecksum {
    sum: Checksum,
    word: [u8; 8],
    filled: usize,
    len: u64,
}

impl StreamChecksum {
    /// A checksum over no bytes yet.
    pub const fn new() -> Self {
        StreamChecksum {
            sum: Checksum::new(),
            word: [0; 8],
            filled: 0,
            len: 0,
        }
    }

    /// Mixes `bytes` in.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.filled > 0 {
            let n = bytes.len().min(8 - self.filled);
            self.word[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled < 8 {
                return;
            }
            self.sum.update(u64::from_le_bytes(self.word));
            self.filled = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut value = [0u8; 8];
            value.copy_from_slice(word);
            self.sum.update(u64::from_le_bytes(value));
        }
        let rest = words.remainder();
        self.word[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    /// Bytes mixed in so far.
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// Whether no bytes were mixed in.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checksum of the bytes so far (a partial last word zero-padded).
    pub fn value(&self) -> u64 {
        let mut sum = self.sum;
        if self.filled > 0 {
            let mut word = [0u8; 8];
            word[..self.filled].copy_from_slice(&self.word[..self.filled]);
            sum.update(u64::from_le_bytes(word));
        }
        sum.value()
    }
}

/// The [`StreamChecksum`] of `len` bytes of the [`Request::Source`](super::Request::Source) stream with `seed`.
pub fn source_checksum(seed: u64, len: u64) -> u64 {
    let mut sum = Checksum::new();
    for index in 0..len / 8 {
        sum.update(pattern_word(seed, index));
    }
    let tail = (len % 8) as usize;
    if tail > 0 {
        let mut word = pattern_word(seed, len / 8).to_le_bytes();
        word[tail..].fill(0);
        sum.update(u64::from_le_bytes(word));
    }
    sum.value()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    #[test]
    fn stream_checksum_is_split_independent_and_matches_the_source() {
        for len in [0u64, 1, 7, 8, 9, 100, 4096 + 3] {
            let mut bytes = vec![0u8; len as usize];
            fill_source(77, 0, &mut bytes);
            for (i, &b) in bytes.iter().enumerate() {
                assert_eq!(b, source_byte(77, i as u64));
            }
            let mut whole = StreamChecksum::new();
            whole.update(&bytes);
            let mut pieces = StreamChecksum::new();
            for chunk in bytes.chunks(3) {
                pieces.update(chunk);
            }
            assert_eq!(whole.value(), pieces.value());
            assert_eq!(whole.value(), source_checksum(77, len));
            assert_eq!(whole.len(), len);
            // Filling from an offset continues the same stream.
            if len > 5 {
                let mut tail = vec![0u8; len as usize - 5];
                fill_source(77, 5, &mut tail);
                assert_eq!(&tail[..], &bytes[5..]);
            }
        }
        // Whole words: the same as the touch checksum of the pattern.
        assert_eq!(source_checksum(9, 1 << 20), crate::pattern_checksum(9, 1));
    }
}
