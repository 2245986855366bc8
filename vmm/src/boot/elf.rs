//! The kernel's ELF headers: what its `PT_LOAD` segments are, read before anything is written
//! (ELF-64 object file format, version 1.5: the file header and the program header table).

use std::io::{Read, Seek, SeekFrom};

use linux_loader::elf::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64, PT_LOAD};

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

/// Errors from reading a kernel's ELF headers.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file header could not be read (the file is shorter than 64 bytes, say).
    #[error("cannot read the ELF header: {0}")]
    ReadHeader(#[source] std::io::Error),
    /// The image is not a little-endian ELF-64 file for x86_64.
    #[error("not a little-endian ELF-64 x86_64 image")]
    NotX86_64Elf64,
    /// `e_phentsize` is not the size of an ELF-64 program header.
    #[error("program header entries are {size} bytes, not {PHDR_SIZE}")]
    ProgramHeaderSize {
        /// `e_phentsize`.
        size: u16,
    },
    /// The program header table could not be read.
    #[error("cannot read the program header table: {0}")]
    ReadProgramHeaders(#[source] std::io::Error),
    /// `e_entry` is below the lowest address a kernel is loaded at.
    #[error("entry point {entry:#x} is below {min:#x}")]
    EntryTooLow {
        /// `e_entry`.
        entry: u64,
        /// The lowest acceptable entry point.
        min: u64,
    },
    /// A segment has more bytes in the file than in memory: loading them would write past
    /// the segment's end.
    #[error("segment {index}: p_filesz {filesz:#x} is larger than p_memsz {memsz:#x}")]
    FileSizeOverMemSize {
        /// Index of the segment in the program header table.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A segment's bytes could not be copied from the file into guest memory.
    #[error("cannot load segment {index}: {source}")]
    LoadSegment {
        /// Index of the segment in the program header table.
        index: usize,
        /// Underlying error.
        source: vm_memory::GuestMemoryError,
    },
    /// The file could not be positioned at a segment's bytes.
    #[error("cannot seek to segment {index}: {source}")]
    SeekSegment {
        /// Index of the segment in the program header table.
        index: usize,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// One `PT_LOAD` segment with bytes in memory (`p_memsz > 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Index in the program header table.
    pub index: usize,
    /// `p_paddr`: where the segment goes in guest physical memory.
    pub paddr: u64,
    /// `p_offset`: where its bytes start in the file.
    pub offset: u64,
    /// `p_filesz`: bytes copied from the file; the rest of `p_memsz` is left as it is (zero
    /// in fresh guest memory).
    pub filesz: u64,
    /// `p_memsz`: bytes the segment takes in memory; at least `filesz`.
    pub memsz: u64,
}

/// What loading a kernel needs from its headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelImage {
    /// `e_entry`.
    pub entry: u64,
    /// The `PT_LOAD` segments with a non-zero memory size, in header order.
    pub segments: Vec<Segment>,
}

/// Reads and checks the ELF header and program header table of `image`. The entry point must
/// be at least `min_entry`; every segment's `p_filesz` at most its `p_memsz`.
pub fn read_headers<R: Read + Seek>(
    image: &mut R,
    min_entry: u64,
) -> Result<KernelImage, ElfError> {
    let mut ehdr = [0u8; EHDR_SIZE];
    image.rewind().map_err(ElfError::ReadHeader)?;
    image.read_exact(&mut ehdr).map_err(ElfError::ReadHeader)?;
    if ehdr[..4] != ELF_MAGIC
        || ehdr[EI_CLASS] != ELFCLASS64
        || ehdr[EI_DATA] != ELFDATA2LSB
        || le16(&ehdr, 0x12) != EM_X86_64
    {
        return Err(ElfError::NotX86_64Elf64);
    }
    let entry = le64(&ehdr, 0x18);
    if entry < min_entry {
        return Err(ElfError::EntryTooLow {
            entry,
            min: min_entry,
        });
    }
    let phentsize = le16(&ehdr, 0x36);
    let phnum = usize::from(le16(&ehdr, 0x38));
    if phnum > 0 && usize::from(phentsize) != PHDR_SIZE {
        return Err(ElfError::ProgramHeaderSize { size: phentsize });
    }
    // At most 65535 entries of 56 bytes: a bounded read.
    let mut table = vec![0u8; phnum * PHDR_SIZE];
    image
        .seek(SeekFrom::Start(le64(&ehdr, 0x20)))
        .map_err(ElfError::ReadProgramHeaders)?;
    image
        .read_exact(&mut table)
        .map_err(ElfError::ReadProgramHeaders)?;
    let mut segments = Vec::new();
    for (index, phdr) in table.chunks_exact(PHDR_SIZE).enumerate() {
        if le32(phdr, 0) != PT_LOAD {
            continue;
        }
        let segment = Segment {
            index,
            offset: le64(phdr, 0x08),
            paddr: le64(phdr, 0x18),
            filesz: le64(phdr, 0x20),
            memsz: le64(phdr, 0x28),
        };
        if segment.filesz > segment.memsz {
            return Err(ElfError::FileSizeOverMemSize {
                index,
                filesz: segment.filesz,
                memsz: segment.memsz,
            });
        }
        if segment.memsz > 0 {
            segments.push(segment);
        }
    }
    Ok(KernelImage { entry, segments })
}

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    let mut value = [0u8; 4];
    value.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(value)
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    let mut value = [0u8; 8];
    value.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(value)
}
