//! Writer and reader of the state file container.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use super::codec::{decode, encode, CodecError};
use super::error::{Place, StateFileError};

/// First 8 bytes of every state file.
pub const MAGIC: [u8; 8] = *b"ZYGOTESN";
/// Format version 1: the framing described in the module docs.
pub const FORMAT_V1: u32 = 1;
/// The format version this build writes.
pub const FORMAT_CURRENT: u32 = FORMAT_V1;
/// Format versions this build reads (an explicit list, never a range).
pub const FORMAT_SUPPORTED: &[u32] = &[FORMAT_V1];
/// Bytes of the file header.
pub const HEADER_LEN: usize = 20;
/// Bytes of a section header.
pub const SECTION_HEADER_LEN: usize = 17;
/// Largest section payload accepted, in bytes (64 MiB).
pub const MAX_SECTION_LEN: u64 = 64 << 20;
/// Most sections a file may hold.
pub const MAX_SECTIONS: u32 = 1024;
/// Largest state file accepted, in bytes (256 MiB).
pub const MAX_TOTAL_LEN: u64 = 256 << 20;

/// A section's type tag. The named constants are the sections Zygote writes; any other `u32`
/// is a valid tag that a reader may ignore or require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SectionId(pub u32);

impl SectionId {
    /// The configuration the VM was made from.
    pub const VM_CONFIG: SectionId = SectionId(1);
    /// Per-vCPU state.
    pub const VCPUS: SectionId = SectionId(2);
    /// Per-VM state (irqchip, PIT, clock).
    pub const VM: SectionId = SectionId(3);
    /// Device state.
    pub const DEVICES: SectionId = SectionId(4);
    /// The memory manifest ([`crate::memory::MemoryManifest`]).
    pub const MEMORY: SectionId = SectionId(5);
    /// The CPUID the VM was created with.
    pub const CPUID: SectionId = SectionId(6);
    /// Header of a compressed memory image.
    pub const IMAGE_MANIFEST: SectionId = SectionId(0x100);
    /// Chunk index of a compressed memory image.
    pub const CHUNK_INDEX: SectionId = SectionId(0x101);
    /// Page bitmap of a diff memory image.
    pub const DIFF_BITMAP: SectionId = SectionId(0x102);
    /// Page list of a prefetch working-set file.
    pub const WORKING_SET: SectionId = SectionId(0x103);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::VM_CONFIG => "vm-config",
            Self::VCPUS => "vcpus",
            Self::VM => "vm",
            Self::DEVICES => "devices",
            Self::MEMORY => "memory",
            Self::CPUID => "cpuid",
            Self::IMAGE_MANIFEST => "image-manifest",
            Self::CHUNK_INDEX => "chunk-index",
            Self::DIFF_BITMAP => "diff-bitmap",
            Self::WORKING_SET => "working-set",
            _ => return None,
        })
    }
}

impl fmt::Display for SectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}"),
            None => write!(f, "{:#x}", self.0),
        }
    }
}

/// One section as read (checked) or to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Type tag.
    pub id: SectionId,
    /// Version of the payload's layout, owned by whoever defines the section.
    pub version: u8,
    /// Payload.
    pub bytes: Vec<u8>,
}

impl Section {
    fn crc(id: SectionId, version: u8, bytes: &[u8]) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&id.0.to_le_bytes());
        h.update(&[version]);
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
        h.finalize()
    }
}

/// Builds a state file in memory.
#[derive(Debug, Default, Clone)]
pub struct StateFileWriter {
    sections: Vec<Section>,
}

