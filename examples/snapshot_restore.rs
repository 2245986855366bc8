//! Snapshots a running guest once and restores it through each memory engine, printing what
//! each restore costs.
//!
//! ```sh
//! cargo run --release --example snapshot_restore -- --memory-mib 1024
//! ```
//!
//! Boots Zygote's guest kernel (agent workload, vsock), has the agent write a working set of
//! 10 % of memory and bump its counter, pauses, writes a raw snapshot, and stops the guest.
//! Then for each engine (eager, mmap, uffd, prefetch) it restores the snapshot, starts it,
//! pings the agent, and checks the counter and the working set's checksum. The prefetch
//! engine is restored twice: the first run records the working set, the second (measured)
//! loads it in bulk first. Ends with exactly one line per engine:
//!
//! `engine=<name> snapshot_ms=<n> restore_us=<n> first_resume_to_ready_us=<n> touched_mib=<n>`
//!
//! - `snapshot_ms`: `RunningVm::snapshot` of the paused guest (raw image and state file, each
//!   written atomically with fsync); the same snapshot serves every engine;
//! - `restore_us`: from calling `Vm::restore_snapshot` until `start()` returned;
//! - `first_resume_to_ready_us`: from calling `start()` until the agent answered its first
//!   ping (a new vsock connection: restored connections are reset; connections the restored
//!   guest dropped before the ping was answered, `first_ping_retries`, count in);
//! - `touched_mib`: memory the engine populated by the time the working set was checked.
//!   For the engines with a service (eager, uffd, prefetch) it comes from the engine's
//!   counters (`RunningVm::engine_stats`): pages copied, zero-filled or loaded in bulk; eager
//!   loads every page with data before the guest runs. The mmap engine has no service: its
//!   figure is the resident size (`Rss` in `/proc/self/smaps`) of the guest RAM mapping,
//!   i.e. pages of the image the guest (or KVM on its behalf) mapped in.
//!
//! Lines before those give the snapshot's size, the faults each engine served, and how much
//! of `restore_us` the engine's own `restore` took (`engine_restore_us`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zygote::agent::AgentClient;
use zygote::snapshot_format::{
    EagerEngine, EngineError, EngineStats, FailureSink, MemoryEngine, MemoryLayout, MmapEngine,
    PageSource, PrefetchEngine, RestoredMemory, UffdEngine,
};
use zygote::state::DeviceResources;
use zygote::{
    ConsoleBuffer, KvmContext, MemoryFormat, RestoreConfig, RunningVm, SerialOutput, Snapshot, Vm,
    VsockConfig,
};
use zygote_guest::{Workload, READY_LINE};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const PAGE_SIZE: u64 = 4096;
const COUNTER: u64 = 42;
const PATTERN: u64 = 0x5eed_f00d;

/// What the guest held when it was snapshotted.
struct Expected {
    addr: u64,
    len: u64,
    sum: u64,
}

/// One engine's figures.
struct Figures {
    restore_us: u128,
    engine_us: u128,
    retries: u32,
    ready_us: u128,
    touched_mib: u64,
    faults: u64,
}

