//! The VM identity page end to end: the VMM writes generation 0 and a random id at boot, the
//! guest agent reports them, and a new generation written into a paused VM's memory makes the
//! agent take on the new id and reseed its random state.

mod common;

use zygote::agent::{AgentError, ErrorCode};
use zygote::vm_memory::{Bytes, GuestAddress};
use zygote_guest::proto::{VmIdentity, VM_IDENTITY_ADDR, VM_IDENTITY_LEN};

fn page(vm: &zygote::RunningVm) -> Option<VmIdentity> {
    let mut bytes = [0u8; VM_IDENTITY_LEN];
    vm.memory()
        .read_slice(&mut bytes, GuestAddress(VM_IDENTITY_ADDR))
        .unwrap();
    VmIdentity::decode(&bytes)
}

#[test]
fn a_booted_vm_reports_generation_0_and_the_id_the_vmm_wrote() {
    let guest = common::agent_vm("identity-boot", common::AgentOpts::default());
    let written = page(&guest.vm).expect("the VMM wrote the identity page");
    assert_eq!(written.generation, 0);
    assert_ne!(written.id, [0; 16]);
    let mut agent = guest.vm.agent().unwrap();
    let first = agent.identity().unwrap();
    assert_eq!((first.generation, first.id), (0, written.id));
    // Without a new generation the seed stays; the values it gives do not repeat.
    let second = agent.identity().unwrap();
    assert_eq!(second.seed, first.seed);
    assert_ne!(second.random, first.random);

    let other = common::agent_vm("identity-other", common::AgentOpts::default());
    let other_id = page(&other.vm).unwrap().id;
    assert_ne!(other_id, written.id, "every VM gets its own id");
}

#[test]
fn a_new_generation_written_while_paused_reseeds_the_guest() {
    let guest = common::agent_vm("identity-clone", common::AgentOpts::default());
    let mut agent = guest.vm.agent().unwrap();
    let before = agent.identity().unwrap();
    guest.vm.pause().unwrap();
    let clone = VmIdentity {
        generation: 1,
        id: *b"a clone's new id",
    };
    guest
        .vm
        .memory()
        .write_slice(&clone.encode(), GuestAddress(VM_IDENTITY_ADDR))
        .unwrap();
    guest.vm.resume().unwrap();
    let after = agent.identity().unwrap();
    assert_eq!((after.generation, after.id), (1, clone.id));
    assert_ne!(after.seed, before.seed, "the guest reseeded");
    assert_ne!(after.random, before.random);
    assert_eq!(agent.identity().unwrap().seed, after.seed, "once");
}

#[test]
fn the_identity_page_is_reserved_in_the_e820_map() {
    let guest = common::agent_vm("identity-e820", common::AgentOpts::default());
    let mut agent = guest.vm.agent().unwrap();
    // The agent checksums only what the e820 map calls usable RAM.
    assert!(agent.checksum(VM_IDENTITY_ADDR - 4096, 4096).is_ok());
    assert!(matches!(
        agent.checksum(VM_IDENTITY_ADDR, 8),
        Err(AgentError::Guest(ErrorCode::OutOfRange))
    ));
    assert!(agent.checksum(VM_IDENTITY_ADDR + 4096, 4096).is_ok());
}
