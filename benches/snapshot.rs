//! Snapshot and restore through the VMM, each beside a floor of the same raw work measured in
//! the same run (the machine is shared and nested: only ratios in one run mean much).
//!
//! `cargo bench -p zygote-benches --bench snapshot` (sizes from `ZYGOTE_SNAPSHOT_BENCH_MIB`,
//! comma-separated MiB, default `256,1024`). Per guest size, Zygote's guest (agent workload,
//! vsock) writes a working set of 10 % of its memory, then is paused:
//!
//! - `snapshot_<mib>/raw`, `/zstd1`: `RunningVm::snapshot` of the paused guest into a fresh
//!   directory; floor `floor_write_fsync`: the same number of bytes the raw image holds,
//!   written sequentially to a new file in 2 MiB `pwrite`s and fsynced; `floor_read`: those
//!   bytes read back sequentially (page cache warm, as it is for the restores).
//! - `restore_<mib>/<engine>`: `Vm::restore_snapshot` until `start()` returned; floor
//!   `floor_vm_create`: a bare KVM VM with irqchip, PIT, memory slot and one vCPU with its
//!   state (`zygote_benches::create_vm_with_irqchip`, `/dev/kvm` already open).
//! - `ready_<mib>/<engine>`: from calling `Vm::restore_snapshot` until the restored agent
//!   answered its first ping (a new vsock connection; restored connections are reset).
//! - `touch_<mib>/<engine>`: after a restore and a first ping, the guest checksumming its
//!   working set (every page faulted in through the engine); floor `warm`: the same checksum
//!   again on a VM whose working set is already in (the guest's own reading time).
//! - `fault_<mib>/uffd_served`: one page served by the uffd engine (no neighbours) to a host
//!   thread reading the restored VM's memory, one page per fault; floors
//!   `floor_uffd_copy_shmem` / `_anon`: a bare handler thread serving `UFFDIO_COPY` of one
//!   page to a thread faulting on registered memfd / anonymous memory.
//!
//! Diff snapshots are not benched: the VMM does not write them yet. Stopped VMs are dropped
//! outside the timings and followed by a pause, as dropping one tears its KVM VM down on a
//! background thread (about 20 ms) that would otherwise land in the next sample.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use zygote::agent::AgentClient;
use zygote::snapshot_format::{EagerEngine, MemoryEngine, MmapEngine, PrefetchEngine, UffdEngine};
use zygote::state::DeviceResources;
use zygote::vm_memory::{Bytes, GuestAddress};
use zygote::{
    ConsoleBuffer, KvmContext, MemoryFormat, RestoreConfig, RunningVm, SerialOutput, Snapshot, Vm,
    VsockConfig,
};
use zygote_guest::{Workload, READY_LINE};

const PAGE: usize = 4096;
/// Time a dropped VM's background teardown gets before the next sample starts.
const TEARDOWN: Duration = Duration::from_millis(40);
const ENGINES: [&str; 4] = ["eager", "mmap", "uffd", "prefetch"];

/// A paused guest with its working set, and its raw snapshot.
struct Guest {
    mib: u64,
    vm: RunningVm,
    context: Arc<KvmContext>,
    dir: PathBuf,
    snapshot: Snapshot,
    working_set: PathBuf,
    ws_addr: u64,
    ws_len: u64,
    ws_sum: u64,
    image_bytes: u64,
}

static SOCKETS: AtomicU64 = AtomicU64::new(0);

