//! Errors of reading a state file.

use std::fmt;

use super::{codec::CodecError, SectionId};

/// Where in a state file a failure was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The file header (magic, version, section count, header crc).
    Header,
    /// The `index`-th section (0-based); `id` when its header was read.
    Section {
        /// Position of the section in the file, from 0.
        index: u32,
        /// The section's id, when its header could be read.
        id: Option<SectionId>,
    },
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Header => write!(f, "header"),
            Place::Section {
                index,
                id: Some(id),
            } => write!(f, "section #{index} ({id})"),
            Place::Section { index, id: None } => write!(f, "section #{index}"),
        }
    }
}

/// Why a state file was refused. Each variant names the place it concerns; nothing of a
/// refused file is used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// The file ended inside `place`.
    #[error("state file truncated in the {place}")]
    Truncated {
        /// Where the file ended.
        place: Place,
    },
    /// The file does not start with [`super::MAGIC`].
    #[error("not a Zygote state file (bad magic {found:02x?})")]
    BadMagic {
        /// The first 8 bytes found.
        found: [u8; 8],
    },
    /// The format version is not one this build reads.
    #[error("state file format version {found} is not supported (this build reads {supported:?})")]
    UnsupportedVersion {
        /// Version found in the header.
        found: u32,
        /// Versions this build reads.
        supported: &'static [u32],
    },
    /// A crc32 did not match: the bytes of `place` are corrupt.
    #[error("crc32 mismatch in the {place}")]
    Checksum {
        /// The corrupt part.
        place: Place,
    },
    /// A section claims more bytes than the cap allows.
    #[error("{place} is {len} bytes, over the cap of {cap}")]
    SectionTooLarge {
        /// The section.
        place: Place,
        /// Length claimed.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// The header claims more sections than the cap allows.
    #[error("state file claims {count} sections, over the cap of {cap}")]
    TooManySections {
        /// Count claimed.
        count: u32,
        /// The cap.
        cap: u32,
    },
    /// The sections add up to more than the total cap.
    #[error("state file exceeds the total cap of {cap} bytes at the {place}")]
    FileTooLarge {
        /// Where the total went over.
        place: Place,
        /// The cap.
        cap: u64,
    },
    /// Bytes follow the last section.
    #[error("{extra} unexpected bytes after the last section")]
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// A section the reader needs is absent.
    #[error("section {section} is missing")]
    MissingSection {
        /// The section asked for.
        section: SectionId,
    },
    /// A section id appears twice.
    #[error("section {section} appears twice")]
    DuplicateSection {
        /// The repeated id.
        section: SectionId,
    },
    /// A section's version is not one the reader knows.
    #[error("section {section} has version {found}, this build reads {supported:?}")]
    UnsupportedSectionVersion {
        /// The section.
        section: SectionId,
        /// Version found.
        found: u8,
        /// Versions the reader accepts.
        supported: Vec<u8>,
    },
    /// A section's payload does not decode.
    #[error("section {section} does not decode")]
    Decode {
        /// The section.
        section: SectionId,
        /// Why.
        #[source]
        source: CodecError,
    },
    /// Reading the file failed.
    #[error("reading state file {path}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
