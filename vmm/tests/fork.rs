//! Live fork with Zygote's guest: parent and children each change the agent counter and
//! memory, and each sees only its own, including writes the parent makes after the fork to
//! pages a child has not touched.

mod common;

use common::{agent_of, agent_vm, fork_with_nic, mac_of, AgentOpts};
use zygote::{ForkConfig, NetConfig, RunningVm};

const MIB: u64 = 1 << 20;

fn fork(parent: &mut RunningVm) -> RunningVm {
    fork_with_nic(parent).0
}

#[test]
fn parent_and_child_each_see_only_their_own_writes() {
    let mut parent = agent_vm(
        "fork-iso",
        AgentOpts {
            packet_nic: true,
            ..Default::default()
        },
    )
    .vm;
    let mut agent = agent_of(&parent);
    agent.counter_add(10).unwrap();
    let (addr, sum_a) = agent.touch(4, 0xaaaa).unwrap();
    drop(agent);

    let mut child = fork(&mut parent);
    let mut child_agent = agent_of(&child);
    let mut agent = agent_of(&parent);
    assert_eq!(child_agent.counter_get().unwrap(), 10);
    assert_eq!(child_agent.checksum(addr, 4 * MIB).unwrap(), sum_a);

    // The parent writes after the fork, to pages the child has not touched since.
    assert_eq!(agent.counter_add(5).unwrap(), 15);
    let (_, sum_b) = agent.touch(4, 0xbbbb).unwrap();
    assert_ne!(sum_a, sum_b);
    assert_eq!(child_agent.checksum(addr, 4 * MIB).unwrap(), sum_a);
    assert_eq!(child_agent.counter_get().unwrap(), 10);

    // The child's writes never reach the parent.
    assert_eq!(child_agent.counter_add(100).unwrap(), 110);
    let (_, sum_c) = child_agent.touch(4, 0xcccc).unwrap();
    assert_eq!(agent.counter_get().unwrap(), 15);
    assert_eq!(agent.checksum(addr, 4 * MIB).unwrap(), sum_b);

    // A second child of the same parent starts from the parent as it is now.
    let mut sibling = fork(&mut parent);
    let mut sibling_agent = agent_of(&sibling);
    assert_eq!(sibling_agent.counter_get().unwrap(), 15);
    assert_eq!(sibling_agent.checksum(addr, 4 * MIB).unwrap(), sum_b);
    assert_eq!(child_agent.checksum(addr, 4 * MIB).unwrap(), sum_c);

    let macs = [mac_of(&parent), mac_of(&child), mac_of(&sibling)];
    assert_ne!(macs[0], macs[1]);
    assert_ne!(macs[1], macs[2]);
    assert_ne!(macs[0], macs[2]);
    for vm in [&mut child, &mut sibling, &mut parent] {
        assert!(vm.exit_reason().is_none());
        vm.shutdown().unwrap();
    }
}

#[test]
fn each_clone_has_its_own_generation_id_and_random_state() {
    let mut parent = agent_vm(
        "fork-identity",
        AgentOpts {
            packet_nic: true,
            ..Default::default()
        },
    )
    .vm;
    let before = agent_of(&parent).identity().unwrap();
    assert_eq!(before.generation, 0);
    let mut child = fork(&mut parent);
    let sibling = fork(&mut parent);
    let grandchild = fork(&mut child);
    let parent_now = agent_of(&parent).identity().unwrap();
    let ids: Vec<_> = [&child, &sibling, &grandchild]
        .into_iter()
        .map(|vm| agent_of(vm).identity().unwrap())
        .collect();
    assert_eq!((parent_now.generation, parent_now.id), (0, before.id));
    assert_eq!(parent_now.seed, before.seed, "the parent did not reseed");
    let generations: Vec<_> = ids.iter().map(|i| i.generation).collect();
    assert_eq!(generations, [1, 1, 2]);
    for (i, clone) in ids.iter().enumerate() {
        assert_ne!(clone.id, before.id);
        assert_ne!(clone.seed, before.seed, "clone {i} reseeded");
        for other in &ids[i + 1..] {
            assert_ne!(clone.id, other.id);
            assert_ne!(clone.seed, other.seed);
            assert_ne!(clone.random, other.random);
        }
    }
}

#[test]
fn five_generations_each_keep_their_own_counter() {
    let mut vm = agent_vm(
        "fork-gen",
        AgentOpts {
            packet_nic: true,
            ..Default::default()
        },
    )
    .vm;
    let mut line = Vec::new();
    for generation in 1..=5u64 {
        agent_of(&vm).counter_add(generation).unwrap();
        let child = fork(&mut vm);
        line.push(vm);
        vm = child;
    }
    // Each ancestor kept the counter it had when it forked: 1, 1+2, 1+2+3, ...
    let mut expected = 0;
    for (i, ancestor) in line.iter().enumerate() {
        expected += i as u64 + 1;
        assert_eq!(agent_of(ancestor).counter_get().unwrap(), expected);
    }
    assert_eq!(agent_of(&vm).counter_get().unwrap(), 15);
    assert_eq!(agent_of(&vm).counter_add(1).unwrap(), 16);
    assert_eq!(agent_of(&line[4]).counter_get().unwrap(), 15);
}