fn prepare(mib: u64) -> Guest {
    let dir = std::env::temp_dir().join(format!("zygote-bench-snapshot-{mib}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    let context = KvmContext::new().expect("KVM context");
    let console = ConsoleBuffer::new();
    let vm = zygote_examples::guest(&Workload::Agent, mib)
        .context(context.clone())
        .serial_output(SerialOutput::Buffer(console.clone()))
        .vsock(VsockConfig {
            guest_cid: 3,
            uds_path: dir.join("parent.vsock"),
        })
        .build()
        .expect("build")
        .start()
        .expect("start");
    assert!(
        console.wait_for(READY_LINE, Duration::from_secs(60)),
        "ready"
    );
    let ws_mib = (mib / 10).max(1) as u32;
    let (ws_addr, ws_sum) = vm
        .agent()
        .expect("agent")
        .touch(ws_mib, 0x5eed)
        .expect("touch");
    // Let the guest finish closing that connection first: a restored guest still holding a
    // closing connection refuses the first host connection (whose host port the restored
    // device hands out again), sometimes only after the device's 5 s response timeout.
    std::thread::sleep(Duration::from_secs(3));
    vm.pause().expect("pause");
    let raw = dir.join("raw");
    let info = vm.snapshot(&raw, MemoryFormat::Raw).expect("snapshot");
    let mut guest = Guest {
        mib,
        vm,
        context,
        snapshot: Snapshot::load(&raw).expect("load"),
        working_set: dir.join("working-set"),
        dir,
        ws_addr,
        ws_len: u64::from(ws_mib) << 20,
        ws_sum,
        image_bytes: info.memory_bytes_written,
    };
    record_working_set(&mut guest);
    guest
}

/// One recording run of the prefetch engine, so every measured prefetch restore loads a set.
fn record_working_set(g: &mut Guest) {
    let mut engine = PrefetchEngine::new(&g.working_set);
    let vm = restore(g, &mut engine);
    checksum_working_set(g, &vm);
    engine.save_working_set().expect("save working set");
    let recorded = vm.engine_stats().unwrap_or_default();
    retire(vm);
    let mut engine = PrefetchEngine::new(&g.working_set);
    let vm = restore(g, &mut engine);
    checksum_working_set(g, &vm);
    let again = vm.engine_stats().unwrap_or_default();
    retire(vm);
    println!(
        "prefetch_{}: recording run faults={} pages={}; next run faults={} pages_loaded_in_bulk={}",
        g.mib,
        recorded.faults,
        recorded.pages_copied + recorded.zero_pages,
        again.faults,
        again.prefetched_pages
    );
}

fn engine(name: &str, g: &Guest) -> Box<dyn MemoryEngine> {
    match name {
        "eager" => Box::new(EagerEngine::new()),
        "mmap" => Box::new(MmapEngine::new()),
        "uffd" => Box::new(UffdEngine::new()),
        _ => Box::new(PrefetchEngine::new(&g.working_set)),
    }
}

fn restore_config(g: &Guest) -> RestoreConfig {
    let n = SOCKETS.fetch_add(1, Ordering::Relaxed);
    let uds = g.dir.join(format!("restored-{n}.vsock"));
    let _ = std::fs::remove_file(&uds);
    RestoreConfig {
        context: Some(g.context.clone()),
        devices: DeviceResources {
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: uds,
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn restore(g: &Guest, engine: &mut dyn MemoryEngine) -> RunningVm {
    Vm::restore_snapshot(&g.snapshot, engine, restore_config(g))
        .expect("restore")
        .start()
        .expect("start")
}

fn checksum_working_set(g: &Guest, vm: &RunningVm) -> Duration {
    let mut agent = first_ping(vm);
    let started = Instant::now();
    let sum = agent.checksum(g.ws_addr, g.ws_len).expect("checksum");
    let elapsed = started.elapsed();
    assert_eq!(sum, g.ws_sum, "the restored working set differs");
    elapsed
}

/// A connection to a restored agent that answered a ping. A restored guest sometimes drops
/// its first connection (it takes the device's TRANSPORT_RESET after the connection request):
/// connect again, as a user would; the retries count in the timings.
fn first_ping(vm: &RunningVm) -> AgentClient {
    let mut error = None;
    for _ in 0..5 {
        match vm
            .agent()
            .and_then(|mut agent| agent.ping().map(|()| agent))
        {
            Ok(agent) => return agent,
            Err(e) => error = Some(e),
        }
    }
    panic!("the restored agent does not answer: {error:?}");
}

/// Drops a VM off the timed path and lets its teardown finish.
fn retire<T>(vm: T) {
    drop(vm);
    std::thread::sleep(TEARDOWN);
}

/// Ten samples of equal iteration counts. `measurement` is what criterion aims at for the
/// timed part alone; keep it short where each iteration also pays untimed setup (a restore, a
/// teardown pause), or the run takes minutes per benchmark.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>, measurement: Duration) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(measurement);
}

fn snapshots(c: &mut Criterion, g: &Guest) {
    let mut group = c.benchmark_group(format!("snapshot_{}", g.mib));
    configure(&mut group, Duration::from_millis(1000));
    for (name, format) in [
        ("raw", MemoryFormat::Raw),
        ("zstd1", MemoryFormat::Compressed { level: 1 }),
    ] {
        let dir = g.dir.join(format!("bench-{name}"));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let _ = std::fs::remove_dir_all(&dir);
                        let started = Instant::now();
                        g.vm.snapshot(&dir, format).expect("snapshot");
                        started.elapsed()
                    })
                    .sum()
            })
        });
    }
    // A diff after 1 % of memory was dirtied: resume, have the guest write 1 % (untimed),
    // pause, time the diff snapshot (its parent is the previous snapshot of this loop).
    let dirty_mib = (g.mib / 100).max(1) as u32;
    let diff_dir = g.dir.join("bench-diff");
    group.bench_function("diff_1pct", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|i| {
                    g.vm.resume().expect("resume");
                    let mut agent = g.vm.agent().expect("agent");
                    agent.touch(dirty_mib, 0x1000 + i).expect("touch");
                    drop(agent);
                    g.vm.pause().expect("pause");
                    let _ = std::fs::remove_dir_all(&diff_dir);
                    let started = Instant::now();
                    let info = g.vm.snapshot(&diff_dir, MemoryFormat::Diff).expect("diff");
                    let took = started.elapsed();
                    assert!(
                        info.data_pages < g.mib * 256 / 10,
                        "a diff holds what changed"
                    );
                    took
                })
                .sum()
        })
    });
    let floor = g.dir.join("floor.bin");
    let chunk: Vec<u8> = (0..2 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    group.bench_function("floor_write_fsync", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let _ = std::fs::remove_file(&floor);
                    let started = Instant::now();
                    write_file(&floor, g.image_bytes, &chunk);
                    started.elapsed()
                })
                .sum()
        })
    });
    let diff_floor = g.dir.join("floor-diff.bin");
    group.bench_function("floor_write_fsync_1pct", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let _ = std::fs::remove_file(&diff_floor);
                    let started = Instant::now();
                    write_file(&diff_floor, u64::from(dirty_mib) << 20, &chunk);
                    started.elapsed()
                })
                .sum()
        })
    });
    group.bench_function("floor_read", |b| {
        let mut buf = vec![0u8; chunk.len()];
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let started = Instant::now();
                    read_file(&floor, g.image_bytes, &mut buf);
                    started.elapsed()
                })
                .sum()
        })
    });
    group.finish();
}

