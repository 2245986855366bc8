//! Host-side probe of the snapshot crate's costs against floors doing the same raw syscalls.
//!
//! `cargo run --release -p zygote-snapshot --example probe -- [--mib N] [--touched-pct P] [--dir D]`
//!
//! Prints one `name=value` line per figure: raw image write vs a plain sequential
//! write+fsync of the same bytes, zstd level 1 and 3 (time and ratio), restore latency per
//! engine, and the time per served fault (uffd engine, no neighbours) vs a bare
//! `UFFDIO_COPY` handler serving from memory.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zygote_snapshot::memory::{compressed, raw, FdMemory};
use zygote_snapshot::{
    EagerEngine, FailureSink, MemoryEngine, MemoryLayout, MmapEngine, PageSource, SnapshotId,
    UffdEngine, PAGE_SIZE,
};

struct Args {
    mib: u64,
    touched_pct: u64,
    dir: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        mib: 1024,
        touched_pct: 10,
        dir: std::env::temp_dir(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        match (pair[0].as_str(), pair.get(1)) {
            ("--mib", Some(n)) => a.mib = n.parse().expect("--mib N"),
            ("--touched-pct", Some(n)) => a.touched_pct = n.parse().expect("--touched-pct P"),
            ("--dir", Some(d)) => a.dir = d.into(),
            _ => panic!("usage: probe [--mib N] [--touched-pct P] [--dir D]"),
        }
    }
    a
}

