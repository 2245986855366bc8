//! The VM identity page (VMGenID in spirit): a generation counter and a random VM id the VMM
//! writes at [`VM_IDENTITY_ADDR`] and the guest only reads, so a guest can tell it is a clone
//! and reseed its random state. The layout is `zygote_guest_proto::VmIdentity`'s; the page is
//! reserved in the e820 map ([`super::boot_params`]) so a Linux guest never uses it.
//!
//! Written only while no vCPU runs: by `Vm::create` (generation 0, a fresh id) and by the fork
//! path into a child's memory before it starts (its parent's generation + 1, a fresh id;
//! `vm/fork.rs`). A page without the magic (a VM restored from state saved before the page
//! existed) counts as generation 0.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
pub use zygote_guest_proto::{VmIdentity, VM_IDENTITY_ADDR, VM_ID_LEN};

/// Errors from writing the identity page or making an id.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The page could not be written to guest memory.
    #[error("cannot write the VM identity page: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
    /// `getrandom(2)` failed.
    #[error("cannot read random bytes for the VM id: {0}")]
    Random(#[source] std::io::Error),
}

/// Writes `identity` at [`VM_IDENTITY_ADDR`] (the rest of the page stays as it is: zero in a
/// fresh VM, and in a clone already zero from its parent).
pub(crate) fn write(mem: &GuestMemoryMmap, identity: &VmIdentity) -> Result<(), IdentityError> {
    mem.write_slice(&identity.encode(), GuestAddress(VM_IDENTITY_ADDR))
        .map_err(IdentityError::Write)
}

/// What the page in `mem` says; `None` if it was never written (no magic) or is not RAM.
pub(crate) fn read(mem: &GuestMemoryMmap) -> Option<VmIdentity> {
    let mut page = [0u8; zygote_guest_proto::VM_IDENTITY_LEN];
    mem.read_slice(&mut page, GuestAddress(VM_IDENTITY_ADDR))
        .ok()?;
    VmIdentity::decode(&page)
}

/// A fresh random VM id from `getrandom(2)`.
pub(crate) fn random_id() -> Result<[u8; VM_ID_LEN], IdentityError> {
    let mut id = [0u8; VM_ID_LEN];
    let mut filled = 0;
    while filled < id.len() {
        let rest = &mut id[filled..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which is valid and
        // exclusively borrowed for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(IdentityError::Random(error));
        }
        filled += n as usize;
    }
    Ok(id)
}

/// The identity of a VM booted from scratch: generation 0 and a fresh id.
pub(crate) fn first() -> Result<VmIdentity, IdentityError> {
    Ok(VmIdentity {
        generation: 0,
        id: random_id()?,
    })
}

/// The identity of a clone of a VM whose identity is `parent`: the next generation (wrapping)
/// and a fresh id.
pub(crate) fn next(parent: &VmIdentity) -> Result<VmIdentity, IdentityError> {
    Ok(VmIdentity {
        generation: parent.generation.wrapping_add(1),
        id: random_id()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn a_written_identity_reads_back_and_a_fresh_page_has_none() {
        let mem = memory();
        assert_eq!(read(&mem), None);
        let identity = first().unwrap();
        write(&mem, &identity).unwrap();
        assert_eq!(read(&mem), Some(identity));
        let mut magic = [0u8; 8];
        mem.read_slice(&mut magic, GuestAddress(VM_IDENTITY_ADDR))
            .unwrap();
        assert_eq!(&magic, b"ZYGVMID1");
    }

    #[test]
    fn a_clone_gets_the_next_generation_and_another_id() {
        let parent = first().unwrap();
        let child = next(&parent).unwrap();
        assert_eq!(child.generation, 1);
        assert_ne!(child.id, parent.id);
        assert_ne!(first().unwrap().id, parent.id, "every VM gets its own id");
    }

    #[test]
    fn the_page_lies_below_the_zero_page_in_low_ram() {
        let page = VM_IDENTITY_ADDR..VM_IDENTITY_ADDR + 4096;
        assert!(!page.contains(&super::super::layout::ZERO_PAGE_START.0));
        assert!(page.end <= super::super::layout::ZERO_PAGE_START.0);
        assert!(page.start >= super::super::layout::BOOT_IDT_START.0 + 8);
    }
}