fn write_file(path: &Path, len: u64, chunk: &[u8]) {
    let file = File::create(path).expect("floor file");
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], offset).expect("write");
        offset += n as u64;
    }
    file.sync_all().expect("fsync");
}

fn read_file(path: &Path, len: u64, buf: &mut [u8]) {
    let file = File::open(path).expect("floor file");
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset).expect("read");
        offset += n as u64;
    }
}

fn restores(c: &mut Criterion, g: &Guest) {
    let mut group = c.benchmark_group(format!("restore_{}", g.mib));
    configure(&mut group, Duration::from_millis(100));
    for name in ENGINES {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut engine = engine(name, g);
                    let started = Instant::now();
                    let vm = restore(g, engine.as_mut());
                    total += started.elapsed();
                    retire(vm);
                }
                total
            })
        });
    }
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("cpuid");
    group.bench_function("floor_vm_create", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let vm =
                    zygote_benches::create_vm_with_irqchip(&kvm, &cpuid, (g.mib << 20) as usize)
                        .expect("floor VM");
                total += started.elapsed();
                retire(vm);
            }
            total
        })
    });
    group.finish();
}

fn readiness(c: &mut Criterion, g: &Guest) {
    let mut group = c.benchmark_group(format!("ready_{}", g.mib));
    configure(&mut group, Duration::from_millis(100));
    for name in ENGINES {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut engine = engine(name, g);
                    let started = Instant::now();
                    let vm = restore(g, engine.as_mut());
                    first_ping(&vm);
                    total += started.elapsed();
                    retire(vm);
                }
                total
            })
        });
    }
    group.finish();
}

