//! Shared test doubles: a two-range layout, a patterned memfd, and a guest memory.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zygote_snapshot::{MemoryLayout, RamRange, PAGE_SIZE};

/// 2 MiB at 0 and 1 MiB at 4 GiB (so ranges cross a chunk boundary and a gap).
pub fn layout() -> MemoryLayout {
    MemoryLayout::new(vec![
        RamRange {
            guest_addr: 0,
            len: 2 << 20,
            offset: 0,
        },
        RamRange {
            guest_addr: 1 << 32,
            len: 1 << 20,
            offset: 2 << 20,
        },
    ])
    .unwrap()
}

/// The content of page `page` under pattern `seed`: every third page holds data, the rest zero.
pub fn page_content(page: u64, seed: u8) -> [u8; PAGE_SIZE] {
    let mut p = [0u8; PAGE_SIZE];
    if page.is_multiple_of(3) {
        for (i, b) in p.iter_mut().enumerate() {
            *b = (page as u8)
                .wrapping_mul(31)
                .wrapping_add(i as u8)
                .wrapping_add(seed)
                | 1;
        }
    }
    p
}

/// Expected image bytes for `layout` under `seed`.
pub fn expected(layout: &MemoryLayout, seed: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(layout.size() as usize);
    for page in 0..layout.pages() {
        v.extend_from_slice(&page_content(page, seed));
    }
    v
}

/// A memfd of `layout.size()` bytes holding the pattern (zero pages left as holes).
pub fn patterned_memfd(layout: &MemoryLayout, seed: u8) -> File {
    let name = std::ffi::CString::new("test-mem").unwrap();
    // SAFETY: plain syscall with a valid C string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fresh fd owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(layout.size()).unwrap();
    for page in 0..layout.pages() {
        if page.is_multiple_of(3) {
            file.write_all_at(&page_content(page, seed), page * PAGE_SIZE as u64)
                .unwrap();
        }
    }
    file
}

/// A vm-memory guest memory over `layout` holding the pattern.
pub fn patterned_guest_memory(layout: &MemoryLayout, seed: u8) -> GuestMemoryMmap {
    let ranges: Vec<_> = layout
        .ranges()
        .iter()
        .map(|r| (GuestAddress(r.guest_addr), r.len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).unwrap();
    write_pattern(&mem, layout, seed, |p| p.is_multiple_of(3));
    mem
}

/// Writes the pattern of `seed` into the pages `which` selects.
pub fn write_pattern(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    seed: u8,
    which: impl Fn(u64) -> bool,
) {
    for r in layout.ranges() {
        for i in 0..r.len / PAGE_SIZE as u64 {
            let page = r.offset / PAGE_SIZE as u64 + i;
            if which(page) {
                let mut content = page_content(page, seed);
                if !page.is_multiple_of(3) {
                    content = [seed | 1; PAGE_SIZE];
                }
                mem.write_slice(&content, GuestAddress(r.guest_addr + i * PAGE_SIZE as u64))
                    .unwrap();
            }
        }
    }
}

/// A fresh empty directory under the target dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "zygote-snapshot-{name}-{}-{:x}",
        std::process::id(),
        rand()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: fills a local buffer.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    u64::from_le_bytes(b)
}

/// Bytes of `len` at `ptr`, read through volatile loads (the memory may be uffd-served).
pub fn read_mapping(ptr: *const u8, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // SAFETY: callers pass a live mapping of at least `len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(ptr, v.as_mut_ptr(), len) };
    std::hint::black_box(v)
}
