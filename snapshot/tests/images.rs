//! Memory images: raw, compressed, diff chains and merge, all read back through PageSource.

mod common;

use std::os::unix::fs::MetadataExt;

use zygote_snapshot::memory::{compressed, diff, merge, raw, FdMemory, ImageError};
use zygote_snapshot::{PageBitmap, PageSource, SnapshotId, PAGE_SIZE};

fn read_all(source: &mut PageSource) -> Vec<u8> {
    let mut buf = vec![0u8; source.layout().size() as usize];
    source.read_pages(0, &mut buf).unwrap();
    buf
}

#[test]
fn raw_image_from_guest_memory_is_the_memfd_byte_for_byte_and_sparse() {
    let layout = common::layout();
    let mem = common::patterned_guest_memory(&layout, 7);
    let dir = common::temp_dir("raw-gm");
    let path = dir.join("mem.raw");
    let stats = raw::write_raw(&mem, &layout, &path).unwrap();
    let data_pages = layout.pages().div_ceil(3);
    assert_eq!(stats.data_pages, data_pages);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), layout.size());
    // Zero pages are holes: allocated blocks cover about the data pages only.
    assert!(
        meta.blocks() * 512 <= (data_pages + 16) * PAGE_SIZE as u64,
        "{} blocks",
        meta.blocks()
    );
    assert_eq!(std::fs::read(&path).unwrap(), common::expected(&layout, 7));
    let mut source = PageSource::open_raw(&path, &layout).unwrap();
    assert_eq!(read_all(&mut source), common::expected(&layout, 7));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn raw_image_from_memfd_skips_holes_and_matches() {
    let layout = common::layout();
    let memfd = common::patterned_memfd(&layout, 9);
    let dir = common::temp_dir("raw-fd");
    let path = dir.join("mem.raw");
    let mem = FdMemory::new(&memfd, &layout).unwrap();
    raw::write_raw(&mem, &layout, &path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), common::expected(&layout, 9));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_raw_image_shorter_than_the_layout_is_refused_at_open() {
    let layout = common::layout();
    let dir = common::temp_dir("raw-short");
    let path = dir.join("mem.raw");
    std::fs::write(&path, vec![0u8; layout.size() as usize - PAGE_SIZE]).unwrap();
    match PageSource::open_raw(&path, &layout) {
        Err(ImageError::TooShort { len, need, .. }) => assert_eq!(
            (len, need),
            (layout.size() - PAGE_SIZE as u64, layout.size())
        ),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn compressed_image_reads_every_page_and_one_page_alone() {
    let layout = common::layout();
    let mem = common::patterned_guest_memory(&layout, 3);
    let dir = common::temp_dir("zstd");
    let path = dir.join("mem.zst");
    let id = SnapshotId::random();
    compressed::write_compressed(&mem, &layout, id, compressed::DEFAULT_LEVEL, &path).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < layout.size() / 4);
    let mut source = PageSource::open_compressed(&path, &layout).unwrap();
    assert_eq!(source.id(), Some(id));
    assert!(source.raw_file().is_none());
    let mut page = [0u8; PAGE_SIZE];
    source.read_pages(600, &mut page).unwrap();
    assert_eq!(page, common::page_content(600, 3));
    assert_eq!(read_all(&mut source), common::expected(&layout, 3));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_compressed_image_with_a_chunk_past_the_end_is_refused() {
    let layout = common::layout();
    let mem = common::patterned_guest_memory(&layout, 3);
    let dir = common::temp_dir("zstd-bad");
    let path = dir.join("mem.zst");
    compressed::write_compressed(&mem, &layout, SnapshotId::random(), 1, &path).unwrap();
    // Cutting bytes from the front moves every chunk offset past what the index says.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.zst");
    std::fs::write(&cut, &bytes[4096..]).unwrap();
    let trailer_at = bytes.len() - 4096 - 16;
    let mut patched = bytes[4096..].to_vec();
    let container_at =
        u64::from_le_bytes(patched[trailer_at..trailer_at + 8].try_into().unwrap()) - 4096;
    patched[trailer_at..trailer_at + 8].copy_from_slice(&container_at.to_le_bytes());
    std::fs::write(&cut, &patched).unwrap();
    assert!(matches!(
        PageSource::open_compressed(&cut, &layout),
        Err(ImageError::BadChunk { .. })
    ));
    // Flipping a byte of the container is a header checksum error.
    let mut flipped = bytes.clone();
    let at = bytes.len() - 30;
    flipped[at] ^= 1;
    std::fs::write(&cut, &flipped).unwrap();
    assert!(matches!(
        PageSource::open_compressed(&cut, &layout),
        Err(ImageError::Header { .. })
    ));
    // A raw file is not a compressed image.
    std::fs::write(&cut, vec![0u8; 8192]).unwrap();
    assert!(matches!(
        PageSource::open_compressed(&cut, &layout),
        Err(ImageError::WrongKind { .. })
    ));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A full image (seed 1), then two diffs: the first dirties pages 1..40 (seed 2, including
/// pages that become zero), the second pages 30..50 and the last page (seed 3).
fn chain(
    dir: &std::path::Path,
    compressed_base: bool,
) -> (PageSource, Vec<u8>, SnapshotId, Vec<std::path::PathBuf>) {
    let layout = common::layout();
    let mem = common::patterned_guest_memory(&layout, 1);
    let base_id = SnapshotId::random();
    let base = if compressed_base {
        let p = dir.join("base.zst");
        compressed::write_compressed(&mem, &layout, base_id, 1, &p).unwrap();
        p
    } else {
        let p = dir.join("base.raw");
        raw::write_raw(&mem, &layout, &p).unwrap();
        p
    };
    let mut expect = common::expected(&layout, 1);
    let mut dirty1 = PageBitmap::new(layout.pages());
    dirty1.set_range(1, 39);
    common::write_pattern(&mem, &layout, 2, |p| (1..40).contains(&p));
    // Page 3 had data and is now zero: the diff must still carry it.
    vm_memory::Bytes::write_slice(
        &mem,
        &[0u8; PAGE_SIZE],
        vm_memory::GuestAddress(3 * PAGE_SIZE as u64),
    )
    .unwrap();
    let id1 = SnapshotId::random();
    let d1 = dir.join("d1.diff");
    diff::write_diff(&mem, &layout, &dirty1, id1, base_id, &d1).unwrap();
    let mut dirty2 = PageBitmap::new(layout.pages());
    dirty2.set_range(30, 20);
    dirty2.set(layout.pages() - 1);
    common::write_pattern(&mem, &layout, 3, |p| {
        (30..50).contains(&p) || p == layout.pages() - 1
    });
    let id2 = SnapshotId::random();
    let d2 = dir.join("d2.diff");
    diff::write_diff(&mem, &layout, &dirty2, id2, id1, &d2).unwrap();
    // Expected = what the guest memory holds now.
    let ram = zygote_snapshot::memory::raw::write_raw(&mem, &layout, &dir.join("truth.raw"))
        .map(|_| std::fs::read(dir.join("truth.raw")).unwrap())
        .unwrap();
    expect.copy_from_slice(&ram);
    let open_base = if compressed_base {
        PageSource::open_compressed(&base, &layout)
    } else {
        PageSource::open_raw(&base, &layout)
    };
    let source = open_base.unwrap().with_diffs(base_id, &[&d1, &d2]).unwrap();
    (source, expect, base_id, vec![base, d1, d2])
}

#[test]
fn a_diff_chain_reads_as_the_latest_memory_including_pages_that_became_zero() {
    for compressed_base in [false, true] {
        let dir = common::temp_dir("chain");
        let (mut source, expect, _, _) = chain(&dir, compressed_base);
        let got = read_all(&mut source);
        assert_eq!(got[3 * PAGE_SIZE..4 * PAGE_SIZE], [0u8; PAGE_SIZE]);
        assert_eq!(got, expect);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_diff_applied_to_the_wrong_parent_is_refused() {
    let dir = common::temp_dir("chain-parent");
    let (_, _, base_id, paths) = chain(&dir, false);
    let layout = common::layout();
    // Out of order.
    let out_of_order = PageSource::open_raw(&paths[0], &layout)
        .unwrap()
        .with_diffs(base_id, &[&paths[2], &paths[1]]);
    assert!(matches!(out_of_order, Err(ImageError::WrongParent { .. })));
    // Another base.
    let other = PageSource::open_raw(&paths[0], &layout)
        .unwrap()
        .with_diffs(SnapshotId::random(), &[&paths[1]]);
    assert!(matches!(other, Err(ImageError::WrongParent { .. })));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn merging_a_chain_gives_a_raw_full_image_of_the_latest_memory() {
    for compressed_base in [false, true] {
        let dir = common::temp_dir("merge");
        let (mut source, expect, _, _) = chain(&dir, compressed_base);
        let merged = dir.join("merged.raw");
        merge::merge_to_raw(&mut source, &merged).unwrap();
        assert_eq!(std::fs::read(&merged).unwrap(), expect);
        let mut again = PageSource::open_raw(&merged, &common::layout()).unwrap();
        assert_eq!(read_all(&mut again), expect);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
