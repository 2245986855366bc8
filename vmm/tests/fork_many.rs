//! Live fork at scale and in depth: a hundred children of one parent, each reachable over its
//! own vsock with its own CID and MAC; and two generations that each see only their own
//! writes.

mod common;

use std::collections::HashSet;
use std::time::Instant;

use common::{agent_of, agent_vm, fork_with_nic, mac_of, AgentOpts};
use zygote::{PacketEndpoint, RunningVm};

const MIB: u64 = 1 << 20;
const CHILDREN: usize = 100;

fn fork(parent: &mut RunningVm) -> (RunningVm, PacketEndpoint) {
    fork_with_nic(parent)
}

fn cid_of(vm: &RunningVm) -> u64 {
    vm.devices()
        .vsock_config()
        .expect("a vsock device")
        .guest_cid
}

/// Each VM holds a few dozen fds: a hundred need more than a default soft limit of 1024.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[test]
fn a_hundred_children_of_one_parent_each_answer_on_their_own_vsock() {
    raise_fd_limit();
    let mut parent = agent_vm(
        "fork-many",
        AgentOpts {
            packet_nic: true,
            ..Default::default()
        },
    )
    .vm;
    agent_of(&parent).counter_add(7).unwrap();
    let started = Instant::now();
    let mut children = Vec::with_capacity(CHILDREN);
    for _ in 0..CHILDREN {
        children.push(fork(&mut parent));
    }
    let forked = started.elapsed();
    // Every child answers over its own socket, starting from the parent's counter; the
    // vsock device drops a packet whose source CID is not the child's own, so an answer also
    // shows the child's guest took its new CID.
    for (i, (child, _)) in children.iter().enumerate() {
        let mut agent = agent_of(child);
        agent.ping().unwrap_or_else(|e| panic!("child {i}: {e}"));
        assert_eq!(agent.counter_add(i as u64).unwrap(), 7 + i as u64);
    }
    eprintln!(
        "{CHILDREN} forks took {forked:?}; all answered after {:?}",
        started.elapsed()
    );
    // Each kept its own counter: no child saw a sibling's write.
    for (i, (child, _)) in children.iter().enumerate() {
        assert_eq!(agent_of(child).counter_get().unwrap(), 7 + i as u64);
    }
    assert_eq!(agent_of(&parent).counter_get().unwrap(), 7);

    let vms = || std::iter::once(&parent).chain(children.iter().map(|(child, _)| child));
    let cids: HashSet<u64> = vms().map(cid_of).collect();
    assert_eq!(cids.len(), CHILDREN + 1, "every VM has its own CID");
    let sockets: HashSet<_> = vms()
        .map(|vm| vm.devices().vsock_config().unwrap().uds_path.clone())
        .collect();
    assert_eq!(sockets.len(), CHILDREN + 1, "every VM has its own socket");
    let macs: HashSet<[u8; 6]> = vms().map(mac_of).collect();
    assert_eq!(macs.len(), CHILDREN + 1, "every VM has its own MAC");
    for (child, _) in &children {
        assert!(child.exit_reason().is_none());
    }
}

#[test]
fn two_generations_each_see_only_their_own_memory() {
    let mut parent = agent_vm(
        "fork-two-gen",
        AgentOpts {
            packet_nic: true,
            ..Default::default()
        },
    )
    .vm;
    let (addr, sum_a) = agent_of(&parent).touch(4, 0xa).unwrap();
    let (mut child, _child_net) = fork(&mut parent);
    let (_, sum_b) = agent_of(&child).touch(4, 0xb).unwrap();
    let (grandchild, _grandchild_net) = fork(&mut child);
    let mut grandchild_agent = agent_of(&grandchild);
    assert_eq!(grandchild_agent.checksum(addr, 4 * MIB).unwrap(), sum_b);

    // The middle generation writes after the fork, to pages the grandchild has not touched:
    // the grandchild keeps what its parent had at the fork, and the first generation its own.
    let (_, sum_c) = agent_of(&child).touch(4, 0xc).unwrap();
    assert_eq!(grandchild_agent.checksum(addr, 4 * MIB).unwrap(), sum_b);
    assert_eq!(agent_of(&parent).checksum(addr, 4 * MIB).unwrap(), sum_a);

    // The grandchild's writes reach neither ancestor.
    let (_, sum_d) = grandchild_agent.touch(4, 0xd).unwrap();
    assert_eq!(agent_of(&child).checksum(addr, 4 * MIB).unwrap(), sum_c);
    assert_eq!(agent_of(&parent).checksum(addr, 4 * MIB).unwrap(), sum_a);
    assert_eq!(grandchild_agent.checksum(addr, 4 * MIB).unwrap(), sum_d);
    let distinct: HashSet<u64> = [sum_a, sum_b, sum_c, sum_d].into();
    assert_eq!(distinct.len(), 4, "the patterns differ");

    let cids: HashSet<u64> = [&parent, &child, &grandchild]
        .into_iter()
        .map(cid_of)
        .collect();
    assert_eq!(cids.len(), 3, "each generation has its own CID");
}

#[test]
fn a_grandchild_gets_a_cid_no_relative_has() {
    let mut parent = agent_vm(
        "fork-cid",
        AgentOpts {
            packet_nic: true,
            ..Default::default()
        },
    )
    .vm;
    let (mut child, _child_net) = fork(&mut parent);
    let (sibling, _sibling_net) = fork(&mut parent);
    let (grandchild, _grandchild_net) = fork(&mut child);
    let family = [&parent, &child, &sibling, &grandchild];
    let cids: Vec<u64> = family.iter().map(|vm| cid_of(vm)).collect();
    let distinct: HashSet<u64> = cids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        family.len(),
        "parent, child, sibling, grandchild CIDs: {cids:?}"
    );
    // Each answers on its own CID (the device drops packets from any other).
    for vm in family {
        agent_of(vm).ping().unwrap();
    }
}

#[test]
fn twenty_generations_of_derived_vsock_sockets_all_listen() {
    let mut vm = agent_vm(
        "fork-deep",
        AgentOpts {
            packet_nic: true,
            ..Default::default()
        },
    )
    .vm;
    let mut line = Vec::new();
    for generation in 1..=20u64 {
        agent_of(&vm).counter_add(1).unwrap();
        let (child, net) = fork(&mut vm);
        line.push((vm, net));
        vm = child;
        assert_eq!(
            agent_of(&vm).counter_get().unwrap(),
            generation,
            "generation {generation}"
        );
    }
    let sockets: HashSet<_> = line
        .iter()
        .map(|(vm, _)| vm)
        .chain([&vm])
        .map(|vm| vm.devices().vsock_config().unwrap().uds_path.clone())
        .collect();
    assert_eq!(sockets.len(), 21, "every generation has its own socket");
}
