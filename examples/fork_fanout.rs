//! Forks one running VM into many children and prints what a fork costs.
//!
//! ```sh
//! cargo run --release --example fork_fanout -- --children 20 --memory-mib 256 [--pool 20]
//! ```
//!
//! With `--pool N`, children are forked into a warm pool of N pre-created VMs (`VmPool`),
//! filled before the first fork.
//!
//! Ends with exactly one line:
//! `fork_p50_us=<n> fork_p99_us=<n> parent_pause_p50_us=<n> children=<n> private_per_child_kib=<n> vm_create_floor_us=<n>`
//! - fork latency: from the `fork()` call until the child's vCPUs run;
//! - parent pause: from the parent's vCPUs stopping to their running again;
//! - private memory per child: growth of the process's `Private_Dirty` (smaps) over all
//!   children once each has answered a ping, divided by their number (not RSS, which counts
//!   shared pages once per mapping);
//! - the floor: the raw kvm-ioctls sequence for one VM (create VM, memory slot, irqchip, PIT,
//!   one vCPU with its state set), measured in the same run.

use std::time::{Duration, Instant};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use zygote::{ForkConfig, KvmContext, RunningVm, VsockConfig};
use zygote_benches::measure::{percentile, private_dirty_kib, raise_fd_limit};
use zygote_guest::{Workload, READY_LINE};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (children, memory_mib, pool_size) = args()?;
    raise_fd_limit();
    let context = KvmContext::new()?;
    let uds = std::env::temp_dir().join(format!("zygote-fanout-{}.vsock", std::process::id()));
    let console = zygote::ConsoleBuffer::new();
    let mut parent = zygote_examples::guest(&Workload::Agent, memory_mib)
        .context(context.clone())
        .serial_output(zygote::SerialOutput::Buffer(console.clone()))
        .vsock(VsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
        })
        .build()?
        .start()?;
    if !console.wait_for(READY_LINE, Duration::from_secs(60)) {
        return Err(format!("the guest did not start:\n{}", console.text()).into());
    }
    let mut agent = parent.agent()?;
    // The guest writes a good part of its memory first, so the fork has real pages to share.
    let touch_mib = u32::try_from(memory_mib / 2).unwrap_or(u32::MAX).min(512);
    agent.touch(touch_mib, 0x5eed)?;
    agent.counter_add(1)?;

    let floor_us = floor_p50_us(memory_mib)?;
    let pool = if pool_size > 0 {
        let pool = zygote::VmPool::new(context, memory_mib << 20, 1, pool_size)?;
        if !pool.wait_full(Duration::from_secs(120)) {
            return Err("the VM pool did not fill".into());
        }
        Some(std::sync::Arc::new(pool))
    } else {
        None
    };
    let config = || ForkConfig {
        pool: pool.clone(),
        ..Default::default()
    };
    // The first fork moves the parent itself onto copy-on-write memory (and unmaps its old
    // mapping in the background): a one-time cost of the parent, not of any child.
    drop(parent.fork(ForkConfig::default())?.child);
    std::thread::sleep(Duration::from_millis(500));
    let before = private_dirty_kib()?;
    let mut fork_us = Vec::with_capacity(children);
    let mut pause_us = Vec::with_capacity(children);
    let mut kids: Vec<RunningVm> = Vec::with_capacity(children);
    for _ in 0..children {
        let started = Instant::now();
        let fork = parent.fork(config())?;
        fork_us.push(started.elapsed().as_micros() as u64);
        pause_us.push(fork.parent_pause.as_micros() as u64);
        kids.push(fork.child);
    }
    for (i, kid) in kids.iter().enumerate() {
        let mut agent = kid.agent()?;
        if agent.counter_get()? != 1 {
            return Err(format!("child {i} lost the parent's counter").into());
        }
    }
    let after = private_dirty_kib()?;
    let per_child = after.saturating_sub(before) / children.max(1) as u64;
    println!(
        "fork_p50_us={} fork_p99_us={} parent_pause_p50_us={} children={} private_per_child_kib={} vm_create_floor_us={}",
        percentile(&mut fork_us, 50),
        percentile(&mut fork_us, 99),
        percentile(&mut pause_us, 50),
        kids.len(),
        per_child,
        floor_us
    );
    Ok(())
}

fn args() -> Result<(usize, u64, usize), String> {
    let mut children = 10;
    let mut memory_mib = 256;
    let mut pool = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--children" => children = value.parse().map_err(|e| format!("--children: {e}"))?,
            "--memory-mib" => {
                memory_mib = value.parse().map_err(|e| format!("--memory-mib: {e}"))?
            }
            "--pool" => pool = value.parse().map_err(|e| format!("--pool: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((children, memory_mib, pool))
}

/// The floor's p50 over 21 VMs, each dropped off the timed path.
fn floor_p50_us(memory_mib: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let kvm = kvm_ioctls::Kvm::new()?;
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    let size = usize::try_from(memory_mib << 20)?;
    let mut times = Vec::new();
    let mut vms = Vec::new();
    for _ in 0..21 {
        let started = Instant::now();
        vms.push(zygote_benches::create_vm_with_irqchip(&kvm, &cpuid, size)?);
        times.push(started.elapsed().as_micros() as u64);
    }
    // Closing a VM with an irqchip takes 15-25 ms: off the timed path, after it.
    std::thread::spawn(move || drop(vms));
    Ok(percentile(&mut times, 50))
}
