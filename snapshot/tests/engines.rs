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

mod lazy {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;
    use zygote_snapshot::memory::diff;
    use zygote_snapshot::{PageBitmap, UffdEngine, PAGE_SIZE};

    /// Reads the whole mapping on `threads` host threads (each a different stride coprime with the page count), each
    /// returning what it saw; a thread faulting on uffd memory is served exactly like a vCPU.
    pub fn read_on_threads(restored: &RestoredMemory, len: usize, threads: usize) -> Vec<Vec<u8>> {
        let base = restored.mapping.as_ptr() as usize;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut out = vec![0u8; len];
                    let pages = len / PAGE_SIZE;
                    for k in 0..pages {
                        let p = (k * [1, 5, 7, 11][t % 4] + t * 97) % pages;
                        out[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].copy_from_slice(
                            &common::read_mapping((base + p * PAGE_SIZE) as *const u8, PAGE_SIZE),
                        );
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn uffd_serves_raw_compressed_and_chain_sources_to_concurrent_readers() {
        let layout = common::layout();
        let dir = common::temp_dir("uffd");
        let path = raw_image(&dir, &layout, 4);
        let zst = dir.join("mem.zst");
        let mem = common::patterned_guest_memory(&layout, 4);
        let id = SnapshotId::random();
        compressed::write_compressed(&mem, &layout, id, 1, &zst).unwrap();
        // A diff on top of the compressed image that rewrites pages 10..20.
        common::write_pattern(&mem, &layout, 8, |p| (10..20).contains(&p));
        let mut dirty = PageBitmap::new(layout.pages());
        dirty.set_range(10, 10);
        let d = dir.join("d.diff");
        diff::write_diff(&mem, &layout, &dirty, SnapshotId::random(), id, &d).unwrap();
        let truth = dir.join("truth.raw");
        raw::write_raw(&mem, &layout, &truth).unwrap();
        let chain_expect = std::fs::read(&truth).unwrap();

        let sources = [
            (
                PageSource::open_raw(&path, &layout).unwrap(),
                common::expected(&layout, 4),
            ),
            (
                PageSource::open_compressed(&zst, &layout).unwrap(),
                common::expected(&layout, 4),
            ),
            (
                PageSource::open_compressed(&zst, &layout)
                    .unwrap()
                    .with_diffs(id, &[&d])
                    .unwrap(),
                chain_expect,
            ),
        ];
        for (i, (source, expect)) in sources.into_iter().enumerate() {
            let (s, seen) = sink();
            let restored = UffdEngine::new().restore(source, &layout, s).unwrap();
            for got in read_on_threads(&restored, layout.size() as usize, 2) {
                let bad: Vec<_> = (0..layout.pages() as usize)
                    .filter(|&p| {
                        got[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]
                            != expect[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]
                    })
                    .collect();
                assert!(
                    bad.is_empty(),
                    "source {i}: a reader saw other bytes than the snapshot in pages {bad:?}"
                );
            }
            let stats = restored.service.as_ref().unwrap().stats();
            assert!(
                stats.faults > 0 && stats.faults <= layout.pages(),
                "{stats:?}"
            );
            assert_eq!(
                stats.pages_copied + stats.zero_pages,
                layout.pages(),
                "{stats:?}"
            );
            assert!(seen.lock().unwrap().is_empty());
            drop(restored);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn uffd_neighbours_cut_the_faults() {
        let layout = common::layout();
        let dir = common::temp_dir("uffd-nb");
        let path = raw_image(&dir, &layout, 2);
        for (n, expect_faults) in [(0, layout.pages()), (7, layout.pages() / 8)] {
            let (s, _) = sink();
            let restored = UffdEngine::new()
                .neighbours(n)
                .restore(PageSource::open_raw(&path, &layout).unwrap(), &layout, s)
                .unwrap();
            // Forward, page by page, as a guest scanning memory would (a large memcpy may copy
            // backwards, where following neighbours do not help).
            let got: Vec<u8> = (0..layout.pages() as usize)
                .flat_map(|p| {
                    common::read_mapping(
                        restored.mapping.as_ptr().wrapping_add(p * PAGE_SIZE),
                        PAGE_SIZE,
                    )
                })
                .collect();
            assert!(got == common::expected(&layout, 2));
            assert_eq!(
                restored.service.as_ref().unwrap().stats().faults,
                expect_faults,
                "neighbours {n}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn uffd_image_truncated_under_a_running_restore_reports_failure_and_blocks_no_reader() {
        let layout = common::layout();
        let dir = common::temp_dir("uffd-trunc");
        let path = raw_image(&dir, &layout, 2);
        let (tx, rx) = mpsc::channel();
        let s: FailureSink = Arc::new(move |e| {
            let _ = tx.send(e);
        });
        let restored = UffdEngine::new()
            .restore(PageSource::open_raw(&path, &layout).unwrap(), &layout, s)
            .unwrap();
        // The first pages are served normally.
        let head = common::read_mapping(restored.mapping.as_ptr(), PAGE_SIZE);
        assert_eq!(head, common::page_content(0, 2));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let base = restored.mapping.as_ptr() as usize;
        let len = layout.size() as usize;
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ =
                common::read_mapping((base + PAGE_SIZE * 64) as *const u8, len - PAGE_SIZE * 64);
            let _ = done_tx.send(());
        });
        let err = rx
            .recv_timeout(Duration::from_secs(1))
            .expect("no failure reported within a second");
        assert!(matches!(err, EngineError::Source(_)), "{err:?}");
        done_rx
            .recv_timeout(Duration::from_secs(1))
            .expect("a reader stayed blocked on a fault");
        assert!(rx.try_recv().is_err(), "failure reported twice");
        drop(restored);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

mod prefetch {
    use super::*;
    use zygote_snapshot::engine::WorkingSet;
    use zygote_snapshot::{PrefetchEngine, PAGE_SIZE};

    /// Touches the "working set" pages forward, page by page, and checks their bytes.
    fn touch_working_set(restored: &RestoredMemory, layout: &MemoryLayout, seed: u8) {
        let expect = common::expected(layout, seed);
        for p in (0..100).chain(300..340).chain(700..705) {
            let got = common::read_mapping(
                restored.mapping.as_ptr().wrapping_add(p * PAGE_SIZE),
                PAGE_SIZE,
            );
            assert!(
                got[..] == expect[p * PAGE_SIZE..(p + 1) * PAGE_SIZE],
                "page {p}"
            );
        }
    }

    #[test]
    fn prefetch_records_the_working_set_and_cuts_the_faults_of_the_next_restore_tenfold() {
        let layout = common::layout();
        let dir = common::temp_dir("prefetch");
        let path = raw_image(&dir, &layout, 3);
        let ws = dir.join("working-set");
        let mut engine = PrefetchEngine::new(&ws);
        let (s, seen) = sink();
        let first = engine
            .restore(
                PageSource::open_raw(&path, &layout).unwrap(),
                &layout,
                s.clone(),
            )
            .unwrap();
        touch_working_set(&first, &layout, 3);
        let first_stats = first.service.as_ref().unwrap().stats();
        assert!(engine.save_working_set().unwrap());
        drop(first);
        let recorded = WorkingSet::load(&ws, &layout)
            .unwrap()
            .expect("working set written");
        assert!(
            recorded.pages().count() >= 145,
            "{}",
            recorded.pages().count()
        );

        let second = engine
            .restore(PageSource::open_raw(&path, &layout).unwrap(), &layout, s)
            .unwrap();
        touch_working_set(&second, &layout, 3);
        let second_stats = second.service.as_ref().unwrap().stats();
        assert!(first_stats.faults > 0);
        assert!(
            second_stats.faults * 10 <= first_stats.faults,
            "{first_stats:?} then {second_stats:?}"
        );
        assert_eq!(second_stats.prefetched_pages, recorded.pages().count());
        // Pages outside the working set are still served lazily, and correctly.
        let all = common::read_mapping(second.mapping.as_ptr(), layout.size() as usize);
        assert!(all == common::expected(&layout, 3));
        assert!(seen.lock().unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_working_set_is_refused() {
        let layout = common::layout();
        let dir = common::temp_dir("prefetch-bad");
        let path = raw_image(&dir, &layout, 3);
        let ws = dir.join("working-set");
        std::fs::write(&ws, b"ZYGOTESN garbage").unwrap();
        let (s, _) = sink();
        let r = PrefetchEngine::new(&ws).restore(
            PageSource::open_raw(&path, &layout).unwrap(),
            &layout,
            s,
        );
        assert!(
            matches!(r, Err(EngineError::WorkingSetFile { .. })),
            "{r:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
