//! The state file: a small self-checking container of typed sections.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! header   magic [u8; 8] = b"ZYGOTESN" | format_version u32 | section_count u32 | crc32 u32
//!          (the crc32 covers the 16 bytes before it)
//! section  id u32 | version u8 | len u64 | crc32 u32 | bytes [u8; len]
//!          (the crc32 covers id, version, len and the bytes), repeated section_count times
//! ```
//!
//! The format version ([`FORMAT_CURRENT`]) changes only when this framing changes; what a
//! section holds is versioned by its own `u8`. Caps ([`MAX_SECTION_LEN`], [`MAX_SECTIONS`],
//! [`MAX_TOTAL_LEN`]) are checked before anything is allocated.

mod atomic;
mod codec;
mod container;
mod error;

pub use atomic::{write_atomic, WriteError};
pub use codec::{decode, encode, CodecError};
pub use container::{
    Section, SectionId, StateFile, StateFileWriter, FORMAT_CURRENT, FORMAT_V1, HEADER_LEN, MAGIC,
    MAX_SECTIONS, MAX_SECTION_LEN, MAX_TOTAL_LEN, SECTION_HEADER_LEN,
};
pub use error::{Place, StateFileError};