fn main() -> Result<()> {
    let memory_mib = args()?;
    let dir = std::env::temp_dir().join(format!("zygote-snapshot-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run(memory_mib, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(memory_mib: u64, dir: &Path) -> Result<()> {
    let context = KvmContext::new()?;
    let (vm, want) = prepared(memory_mib, dir, &context)?;
    let snap_dir = dir.join("snapshot");
    let started = Instant::now();
    let info = vm.snapshot(&snap_dir, MemoryFormat::Raw)?;
    let snapshot_ms = started.elapsed().as_millis();
    println!(
        "guest_mib={memory_mib} working_set_mib={} snapshot_data_mib={} snapshot_ms={snapshot_ms}",
        want.len >> 20,
        (info.data_pages * PAGE_SIZE) >> 20
    );
    let snapshot = Snapshot::load(&snap_dir)?;
    let working_set = dir.join("working-set");
    let mut lines = Vec::new();
    // The paused parent and the stopped VMs are dropped only at the end: dropping one tears
    // its KVM VM down on a background thread (about 20 ms of kernel work, plus unmapping),
    // which would land inside the next measurement on this two-core machine.
    let mut stopped = vec![vm];
    for name in ["eager", "mmap", "uffd", "prefetch"] {
        let mut engine: Box<dyn MemoryEngine> = match name {
            "eager" => Box::new(EagerEngine::new()),
            "mmap" => Box::new(MmapEngine::new()),
            "uffd" => Box::new(UffdEngine::new()),
            _ => {
                // The first restore records the pages the guest touches until its working
                // set is checked; the second loads them in bulk.
                let mut engine = PrefetchEngine::new(&working_set);
                let (first, vm) = restore_once(&snapshot, &mut engine, &context, dir, &want)?;
                engine.save_working_set()?;
                stopped.push(vm);
                println!("engine=prefetch run=recording faults={}", first.faults);
                Box::new(engine)
            }
        };
        let (figures, vm) = restore_once(&snapshot, engine.as_mut(), &context, dir, &want)?;
        stopped.push(vm);
        println!(
            "engine={name} faults={} engine_restore_us={} first_ping_retries={}",
            figures.faults, figures.engine_us, figures.retries
        );
        lines.push(format!(
            "engine={name} snapshot_ms={snapshot_ms} restore_us={} first_resume_to_ready_us={} touched_mib={}",
            figures.restore_us, figures.ready_us, figures.touched_mib
        ));
    }
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// Boots the agent with vsock, writes the working set and the counter, and pauses the guest.
fn prepared(
    memory_mib: u64,
    dir: &Path,
    context: &std::sync::Arc<KvmContext>,
) -> Result<(RunningVm, Expected)> {
    let console = ConsoleBuffer::new();
    let vm = zygote_examples::guest(&Workload::Agent, memory_mib)
        .context(context.clone())
        .serial_output(SerialOutput::Buffer(console.clone()))
        .vsock(VsockConfig {
            guest_cid: 3,
            uds_path: dir.join("parent.vsock"),
        })
        .build()?
        .start()?;
    if !console.wait_for(READY_LINE, Duration::from_secs(60)) {
        return Err(format!("the guest did not start:\n{}", console.text()).into());
    }
    let mut agent = vm.agent()?;
    agent.counter_add(COUNTER)?;
    let mib = u32::try_from((memory_mib / 10).max(1))?;
    let (addr, sum) = agent.touch(mib, PATTERN)?;
    drop(agent);
    // Let the guest finish closing this connection before the snapshot: a restored guest
    // still holding a closing connection refuses (or leaves unanswered for the device's 5 s
    // response timeout) the first host connection, whose host port the restored device hands
    // out again. The guest's close waits at most 2 s for the host's answer.
    std::thread::sleep(Duration::from_secs(3));
    vm.pause()?;
    let len = u64::from(mib) << 20;
    Ok((vm, Expected { addr, len, sum }))
}

/// Restores `snapshot` through `engine`, times it, checks the guest, and stops it (the
/// stopped VM is returned: dropping it frees it).
fn restore_once(
    snapshot: &Snapshot,
    engine: &mut dyn MemoryEngine,
    context: &std::sync::Arc<KvmContext>,
    dir: &Path,
    want: &Expected,
) -> Result<(Figures, RunningVm)> {
    let uds = fresh_socket(dir, engine.name());
    let config = RestoreConfig {
        context: Some(context.clone()),
        devices: DeviceResources {
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: uds.clone(),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut timed = Timed {
        inner: engine,
        spent: Duration::ZERO,
    };
    let restore_called = Instant::now();
    let vm = Vm::restore_snapshot(snapshot, &mut timed, config)?;
    let (engine, engine_us) = (timed.inner, timed.spent.as_micros());
    let start_called = Instant::now();
    let mut vm = vm.start()?;
    let restore_us = restore_called.elapsed().as_micros();
    let (mut agent, retries) = first_ping(&vm)?;
    let ready_us = start_called.elapsed().as_micros();
    check(&mut agent, want, engine.name())?;
    drop(agent);
    let stats = vm.engine_stats();
    let touched_pages = match stats {
        Some(s) => populated_pages(engine.name(), &s),
        None => resident_bytes(vm.ram().host_addr() as u64, vm.ram().size())? / PAGE_SIZE,
    };
    vm.shutdown()?;
    let _ = std::fs::remove_file(&uds);
    let figures = Figures {
        restore_us,
        engine_us,
        retries,
        ready_us,
        touched_mib: (touched_pages * PAGE_SIZE) >> 20,
        faults: stats.map_or(0, |s| s.faults),
    };
    Ok((figures, vm))
}

/// A connection to a restored agent that answered a ping, and how many connections failed
/// first. A restored guest sometimes drops its first connection (it takes the device's
/// TRANSPORT_RESET after the connection request): connect again, as a user would.
fn first_ping(vm: &RunningVm) -> Result<(AgentClient, u32)> {
    let mut retries = 0;
    loop {
        match vm
            .agent()
            .and_then(|mut agent| agent.ping().map(|()| agent))
        {
            Ok(agent) => return Ok((agent, retries)),
            Err(e) if retries >= 4 => return Err(e.into()),
            Err(_) => retries += 1,
        }
    }
}

/// An engine around another that times its `restore` (the part of `restore_us` spent making
/// memory; the rest is the VM's own restore and start).
struct Timed<'a> {
    inner: &'a mut dyn MemoryEngine,
    spent: Duration,
}

impl MemoryEngine for Timed<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn restore(
        &mut self,
        source: PageSource,
        layout: &MemoryLayout,
        on_failure: FailureSink,
    ) -> std::result::Result<RestoredMemory, EngineError> {
        let started = Instant::now();
        let memory = self.inner.restore(source, layout, on_failure);
        self.spent = started.elapsed();
        memory
    }
}

/// The counter and the working set are what the guest held at the snapshot.
fn check(agent: &mut AgentClient, want: &Expected, engine: &str) -> Result<()> {
    let counter = agent.counter_get()?;
    if counter != COUNTER {
        return Err(format!("{engine}: counter {counter}, want {COUNTER}").into());
    }
    if agent.checksum(want.addr, want.len)? != want.sum {
        return Err(format!("{engine}: the working set's checksum differs").into());
    }
    Ok(())
}

/// Pages an engine with a service populated: eager counts each page it loads both as copied
/// and as loaded in bulk; the lazy engines count bulk loads, copies and zero fills apart.
fn populated_pages(engine: &str, stats: &EngineStats) -> u64 {
    if engine == "eager" {
        stats.pages_copied
    } else {
        stats.prefetched_pages + stats.pages_copied + stats.zero_pages
    }
}

/// Resident bytes (`Rss` in `/proc/self/smaps`) of the mappings inside `addr..addr + len`.
fn resident_bytes(addr: u64, len: u64) -> Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut inside = false;
    let mut kib = 0;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((start, end)) = range.split_once('-') {
                if let (Ok(start), Ok(end)) =
                    (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
                {
                    inside = start >= addr && end <= addr + len;
                    continue;
                }
            }
        }
        if let Some(rest) = line.strip_prefix("Rss:") {
            if inside {
                kib += rest.trim().trim_end_matches("kB").trim().parse::<u64>()?;
            }
        }
    }
    Ok(kib << 10)
}

fn fresh_socket(dir: &Path, engine: &str) -> PathBuf {
    let path = dir.join(format!("{engine}.vsock"));
    let _ = std::fs::remove_file(&path);
    path
}

fn args() -> std::result::Result<u64, String> {
    let mut memory_mib = 256;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--memory-mib" => {
                memory_mib = value.parse().map_err(|e| format!("--memory-mib: {e}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(memory_mib)
}