impl StateFileWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a section of raw bytes.
    ///
    /// # Errors
    /// [`StateFileError::DuplicateSection`] if `id` is already present,
    /// [`StateFileError::SectionTooLarge`] / [`StateFileError::TooManySections`] /
    /// [`StateFileError::FileTooLarge`] if a cap would be exceeded (so a reader would refuse it).
    pub fn section(
        &mut self,
        id: SectionId,
        version: u8,
        bytes: Vec<u8>,
    ) -> Result<&mut Self, StateFileError> {
        let place = Place::Section {
            index: self.sections.len() as u32,
            id: Some(id),
        };
        if self.sections.iter().any(|s| s.id == id) {
            return Err(StateFileError::DuplicateSection { section: id });
        }
        if bytes.len() as u64 > MAX_SECTION_LEN {
            return Err(StateFileError::SectionTooLarge {
                place,
                len: bytes.len() as u64,
                cap: MAX_SECTION_LEN,
            });
        }
        if self.sections.len() as u32 >= MAX_SECTIONS {
            return Err(StateFileError::TooManySections {
                count: MAX_SECTIONS + 1,
                cap: MAX_SECTIONS,
            });
        }
        if self.len() + (SECTION_HEADER_LEN + bytes.len()) as u64 > MAX_TOTAL_LEN {
            return Err(StateFileError::FileTooLarge {
                place,
                cap: MAX_TOTAL_LEN,
            });
        }
        self.sections.push(Section { id, version, bytes });
        Ok(self)
    }

    /// Adds a section holding `value` encoded with [`encode`].
    ///
    /// # Errors
    /// As [`StateFileWriter::section`], plus [`StateFileError::Decode`] if the value does not
    /// encode.
    pub fn encoded<T: Serialize + ?Sized>(
        &mut self,
        id: SectionId,
        version: u8,
        value: &T,
    ) -> Result<&mut Self, StateFileError> {
        let bytes = encode(value).map_err(|source| StateFileError::Decode {
            section: id,
            source,
        })?;
        self.section(id, version, bytes)
    }

    /// Length in bytes of the encoded file.
    pub fn len(&self) -> u64 {
        HEADER_LEN as u64
            + self
                .sections
                .iter()
                .map(|s| (SECTION_HEADER_LEN + s.bytes.len()) as u64)
                .sum::<u64>()
    }

    /// True when no section was added.
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    /// The encoded file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_CURRENT.to_le_bytes());
        out.extend_from_slice(&(self.sections.len() as u32).to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        for s in &self.sections {
            out.extend_from_slice(&s.id.0.to_le_bytes());
            out.push(s.version);
            out.extend_from_slice(&(s.bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&Section::crc(s.id, s.version, &s.bytes).to_le_bytes());
            out.extend_from_slice(&s.bytes);
        }
        out
    }

    /// Writes the file atomically at `path` (see [`super::write_atomic`]).
    ///
    /// # Errors
    /// [`super::WriteError`]; nothing is left at `path` or beside it on error.
    pub fn write_atomic(&self, path: &Path) -> Result<(), super::WriteError> {
        let bytes = self.to_bytes();
        super::write_atomic(path, |file| {
            use std::io::Write;
            file.write_all(&bytes)
        })
    }
}

/// A state file read back and checked: magic, version, every crc, every cap, no duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    sections: Vec<Section>,
}