fn touches(c: &mut Criterion, g: &Guest) {
    let mut group = c.benchmark_group(format!("touch_{}", g.mib));
    configure(&mut group, Duration::from_millis(300));
    for name in ENGINES {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let vm = restore(g, engine(name, g).as_mut());
                    total += checksum_working_set(g, &vm);
                    retire(vm);
                }
                total
            })
        });
    }
    let vm = restore(g, &mut EagerEngine::new());
    checksum_working_set(g, &vm);
    group.bench_function("warm", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| checksum_working_set(g, &vm)).sum())
    });
    group.finish();
    retire(vm);
}

fn faults(c: &mut Criterion, g: &Guest) {
    let mut group = c.benchmark_group(format!("fault_{}", g.mib));
    configure(&mut group, Duration::from_millis(300));
    let pages = (g.ws_len as usize / PAGE) as u64;
    group.bench_function("uffd_served", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(pages);
                let vm = Vm::restore_snapshot(
                    &g.snapshot,
                    &mut UffdEngine::new().neighbours(0),
                    restore_config(g),
                )
                .expect("restore");
                let memory = vm.memory();
                let started = Instant::now();
                for i in 0..n {
                    let addr = GuestAddress(g.ws_addr + i * PAGE as u64);
                    let _: u64 = memory.read_obj(addr).expect("read");
                }
                total += started.elapsed();
                left -= n;
                retire(vm);
            }
            total
        })
    });
    for shmem in [true, false] {
        let name = if shmem {
            "floor_uffd_copy_shmem"
        } else {
            "floor_uffd_copy_anon"
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(pages);
                    total += uffd_floor(n as usize, shmem);
                    left -= n;
                }
                total
            })
        });
    }
    group.finish();
}

/// `n` pages of memfd (or anonymous) memory registered with userfaultfd (MISSING), a thread
/// serving each fault with `UFFDIO_COPY` of one page, and this thread reading one byte of
/// each page: the time of the `n` reads.
fn uffd_floor(n: usize, shmem: bool) -> Duration {
    let len = n * PAGE;
    let memory = shmem.then(|| zygote_benches::SharedMemory::new(len).expect("memfd"));
    let addr = match &memory {
        Some(m) => m.as_ptr(),
        None => anonymous(len),
    };
    let uffd = userfaultfd::UffdBuilder::new()
        .close_on_exec(true)
        .user_mode_only(false)
        .create()
        .expect("userfaultfd");
    uffd.register(addr.cast(), len).expect("register");
    let server = std::thread::spawn(move || {
        let page = vec![0x5au8; PAGE];
        for _ in 0..n {
            if let Ok(Some(userfaultfd::Event::Pagefault { addr, .. })) = uffd.read_event() {
                let at = (addr as usize) & !(PAGE - 1);
                // SAFETY: the destination is a page of the registered range, the source a
                // page-sized buffer; COPY only fills a missing page.
                unsafe { uffd.copy(page.as_ptr().cast(), at as *mut libc::c_void, PAGE, true) }
                    .expect("UFFDIO_COPY");
            }
        }
    });
    let started = Instant::now();
    for i in 0..n {
        // SAFETY: inside the `len`-byte mapping at `addr`.
        unsafe { addr.add(i * PAGE).read_volatile() };
    }
    let elapsed = started.elapsed();
    server.join().expect("server thread");
    if memory.is_none() {
        // SAFETY: the anonymous mapping made above, unmapped once.
        unsafe { libc::munmap(addr.cast(), len) };
    }
    elapsed
}

fn anonymous(len: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping; the result is checked.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED, "mmap");
    addr.cast()
}

fn sizes() -> Vec<u64> {
    std::env::var("ZYGOTE_SNAPSHOT_BENCH_MIB")
        .unwrap_or_else(|_| "256,1024".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("ZYGOTE_SNAPSHOT_BENCH_MIB: MiB, comma-separated")
        })
        .collect()
}

fn snapshot_benches(c: &mut Criterion) {
    for mib in sizes() {
        let g = prepare(mib);
        println!(
            "guest_{mib}: working_set_mib={} raw_image_bytes={}",
            g.ws_len >> 20,
            g.image_bytes
        );
        snapshots(c, &g);
        restores(c, &g);
        readiness(c, &g);
        touches(c, &g);
        faults(c, &g);
        let dir = g.dir.clone();
        retire(g);
        let _ = std::fs::remove_dir_all(dir);
    }
}

criterion_group!(benches, snapshot_benches);
criterion_main!(benches);
