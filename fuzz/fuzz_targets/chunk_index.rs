//! A compressed memory image's chunk index is read from disk and must not be trusted: any
//! index and chunk bytes must open and read back or fail with a typed `ImageError`, never
//! panic, hang, or read outside the file.
//!
//! The input is turned into a well-framed image (valid container and trailer, so the fuzzer
//! spends its time on the index and the chunks): chunk size, index entries, then chunk data.
//! With the first byte odd, the input is used as the whole file instead.
//!
//! Run: `cargo +nightly fuzz run chunk_index` from this folder.

#![no_main]

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};

use libfuzzer_sys::fuzz_target;
use zygote_fuzz::Input;
use zygote_snapshot::format::StateFileWriter;
use zygote_snapshot::memory::compressed::{ChunkEntry, ChunkIndex, TRAILER_MAGIC};
use zygote_snapshot::memory::{ImageKind, MemoryManifest};
use zygote_snapshot::{MemoryLayout, PageSource, SectionId, SnapshotId, PAGE_SIZE};

/// 64 pages: one chunk at the default chunk size, several at smaller ones.
const LAYOUT_BYTES: u64 = 64 * PAGE_SIZE as u64;

fn framed(input: &mut Input<'_>, layout: &MemoryLayout) -> Vec<u8> {
    let chunk_pages = u32::from(input.u16()) % 80;
    let count = usize::from(input.u8()) % 70;
    let chunks = (0..count)
        .map(|_| ChunkEntry {
            offset: u64::from(input.u32()),
            len: input.u32() % 70_000,
        })
        .collect();
    let data = input.bytes(usize::MAX).to_vec();
    let manifest = MemoryManifest {
        id: SnapshotId(1),
        parent: None,
        kind: ImageKind::Compressed,
        layout: layout.clone(),
    };
    let mut container = StateFileWriter::new();
    container
        .encoded(SectionId::IMAGE_MANIFEST, 1, &manifest)
        .expect("small");
    container
        .encoded(
            SectionId::CHUNK_INDEX,
            1,
            &ChunkIndex {
                chunk_pages,
                chunks,
            },
        )
        .expect("small");
    let mut file = data.clone();
    file.extend_from_slice(&container.to_bytes());
    file.extend_from_slice(&(data.len() as u64).to_le_bytes());
    file.extend_from_slice(&TRAILER_MAGIC);
    file
}

fuzz_target!(|bytes: &[u8]| {
    let layout = MemoryLayout::single(LAYOUT_BYTES).expect("valid layout");
    let mut input = Input(bytes);
    let whole = input.u8() & 1 == 1;
    let file_bytes = if whole {
        input.bytes(usize::MAX).to_vec()
    } else {
        framed(&mut input, &layout)
    };
    let name = std::ffi::CString::new("fuzz-image").expect("no NUL");
    // SAFETY: plain syscall with a valid C string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh fd owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(&file_bytes).expect("memfd write");
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let Ok(mut source) = PageSource::open_compressed(&path, &layout) else {
        return;
    };
    let mut page = vec![0u8; PAGE_SIZE];
    for p in 0..layout.pages() {
        if source.read_pages(p, &mut page).is_err() {
            break;
        }
    }
    let _ = source.present_pages();
});
