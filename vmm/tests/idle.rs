//! An idle guest does not burn a host core: Zygote's agent sleeps on the idle port once it has
//! found no work for a while, and wakes when a device has something for it, when its wait runs
//! out, or when the VMM wants its vCPU (pause, shutdown).

mod common;

use std::time::{Duration, Instant};

use zygote::{ExitReason, VmState};

/// On-CPU and run-queue time of a thread of this process, in ns
/// (`/proc/self/task/<tid>/schedstat`): together, the time the thread wanted a CPU.
fn cpu_demand_ns(tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .expect("read the vCPU thread's schedstat");
    let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    fields.next().unwrap() + fields.next().unwrap()
}

/// The share of `over` that the vCPU thread of `vm` wanted a CPU for. Counting run-queue time
/// too makes the figure independent of how loaded the host is: a spinning thread wants a CPU
/// all the time whether it gets one or not, a sleeping one does not.
fn vcpu_demand(vm: &zygote::RunningVm, over: Duration) -> f64 {
    let tids = vm.vcpu_thread_ids();
    assert_eq!(tids.len(), 1, "one vCPU thread");
    let before = cpu_demand_ns(tids[0]);
    let start = Instant::now();
    std::thread::sleep(over);
    let demand = cpu_demand_ns(tids[0]) - before;
    demand as f64 / start.elapsed().as_nanos() as f64
}

#[test]
fn an_idle_agent_vm_leaves_the_host_core_alone() {
    let guest = common::agent_vm("idle-cpu", common::AgentOpts::default());
    let mut agent = guest.vm.agent().unwrap();
    agent.ping().unwrap();
    // An open connection with nothing on it: the agent still polls it.
    std::thread::sleep(Duration::from_millis(200));
    let demand = vcpu_demand(&guest.vm, Duration::from_secs(1));
    eprintln!("idle vCPU demand: {:.1}% of a core", demand * 100.0);
    assert!(
        demand < 0.3,
        "the idle guest's vCPU wanted a CPU {:.0}% of the time",
        demand * 100.0
    );
    agent.ping().unwrap();
}

#[test]
fn requests_are_answered_after_the_guest_idled() {
    let guest = common::agent_vm("idle-answer", common::AgentOpts::default());
    let mut agent = guest.vm.agent().unwrap();
    assert_eq!(agent.counter_add(5).unwrap(), 5);
    for round in 1..=3u64 {
        // Long enough for the agent to sleep, and to wake from a timeout or two first.
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(agent.counter_add(1).unwrap(), 5 + round);
        assert_eq!(agent.echo(b"still here").unwrap(), b"still here");
    }
    // A new connection reaches a sleeping agent too.
    std::thread::sleep(Duration::from_millis(250));
    let mut second = guest.vm.agent().unwrap();
    assert_eq!(second.counter_get().unwrap(), 8);
}

#[test]
fn an_idle_vm_pauses_resumes_and_shuts_down() {
    let mut guest = common::agent_vm("idle-lifecycle", common::AgentOpts::default());
    let mut agent = guest.vm.agent().unwrap();
    agent.ping().unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(250));
        guest.vm.pause().expect("pause an idle VM");
        assert_eq!(guest.vm.state(), VmState::Paused);
        guest.vm.resume().unwrap();
        agent.ping().unwrap();
    }
    std::thread::sleep(Duration::from_millis(250));
    let exit = guest.vm.shutdown().unwrap();
    assert!(matches!(exit, ExitReason::Shutdown), "{exit:?}");
    assert!(guest.vm.vcpu_thread_ids().is_empty());
}
