//! What every VM of a process shares: the open `/dev/kvm` and what KVM reports once for the
//! host (the supported CPUID, the MSR index list).
//!
//! Opening `/dev/kvm` and reading `KVM_GET_SUPPORTED_CPUID` took 130-160 µs per VM here; a
//! [`KvmContext`] does it once and is handed to every VM a program builds, restores or forks
//! ([`crate::VmBuilder::context`]). It is plain shared data, not global state: a program may
//! hold several.

use std::sync::Arc;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use crate::error::KvmError;

/// The host's KVM, opened once, with what it reports about itself.
pub struct KvmContext {
    kvm: Kvm,
    supported_cpuid: CpuId,
    msr_index_list: Vec<u32>,
}

impl std::fmt::Debug for KvmContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmContext")
            .field("cpuid_entries", &self.supported_cpuid.as_slice().len())
            .field("msrs", &self.msr_index_list.len())
            .finish()
    }
}

impl KvmContext {
    /// Opens `/dev/kvm` and reads `KVM_GET_SUPPORTED_CPUID` and `KVM_GET_MSR_INDEX_LIST`.
    ///
    /// # Errors
    /// [`KvmError::Open`] without a usable `/dev/kvm`; [`KvmError::SupportedCpuid`] or
    /// [`KvmError::MsrIndexList`] if KVM refuses to describe itself.
    pub fn new() -> Result<Arc<Self>, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)?;
        let msr_index_list = kvm
            .get_msr_index_list()
            .map_err(KvmError::MsrIndexList)?
            .as_slice()
            .to_vec();
        Ok(Arc::new(Self {
            kvm,
            supported_cpuid,
            msr_index_list,
        }))
    }

    /// The open `/dev/kvm`.
    pub(crate) fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// `KVM_GET_SUPPORTED_CPUID`, unfiltered.
    pub(crate) fn supported_cpuid(&self) -> &CpuId {
        &self.supported_cpuid
    }

    /// `KVM_GET_MSR_INDEX_LIST`: the MSRs KVM can save and restore for a vCPU.
    pub(crate) fn msr_index_list(&self) -> &[u32] {
        &self.msr_index_list
    }
}
