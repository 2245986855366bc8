//! Memory engines without a VM: host threads read the restored memory and compare.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use zygote_snapshot::memory::{compressed, raw};
use zygote_snapshot::{
    EagerEngine, EngineError, FailureSink, MemoryEngine, MemoryLayout, MmapEngine, PageSource,
    RestoredMemory, SnapshotId,
};

pub fn sink() -> (FailureSink, Arc<Mutex<Vec<EngineError>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (Arc::new(move |e| s.lock().unwrap().push(e)), seen)
}

fn raw_image(dir: &Path, layout: &MemoryLayout, seed: u8) -> std::path::PathBuf {
    let mem = common::patterned_guest_memory(layout, seed);
    let path = dir.join("mem.raw");
    raw::write_raw(&mem, layout, &path).unwrap();
    path
}

fn check(restored: &RestoredMemory, layout: &MemoryLayout, seed: u8) {
    assert_eq!(restored.mapping.len() as u64, layout.size());
    let got = common::read_mapping(restored.mapping.as_ptr(), layout.size() as usize);
    assert!(
        got == common::expected(layout, seed),
        "restored memory differs"
    );
}

#[test]
fn eager_restores_raw_and_compressed_into_a_memfd() {
    let layout = common::layout();
    let dir = common::temp_dir("eager");
    let path = raw_image(&dir, &layout, 5);
    let (s, seen) = sink();
    let restored = EagerEngine::new()
        .restore(
            PageSource::open_raw(&path, &layout).unwrap(),
            &layout,
            s.clone(),
        )
        .unwrap();
    check(&restored, &layout, 5);
    assert_eq!(
        restored.memfd.as_ref().unwrap().metadata().unwrap().len(),
        layout.size()
    );
    let zst = dir.join("mem.zst");
    compressed::write_compressed(
        &common::patterned_guest_memory(&layout, 5),
        &layout,
        SnapshotId::random(),
        1,
        &zst,
    )
    .unwrap();
    let restored = EagerEngine::new()
        .restore(
            PageSource::open_compressed(&zst, &layout).unwrap(),
            &layout,
            s,
        )
        .unwrap();
    check(&restored, &layout, 5);
    assert!(seen.lock().unwrap().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn mmap_restores_share_the_image_and_writes_stay_private() {
    let layout = common::layout();
    let dir = common::temp_dir("mmap");
    let path = raw_image(&dir, &layout, 6);
    let (s, _) = sink();
    let a = MmapEngine::new()
        .restore(
            PageSource::open_raw(&path, &layout).unwrap(),
            &layout,
            s.clone(),
        )
        .unwrap();
    let b = MmapEngine::new()
        .restore(PageSource::open_raw(&path, &layout).unwrap(), &layout, s)
        .unwrap();
    assert!(a.memfd.is_none() && a.service.is_none());
    // SAFETY: the mapping is live and writable; nothing else uses it.
    unsafe { a.mapping.as_ptr().write_volatile(0xaa) };
    check(&b, &layout, 6);
    assert_eq!(std::fs::read(&path).unwrap(), common::expected(&layout, 6));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn mmap_refuses_a_compressed_image() {
    let layout = common::layout();
    let dir = common::temp_dir("mmap-zst");
    let zst = dir.join("mem.zst");
    compressed::write_compressed(
        &common::patterned_guest_memory(&layout, 5),
        &layout,
        SnapshotId::random(),
        1,
        &zst,
    )
    .unwrap();
    let (s, _) = sink();
    let r = MmapEngine::new().restore(
        PageSource::open_compressed(&zst, &layout).unwrap(),
        &layout,
        s,
    );
    assert!(matches!(
        r,
        Err(EngineError::NeedsRawImage { engine: "mmap", .. })
    ));
    std::fs::remove_dir_all(dir).unwrap();
}
