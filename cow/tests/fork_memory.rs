//! Copy-on-write views on the host, without a VM: isolation both ways across generations, and
//! that a fork copies only what was written.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use zygote_cow::{dirty_runs, usage, CowMapping, Layer, PageRun, View, PAGE_SIZE};

const PAGES: u64 = 256;
const SIZE: u64 = PAGES * PAGE_SIZE;

fn base() -> Arc<View> {
    let file = memfd();
    for page in 0..PAGES {
        file.write_all_at(&page.to_le_bytes(), page * PAGE_SIZE)
            .unwrap();
    }
    View::base(
        Arc::new(Layer::from_file(
            file,
            vec![PageRun {
                start: 0,
                count: PAGES,
            }],
        )),
        SIZE,
    )
}

fn memfd() -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: a valid name and flags; the fd is owned by the returned File.
    let fd = unsafe { libc::memfd_create(c"test".as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: fresh fd from memfd_create.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(SIZE).unwrap();
    file
}

fn read(m: &CowMapping, page: u64) -> u64 {
    // SAFETY: page < PAGES, inside the mapping.
    unsafe {
        m.addr()
            .add((page * PAGE_SIZE) as usize)
            .cast::<u64>()
            .read_volatile()
    }
}

fn write(m: &CowMapping, page: u64, value: u64) {
    // SAFETY: page < PAGES, inside the mapping, which is writable.
    unsafe {
        m.addr()
            .add((page * PAGE_SIZE) as usize)
            .cast::<u64>()
            .write_volatile(value)
    }
}

/// Freezes what `m` wrote into a layer on its view and moves `m` onto it.
fn fork(m: &mut CowMapping) -> Arc<View> {
    let runs = dirty_runs(m.addr() as u64, m.size()).unwrap();
    // SAFETY: the mapping is readable and nothing writes it during the call.
    let layer = unsafe { Layer::freeze(m.addr(), m.size(), runs.clone()) }.unwrap();
    let view = m.view().with_layer(layer);
    let top = view.layers().len() - 1;
    m.adopt(view.clone(), top, &runs).unwrap();
    view
}

#[test]
fn parent_and_children_never_see_each_others_writes() {
    let mut parent = CowMapping::map(base()).unwrap();
    assert_eq!(read(&parent, 7), 7);
    write(&parent, 3, 300);
    write(&parent, 4, 400);
    assert_eq!(
        dirty_runs(parent.addr() as u64, SIZE).unwrap(),
        vec![PageRun { start: 3, count: 2 }]
    );
    let view = fork(&mut parent);
    let mut child = CowMapping::map(view).unwrap();
    assert_eq!(
        read(&child, 3),
        300,
        "the child sees the parent's writes before the fork"
    );
    // The parent writes after the fork, to pages the child has not touched: the child must not see it.
    write(&parent, 5, 500);
    write(&parent, 3, 301);
    assert_eq!(read(&child, 5), 5);
    assert_eq!(read(&child, 3), 300);
    // And the child's writes never reach the parent.
    write(&child, 9, 900);
    assert_eq!(read(&parent, 9), 9);
    // Grandchild from the child: sees the child's writes, not the parent's later ones.
    let grand_view = fork(&mut child);
    let grandchild = CowMapping::map(grand_view).unwrap();
    assert_eq!(read(&grandchild, 9), 900);
    assert_eq!(read(&grandchild, 3), 300);
    assert_eq!(read(&grandchild, 5), 5);
    write(&child, 9, 901);
    assert_eq!(read(&grandchild, 9), 900);
}

#[test]
fn five_generations_keep_every_value() {
    let mut vm = CowMapping::map(base()).unwrap();
    let mut kept = Vec::new();
    for generation in 1..=5u64 {
        write(&vm, generation, generation * 1000);
        let view = fork(&mut vm);
        kept.push(CowMapping::map(view).unwrap());
    }
    for (i, child) in kept.iter().enumerate() {
        let g = i as u64 + 1;
        for page in 1..=5u64 {
            let want = if page <= g { page * 1000 } else { page };
            assert_eq!(read(child, page), want, "child {g} page {page}");
        }
    }
}

#[test]
fn a_fresh_child_owns_nothing_and_pays_only_for_what_it_writes() {
    let mut parent = CowMapping::map(base()).unwrap();
    write(&parent, 1, 1);
    let view = fork(&mut parent);
    let child = CowMapping::map(view).unwrap();
    for page in 0..PAGES {
        read(&child, page);
    }
    let idle = usage(child.addr() as u64, SIZE).unwrap();
    assert_eq!(idle.private_bytes, 0);
    assert_eq!(idle.shared_bytes, SIZE);
    for page in 0..8 {
        write(&child, page, 0);
    }
    assert_eq!(
        usage(child.addr() as u64, SIZE).unwrap().private_bytes,
        8 * PAGE_SIZE
    );
    assert_eq!(
        dirty_runs(child.addr() as u64, SIZE).unwrap(),
        vec![PageRun { start: 0, count: 8 }]
    );
}

#[test]
fn the_write_tracker_reports_exactly_the_pages_written_since_the_last_take() {
    let file = memfd();
    // SAFETY: a fresh shared mapping of a memfd we own, checked below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    let base = addr.cast::<u8>();
    let poke = |page: u64| {
        // SAFETY: page < PAGES, inside the mapping.
        unsafe { base.add((page * PAGE_SIZE) as usize).write_volatile(1) }
    };
    // Some pages are populated before tracking starts, some never are.
    for page in 0..16 {
        poke(page);
    }
    let tracker = zygote_cow::WriteTracker::start(base as u64, SIZE).unwrap();
    assert!(tracker.take_written().unwrap().is_empty());
    poke(3);
    poke(4);
    poke(200);
    // A write from another thread counts the same.
    let at = base as usize;
    std::thread::spawn(move || {
        // SAFETY: page 100 lies inside the mapping, which outlives the thread.
        unsafe {
            (at as *mut u8)
                .add((100 * PAGE_SIZE) as usize)
                .write_volatile(9)
        }
    })
    .join()
    .unwrap();
    assert_eq!(
        tracker.take_written().unwrap(),
        vec![
            PageRun { start: 3, count: 2 },
            PageRun {
                start: 100,
                count: 1
            },
            PageRun {
                start: 200,
                count: 1
            }
        ]
    );
    assert!(
        tracker.take_written().unwrap().is_empty(),
        "a take starts a new period"
    );
    poke(4);
    assert_eq!(
        tracker.take_written().unwrap(),
        vec![PageRun { start: 4, count: 1 }]
    );
    drop(tracker);
    // SAFETY: the mapping made above, unmapped once.
    unsafe { libc::munmap(addr, SIZE as usize) };
}