#[test]
fn a_child_owns_only_what_it_writes() {
    let mut parent = agent_vm(
        "fork-usage",
        AgentOpts {
            packet_nic: true,
            ..Default::default()
        },
    )
    .vm;
    agent_of(&parent).touch(16, 1).unwrap();
    let before = parent.memory_usage().unwrap();
    assert!(before.private_bytes >= 16 * MIB, "{before:?}");
    assert_eq!(before.shared_bytes, 0);
    let child = fork(&mut parent);
    let mut agent = agent_of(&child);
    agent.ping().unwrap();
    let idle = child.memory_usage().unwrap();
    assert!(
        idle.private_bytes < 2 * MIB,
        "an idle child owns little: {idle:?}"
    );
    agent.touch(8, 2).unwrap();
    let busy = child.memory_usage().unwrap();
    assert!(
        busy.private_bytes >= idle.private_bytes + 8 * MIB,
        "{busy:?} after writing 8 MiB, {idle:?} before"
    );
    assert!(busy.shared_bytes > 0, "it still shares what it only read");
}

#[test]
fn children_forked_into_a_warm_pool_work_like_any_other() {
    let parent_vm = agent_vm(
        "fork-pool",
        AgentOpts {
            packet_nic: true,
            ..Default::default()
        },
    );
    let mut parent = parent_vm.vm;
    agent_of(&parent).counter_add(3).unwrap();
    let pool = std::sync::Arc::new(
        zygote::VmPool::new(parent.context().clone(), 128 << 20, 1, 2).unwrap(),
    );
    assert!(pool.wait_full(std::time::Duration::from_secs(30)));
    let mut children = Vec::new();
    for i in 0..3u64 {
        let (net, _endpoint) = NetConfig::packet().unwrap();
        let child = parent
            .fork(ForkConfig {
                nets: vec![net],
                pool: Some(pool.clone()),
                ..Default::default()
            })
            .unwrap()
            .child;
        assert_eq!(agent_of(&child).counter_add(i).unwrap(), 3 + i);
        children.push(child);
    }
    // The pool refills on its own.
    assert!(pool.wait_full(std::time::Duration::from_secs(30)));
    for (i, child) in children.iter().enumerate() {
        assert_eq!(agent_of(child).counter_get().unwrap(), 3 + i as u64);
    }
    assert_eq!(agent_of(&parent).counter_get().unwrap(), 3);
}

#[test]
fn a_childs_disk_writes_reach_neither_the_parent_nor_the_base_image() {
    let image = common::disk_image("fork-disk.img", 1 << 20);
    let base_before = std::fs::read(&image).unwrap();
    let parent_vm = agent_vm(
        "fork-disk",
        AgentOpts {
            block: Some(zygote::BlockConfig::new(&image).overlay()),
            packet_nic: true,
            ..Default::default()
        },
    );
    let mut parent = parent_vm.vm;
    let mut agent = agent_of(&parent);
    agent.disk_write(4, &[1; 512]).unwrap();
    drop(agent);
    let mut child = fork(&mut parent);
    let mut sibling = fork(&mut parent);
    let (mut pa, mut ca, mut sa) = (agent_of(&parent), agent_of(&child), agent_of(&sibling));
    // Everyone sees the parent's pre-fork write.
    for agent in [&mut pa, &mut ca, &mut sa] {
        assert_eq!(agent.disk_read(4, 1).unwrap(), vec![1; 512]);
    }
    ca.disk_write(8, &[2; 512]).unwrap();
    pa.disk_write(9, &[3; 512]).unwrap();
    sa.disk_write(10, &[4; 512]).unwrap();
    let original = |sector: usize| base_before[sector * 512..(sector + 1) * 512].to_vec();
    assert_eq!(
        pa.disk_read(8, 1).unwrap(),
        original(8),
        "the parent sees the child's write"
    );
    assert_eq!(
        sa.disk_read(8, 1).unwrap(),
        original(8),
        "a sibling sees the child's write"
    );
    assert_eq!(
        ca.disk_read(9, 1).unwrap(),
        original(9),
        "the child sees the parent's later write"
    );
    assert_eq!(ca.disk_read(10, 1).unwrap(), original(10));
    assert_eq!(ca.disk_read(8, 1).unwrap(), vec![2; 512]);
    assert_eq!(pa.disk_read(9, 1).unwrap(), vec![3; 512]);
    drop((pa, ca, sa));
    for vm in [&mut child, &mut sibling, &mut parent] {
        vm.shutdown().unwrap();
    }
    assert_eq!(
        std::fs::read(&image).unwrap(),
        base_before,
        "the base image was written"
    );
}