impl StateFile {
    /// Parses a whole file held in memory; bytes after the last section are refused.
    ///
    /// # Errors
    /// Any [`StateFileError`] but `Io`, naming the place.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateFileError> {
        let mut reader = bytes;
        let (file, _) = Self::read_prefix(&mut reader, u64::MAX)?;
        if !reader.is_empty() {
            return Err(StateFileError::TrailingBytes {
                extra: reader.len() as u64,
            });
        }
        Ok(file)
    }

    /// Reads and checks the state file at `path`.
    ///
    /// # Errors
    /// As [`StateFile::from_bytes`], plus [`StateFileError::Io`].
    pub fn read(path: &Path) -> Result<Self, StateFileError> {
        let io_err = |source| StateFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let mut reader = io::BufReader::new(file);
        let (state, consumed) = Self::read_prefix(&mut reader, len).map_err(|e| match e {
            StateFileError::Io { source, .. } => io_err(source),
            other => other,
        })?;
        if consumed != len {
            return Err(StateFileError::TrailingBytes {
                extra: len - consumed,
            });
        }
        Ok(state)
    }

    /// Reads one container from the front of `reader` and returns it with the number of bytes
    /// it took. `available` is how many bytes the reader can still give (the file length), so
    /// a length past it is [`StateFileError::Truncated`] before anything is allocated.
    ///
    /// # Errors
    /// Any [`StateFileError`]; an I/O error other than an early end is `Io` with an empty path.
    pub fn read_prefix<R: Read>(
        reader: &mut R,
        available: u64,
    ) -> Result<(Self, u64), StateFileError> {
        let mut header = [0u8; HEADER_LEN];
        read_exact(reader, &mut header, Place::Header)?;
        let magic: [u8; 8] = header[..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(StateFileError::BadMagic { found: magic });
        }
        let field = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&header[..16]) != field(16) {
            return Err(StateFileError::Checksum {
                place: Place::Header,
            });
        }
        let version = field(8);
        if !FORMAT_SUPPORTED.contains(&version) {
            return Err(StateFileError::UnsupportedVersion {
                found: version,
                supported: FORMAT_SUPPORTED,
            });
        }
        let count = field(12);
        if count > MAX_SECTIONS {
            return Err(StateFileError::TooManySections {
                count,
                cap: MAX_SECTIONS,
            });
        }
        let mut consumed = HEADER_LEN as u64;
        let mut sections: Vec<Section> = Vec::new();
        for index in 0..count {
            let section = read_section(reader, index, &mut consumed, available)?;
            if sections.iter().any(|s| s.id == section.id) {
                return Err(StateFileError::DuplicateSection {
                    section: section.id,
                });
            }
            sections.push(section);
        }
        Ok((StateFile { sections }, consumed))
    }

    /// All sections, in file order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The section `id`.
    ///
    /// # Errors
    /// [`StateFileError::MissingSection`].
    pub fn section(&self, id: SectionId) -> Result<&Section, StateFileError> {
        self.sections
            .iter()
            .find(|s| s.id == id)
            .ok_or(StateFileError::MissingSection { section: id })
    }

    /// Decodes section `id`, whose version must be one of `versions`, as a `T`; returns the
    /// version found with the value, so the caller can match on it.
    ///
    /// # Errors
    /// [`StateFileError::MissingSection`], [`StateFileError::UnsupportedSectionVersion`],
    /// [`StateFileError::Decode`].
    pub fn decode<T: DeserializeOwned>(
        &self,
        id: SectionId,
        versions: &[u8],
    ) -> Result<(u8, T), StateFileError> {
        let section = self.section(id)?;
        if !versions.contains(&section.version) {
            return Err(StateFileError::UnsupportedSectionVersion {
                section: id,
                found: section.version,
                supported: versions.to_vec(),
            });
        }
        let value =
            decode(&section.bytes).map_err(|source: CodecError| StateFileError::Decode {
                section: id,
                source,
            })?;
        Ok((section.version, value))
    }
}

fn read_section<R: Read>(
    reader: &mut R,
    index: u32,
    consumed: &mut u64,
    available: u64,
) -> Result<Section, StateFileError> {
    let mut head = [0u8; SECTION_HEADER_LEN];
    read_exact(reader, &mut head, Place::Section { index, id: None })?;
    let id = SectionId(u32::from_le_bytes(head[..4].try_into().expect("4 bytes")));
    let version = head[4];
    let len = u64::from_le_bytes(head[5..13].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(head[13..17].try_into().expect("4 bytes"));
    let place = Place::Section {
        index,
        id: Some(id),
    };
    if len > MAX_SECTION_LEN {
        return Err(StateFileError::SectionTooLarge {
            place,
            len,
            cap: MAX_SECTION_LEN,
        });
    }
    *consumed += SECTION_HEADER_LEN as u64;
    if *consumed + len > MAX_TOTAL_LEN {
        return Err(StateFileError::FileTooLarge {
            place,
            cap: MAX_TOTAL_LEN,
        });
    }
    if *consumed + len > available {
        return Err(StateFileError::Truncated { place });
    }
    let mut bytes = vec![0u8; len as usize];
    read_exact(reader, &mut bytes, place)?;
    *consumed += len;
    if Section::crc(id, version, &bytes) != crc {
        return Err(StateFileError::Checksum { place });
    }
    Ok(Section { id, version, bytes })
}

fn read_exact<R: Read>(reader: &mut R, buf: &mut [u8], place: Place) -> Result<(), StateFileError> {
    reader
        .read_exact(buf)
        .map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => StateFileError::Truncated { place },
            _ => StateFileError::Io {
                path: Default::default(),
                source,
            },
        })
}
