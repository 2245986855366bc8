//! Live fork (issue 7), beside its floor in the same run.
//!
//! ```sh
//! cargo bench -p zygote-benches --bench fork
//! ```
//!
//! Groups:
//! - `fork/<pool>/<MiB>`: one fork of a running agent guest that has written all the RAM its
//!   `touch` reaches first (the whole low RAM entry: all of it at 64 MiB and 1 GiB, the 3 GiB
//!   below the MMIO gap at 4 GiB), timed from the `fork()` call to the child's vCPUs
//!   running; `no_pool` makes the child's KVM VM on the path, `pool` takes it from a warm
//!   [`VmPool`] that is full before each fork.
//! - `floor/<MiB>`: `zygote_benches::create_vm_with_irqchip`, the raw kvm-ioctls sequence for
//!   one VM (memfd, create VM, memory slot, irqchip, PIT, one vCPU with its state set).
//! - `fork_generation/<n>`: forking the VM at the end of a chain of `n` forks (each VM in the
//!   chain wrote some memory before forking the next, so the chain holds `n` layers).
//! - `fanout_ping/100`: forking 100 children of one parent and every one answering a ping
//!   over its own vsock.
//!
//! Each sample keeps its VMs (floor VMs, children) alive to its end, then drops them all and
//! waits for their teardown (closing a VM with an irqchip takes ~20 ms here, and the kernel
//! work it leaves behind slows the next VM's creation): no timed call shares the CPU with a
//! VM closing. Between forks, untimed, the new child answers a ping, so it has handled its
//! vsock reset and gone idle before the next fork.
//! Besides criterion's figures, each fork group prints the parent's pause (p50, p99) and the
//! fan-out prints the private memory of an idle child: growth of the process's
//! `Private_Dirty` (smaps) over 100 idle children divided by 100, and the p50 of what
//! `RunningVm::memory_usage` calls each child's own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use zygote::agent::AgentClient;
use zygote::{ForkConfig, KvmContext, RunningVm, VmPool, VsockConfig};
use zygote_benches::measure::{percentile, private_dirty_kib, raise_fd_limit};
use zygote_guest::{Workload, READY_LINE};

const SIZES_MIB: [u64; 3] = [64, 1024, 4096];
/// The guest's RAM below the MMIO gap ends here (`vmm/src/arch/layout.rs`).
const MMIO_GAP_START_MIB: u64 = 3072;
const GENERATION_MIB: u64 = 1024;
const FANOUT_MIB: u64 = 1024;
const FANOUT_CHILDREN: usize = 100;
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Boots the agent guest with `memory_mib` and has it write all the RAM `touch` reaches.
fn boot_parent(context: &Arc<KvmContext>, memory_mib: u64) -> RunningVm {
    let uds = uds_path(&format!("{memory_mib}"));
    let console = zygote::ConsoleBuffer::new();
    let vm = zygote_examples::guest(&Workload::Agent, memory_mib)
        .context(context.clone())
        .serial_output(zygote::SerialOutput::Buffer(console.clone()))
        .vsock(VsockConfig {
            guest_cid: 3,
            uds_path: uds,
        })
        .build()
        .expect("build the parent")
        .start()
        .expect("start the parent");
    assert!(
        console.wait_for(READY_LINE, GUEST_TIMEOUT),
        "the parent did not start:\n{}",
        console.text()
    );
    let mut agent = agent_of(&vm);
    let touched = touch_all(&mut agent, memory_mib);
    agent.counter_add(1).expect("counter");
    println!("fork bench: {memory_mib} MiB parent wrote {touched} MiB");
    vm
}

/// A vsock socket path unique to this process and `name`.
fn uds_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "zygote-bench-fork-{}-{name}.vsock",
        std::process::id()
    ))
}

fn agent_of(vm: &RunningVm) -> AgentClient {
    let mut agent = vm.agent().expect("connect to the agent");
    agent
        .set_request_timeout(GUEST_TIMEOUT)
        .expect("request timeout");
    agent
}

/// Has the guest write as many MiB as `touch` accepts: from the end of its kernel to the
/// agent's arena at the top of the RAM entry holding the kernel (below the MMIO gap). Tries
/// from that entry's size down, 2 MiB at a time; returns the MiB written.
fn touch_all(agent: &mut AgentClient, memory_mib: u64) -> u32 {
    let low_mib = u32::try_from(memory_mib.min(MMIO_GAP_START_MIB)).expect("MiB");
    let mut mib = low_mib;
    while mib > 2 {
        if agent.touch(mib, 0x5eed).is_ok() {
            return mib;
        }
        mib -= 2;
    }
    panic!("the guest refused every touch up to {low_mib} MiB");
}

/// Forks `parent` (into `pool` if given); the fork's latency, the parent's pause, the child.
fn timed_fork(
    parent: &mut RunningVm,
    pool: Option<&Arc<VmPool>>,
) -> (Duration, Duration, RunningVm) {
    let config = ForkConfig {
        pool: pool.cloned(),
        ..Default::default()
    };
    let started = Instant::now();
    let fork = parent.fork(config).expect("fork");
    (started.elapsed(), fork.parent_pause, fork.child)
}

/// Waits until no background teardown (VMs closing, old mappings unmapping) is running, so
/// it does not share the CPU with the next timed fork.
fn settle() {
    let deadline = Instant::now() + Duration::from_secs(30);
    while background_teardowns() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Threads of this process named `zygote-teardown` or `zygote-unmap`.
fn background_teardowns() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("zygote-teardown") || comm.starts_with("zygote-unmap"))
        .count()
}