fn memfd(len: u64) -> File {
    let name = std::ffi::CString::new("probe").unwrap();
    // SAFETY: plain syscall with a valid C string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fresh fd.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

/// Guest-like page content: half random bytes, half zero (compresses about 2:1).
fn page(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut p = vec![0u8; PAGE_SIZE];
    for b in p[..PAGE_SIZE / 2].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    p
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let a = args();
    let size = a.mib << 20;
    let layout = MemoryLayout::single(size).unwrap();
    let pages = layout.pages();
    let touched = pages * a.touched_pct / 100;
    // Touched pages spread over the memory in runs of 64 pages.
    let mem = memfd(size);
    let mut touched_list = Vec::new();
    let stride = (pages / touched.max(1)).max(1);
    let mut p = 0;
    while touched_list.len() < touched as usize && p < pages {
        for q in p..(p + 64).min(pages) {
            if touched_list.len() < touched as usize {
                touched_list.push(q);
            }
        }
        p += 64 * stride;
    }
    for &q in &touched_list {
        mem.write_all_at(&page(q), q * PAGE_SIZE as u64).unwrap();
    }
    let data_bytes = touched_list.len() as u64 * PAGE_SIZE as u64;
    println!(
        "guest_mib={} touched_pages={} data_mib={:.1}",
        a.mib,
        touched_list.len(),
        data_bytes as f64 / 1048576.0
    );

    // Floor: write the same number of bytes sequentially in 2 MiB pwrites, fsync. Rounds
    // alternate with the raw image write (the machine is shared); medians reported.
    let floor_path = a.dir.join("probe-floor.bin");
    let raw_path = a.dir.join("probe-mem.raw");
    let buf: Vec<u8> = (0..512).flat_map(page).collect();
    let (mut floors, mut raws, mut cfrs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        cfrs.push(sendfile_image(
            &mem,
            size,
            &a.dir.join("probe-sendfile.raw"),
        ));
        let t = Instant::now();
        {
            let f = File::create(&floor_path).unwrap();
            let mut off = 0;
            while off < data_bytes {
                let n = (data_bytes - off).min(buf.len() as u64) as usize;
                f.write_all_at(&buf[..n], off).unwrap();
                off += n as u64;
            }
            f.sync_all().unwrap();
        }
        floors.push(t.elapsed().as_secs_f64());
        std::fs::remove_file(&floor_path).unwrap();
        let _ = std::fs::remove_file(&raw_path);
        let t = Instant::now();
        raw::write_raw(&FdMemory::new(&mem, &layout).unwrap(), &layout, &raw_path).unwrap();
        raws.push(t.elapsed().as_secs_f64());
    }
    floors.sort_by(|a, b| a.partial_cmp(b).unwrap());
    raws.sort_by(|a, b| a.partial_cmp(b).unwrap());
    cfrs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (floor, raw_t) = (floors[1], raws[1]);
    println!(
        "sendfile_image_ms={:.1} ratio_to_floor={:.2}",
        cfrs[1] * 1e3,
        cfrs[1] / floor
    );
    println!(
        "floor_sequential_write_fsync_ms={:.1} raw_write_ms={:.1} ratio_to_floor={:.2}",
        floor * 1e3,
        raw_t * 1e3,
        raw_t / floor
    );

    for level in [1, 3] {
        let zst = a.dir.join(format!("probe-mem-{level}.zst"));
        let t = Instant::now();
        compressed::write_compressed(
            &FdMemory::new(&mem, &layout).unwrap(),
            &layout,
            SnapshotId::random(),
            level,
            &zst,
        )
        .unwrap();
        let zt = t.elapsed();
        let len = std::fs::metadata(&zst).unwrap().len();
        println!(
            "zstd_level={level} write_ms={:.1} file_mib={:.1} ratio={:.2} mib_per_s={:.0}",
            ms(zt),
            len as f64 / 1048576.0,
            data_bytes as f64 / len as f64,
            data_bytes as f64 / 1048576.0 / zt.as_secs_f64()
        );
        // One page read alone from the compressed image (decodes one chunk).
        let mut src = PageSource::open_compressed(&zst, &layout).unwrap();
        let mut one = vec![0u8; PAGE_SIZE];
        let t = Instant::now();
        src.read_pages(touched_list[touched_list.len() / 2], &mut one)
            .unwrap();
        println!(
            "zstd_level={level} one_page_read_us={:.1}",
            t.elapsed().as_secs_f64() * 1e6
        );
        std::fs::remove_file(&zst).unwrap();
    }

    let sink: FailureSink = Arc::new(|e| eprintln!("engine failure: {e}"));
    let engines: Vec<Box<dyn MemoryEngine>> = vec![
        Box::new(EagerEngine::new()),
        Box::new(MmapEngine::new()),
        Box::new(UffdEngine::new()),
    ];
    for mut engine in engines {
        let src = PageSource::open_raw(&raw_path, &layout).unwrap();
        let t = Instant::now();
        let restored = engine.restore(src, &layout, sink.clone()).unwrap();
        let restore_t = t.elapsed();
        let t = Instant::now();
        let mut sum = 0u64;
        for &q in &touched_list {
            // SAFETY: inside the mapping.
            sum = sum.wrapping_add(unsafe {
                restored
                    .mapping
                    .as_ptr()
                    .add(q as usize * PAGE_SIZE)
                    .read_volatile()
            } as u64);
        }
        let touch_t = t.elapsed();
        println!(
            "engine={} restore_us={:.0} touch_working_set_ms={:.1} checksum={sum}",
            engine.name(),
            restore_t.as_secs_f64() * 1e6,
            ms(touch_t)
        );
    }

    // Served fault vs the bare uffd floors, one page per fault, rounds interleaved (the
    // machine is shared), medians reported.
    let n = touched_list.len().min(16384);
    let (mut served, mut anon, mut shmem) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let src = PageSource::open_raw(&raw_path, &layout).unwrap();
        let restored = UffdEngine::new()
            .neighbours(0)
            .restore(src, &layout, sink.clone())
            .unwrap();
        let t = Instant::now();
        for &q in &touched_list[..n] {
            // SAFETY: inside the mapping.
            unsafe {
                restored
                    .mapping
                    .as_ptr()
                    .add(q as usize * PAGE_SIZE)
                    .read_volatile()
            };
        }
        served.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
        drop(restored);
        anon.push(uffd_floor(n, false));
        shmem.push(uffd_floor(n, true));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (served, anon, shmem) = (med(&mut served), med(&mut anon), med(&mut shmem));
    println!(
        "served_fault_us={served:.2} uffd_floor_anon_us={anon:.2} uffd_floor_shmem_us={shmem:.2} ratio_anon={:.2} ratio_shmem={:.2}",
        served / anon,
        served / shmem
    );
    std::fs::remove_file(&raw_path).unwrap();
}

/// A bare handler: anonymous (or memfd) memory registered MISSING, a thread serving each fault with
/// UFFDIO_COPY of a page from memory; returns µs per fault for `n` faults.
fn uffd_floor(n: usize, shmem: bool) -> f64 {
    let len = n * PAGE_SIZE;
    let fd = if shmem { Some(memfd(len as u64)) } else { None };
    let flags = if shmem {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
    };
    let raw_fd = fd.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd);
    // SAFETY: fresh mapping.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            raw_fd,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    let uffd = userfaultfd::UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(false)
        .user_mode_only(false)
        .create()
        .unwrap();
    uffd.register(addr, len).unwrap();
    let base = addr as usize;
    let server = std::thread::spawn(move || {
        let src = page(1);
        for _ in 0..n {
            if let Some(userfaultfd::Event::Pagefault { addr, .. }) = uffd.read_event().unwrap() {
                let at = (addr as usize) & !(PAGE_SIZE - 1);
                // SAFETY: destination inside the registered range, source a page buffer.
                unsafe {
                    uffd.copy(
                        src.as_ptr().cast(),
                        at as *mut libc::c_void,
                        PAGE_SIZE,
                        true,
                    )
                    .unwrap()
                };
            }
        }
    });
    let t = Instant::now();
    for i in 0..n {
        // SAFETY: inside the mapping.
        unsafe { ((base + i * PAGE_SIZE) as *const u8).read_volatile() };
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    server.join().unwrap();
    // SAFETY: unmapping our own mapping.
    unsafe { libc::munmap(addr, len) };
    per
}

/// The alternative raw writer: an in-kernel copy (`sendfile`) of every data extent of the memfd (zero pages
/// inside an extent are copied too), fsync; returns seconds.
fn sendfile_image(mem: &File, size: u64, path: &std::path::Path) -> f64 {
    use std::os::fd::AsRawFd;
    let t = Instant::now();
    let out = File::create(path).unwrap();
    out.set_len(size).unwrap();
    let mut at = 0i64;
    loop {
        // SAFETY: lseek on valid fds.
        let data = unsafe { libc::lseek(mem.as_raw_fd(), at, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(mem.as_raw_fd(), data, libc::SEEK_HOLE) };
        let mut src = data;
        // SAFETY: lseek on a valid fd.
        unsafe { libc::lseek(out.as_raw_fd(), data, libc::SEEK_SET) };
        while src < hole {
            // SAFETY: the offset is a local; fds are valid. copy_file_range from a memfd to
            // ext4 gives EXDEV (no cross-filesystem copy), so sendfile is the in-kernel copy.
            let n = unsafe {
                libc::sendfile(
                    out.as_raw_fd(),
                    mem.as_raw_fd(),
                    &mut src,
                    (hole - src) as usize,
                )
            };
            assert!(n > 0, "sendfile: {}", std::io::Error::last_os_error());
        }
        at = hole;
    }
    out.sync_all().unwrap();
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(path).unwrap();
    secs
}