/// Drops `vms` (untimed) and waits for their teardown.
fn retire(vms: Vec<RunningVm>) {
    drop(vms);
    settle();
}

/// One timed fork per iteration, each child retired before the next fork.
fn bench_forks(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    parameter: u64,
    parent: &mut RunningVm,
    pool: Option<&Arc<VmPool>>,
) {
    let mut pauses = Vec::new();
    group.bench_function(BenchmarkId::new(name, parameter), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut children = Vec::new();
            for _ in 0..iters {
                if let Some(pool) = pool {
                    assert!(pool.wait_full(GUEST_TIMEOUT), "the pool did not fill");
                }
                let (latency, pause, child) = timed_fork(parent, pool);
                total += latency;
                pauses.push(pause.as_micros() as u64);
                // Untimed: the child has handled its vsock reset and gone idle before the
                // next fork, which then does not share the CPU with it.
                agent_of(&child).ping().expect("ping");
                children.push(child);
            }
            retire(children);
            total
        })
    });
    println!(
        "{name}/{parameter}: parent_pause_p50_us={} parent_pause_p99_us={} forks={}",
        percentile(&mut pauses, 50),
        percentile(&mut pauses, 99),
        pauses.len()
    );
}

fn fork_latency(c: &mut Criterion) {
    let context = KvmContext::new().expect("KVM context");
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported CPUID");
    let mut group = c.benchmark_group("fork");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(20))
        .measurement_time(Duration::from_millis(300));
    for memory_mib in SIZES_MIB {
        group.bench_function(BenchmarkId::new("floor", memory_mib), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut vms = Vec::new();
                for _ in 0..iters {
                    let size = (memory_mib << 20) as usize;
                    let started = Instant::now();
                    let vm = zygote_benches::create_vm_with_irqchip(&kvm, &cpuid, size)
                        .expect("floor VM");
                    total += started.elapsed();
                    vms.push(vm);
                }
                drop(vms);
                total
            })
        });
        let mut parent = boot_parent(&context, memory_mib);
        // The first fork moves the parent onto copy-on-write memory (and unmaps its old
        // mapping in the background): the parent's one-time cost, not any child's.
        let (first, _, child) = timed_fork(&mut parent, None);
        println!("fork bench: {memory_mib} MiB first fork {first:?}");
        retire(vec![child]);
        bench_forks(&mut group, "no_pool", memory_mib, &mut parent, None);
        let pool = Arc::new(VmPool::new(context.clone(), memory_mib << 20, 1, 2).expect("VM pool"));
        bench_forks(&mut group, "pool", memory_mib, &mut parent, Some(&pool));
        drop(pool);
        retire(vec![parent]);
    }
    group.finish();
}

fn fork_generations(c: &mut Criterion) {
    let context = KvmContext::new().expect("KVM context");
    let mut group = c.benchmark_group("fork_generation");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(20))
        .measurement_time(Duration::from_millis(300));
    let mut chain = vec![boot_parent(&context, GENERATION_MIB)];
    for generation in 1..=20usize {
        let last = chain.last_mut().expect("the chain");
        // Each VM writes some of its memory before it forks: a new layer per generation.
        agent_of(last).touch(16, generation as u64).expect("touch");
        let (_, _, child) = timed_fork(last, None);
        chain.push(child);
    }
    settle();
    for generation in [1usize, 20] {
        bench_forks(
            &mut group,
            "generation",
            generation as u64,
            &mut chain[generation],
            None,
        );
    }
    group.finish();
    retire(chain);
}

fn fanout_ping(c: &mut Criterion) {
    let context = KvmContext::new().expect("KVM context");
    let mut parent = boot_parent(&context, FANOUT_MIB);
    retire(vec![timed_fork(&mut parent, None).2]);
    let mut group = c.benchmark_group("fanout_ping");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(20))
        .measurement_time(Duration::from_millis(300));
    let mut per_child_kib = Vec::new();
    let mut own_kib = Vec::new();
    group.bench_function(BenchmarkId::from_parameter(FANOUT_CHILDREN), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let before = private_dirty_kib().expect("Private_Dirty in smaps_rollup");
                let started = Instant::now();
                let children: Vec<RunningVm> = (0..FANOUT_CHILDREN)
                    .map(|_| timed_fork(&mut parent, None).2)
                    .collect();
                for child in &children {
                    agent_of(child).ping().expect("ping");
                }
                total += started.elapsed();
                let grown = private_dirty_kib()
                    .expect("Private_Dirty in smaps_rollup")
                    .saturating_sub(before);
                per_child_kib.push(grown / FANOUT_CHILDREN as u64);
                own_kib.extend(
                    children.iter().map(|child| {
                        child.memory_usage().expect("memory usage").private_bytes >> 10
                    }),
                );
                retire(children);
            }
            total
        })
    });
    group.finish();
    println!(
        "fanout_ping: private_per_idle_child_kib p50={} (Private_Dirty growth / {FANOUT_CHILDREN}, {} runs), memory_usage private p50={} KiB p99={} KiB",
        percentile(&mut per_child_kib, 50),
        per_child_kib.len(),
        percentile(&mut own_kib, 50),
        percentile(&mut own_kib, 99),
    );
    retire(vec![parent]);
}

fn all(c: &mut Criterion) {
    raise_fd_limit();
    fork_latency(c);
    fork_generations(c);
    fanout_ping(c);
}

criterion_group!(benches, all);
criterion_main!(benches);
