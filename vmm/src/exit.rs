//! Why a VM stopped.

use std::sync::Arc;

/// How a guest failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFault {
    /// The CPU triple-faulted (KVM reported a shutdown). The registers are those KVM reports
    /// at that point, for diagnosis.
    TripleFault {
        /// Instruction pointer.
        rip: u64,
        /// Stack pointer.
        rsp: u64,
        /// The exception KVM was delivering, if it says (vector).
        exception: Option<u8>,
    },
    /// The guest kernel reported an unrecoverable exception through the debug-exit device.
    Exception {
        /// The exception vector (0 divide error, 6 invalid opcode, 13 #GP, 14 #PF, ...).
        vector: u32,
    },
    /// The guest's kernel reported a crash (`KVM_SYSTEM_EVENT_CRASH`).
    Crash,
    /// KVM could not enter the guest (invalid guest state).
    EntryFailure {
        /// Hardware entry-failure reason.
        reason: u64,
    },
    /// KVM stopped the guest with `KVM_EXIT_INTERNAL_ERROR`, most often because it could not
    /// emulate an instruction. Carries what KVM reports (`kvm_run.internal`); for an
    /// emulation failure [`GuestFault::instruction_bytes`] decodes the failing instruction.
    InternalError {
        /// KVM's sub-error code (`KVM_INTERNAL_ERROR_EMULATION` = 1, `_SIMUL_EX` = 2,
        /// `_DELIVERY_EV` = 3, `_UNEXPECTED_EXIT_REASON` = 4).
        suberror: u32,
        /// How many of `data`'s words KVM filled in (at most 8 are kept: an emulation failure needs 3, this host adds a few).
        ndata: u32,
        /// KVM's extra data. For an emulation failure (KVM API doc, `emulation_failure`):
        /// `data[0]` = flags (bit 0: instruction bytes valid), the low byte of `data[1]` = the
        /// instruction's length, then up to 15 instruction bytes.
        data: [u64; 8],
    },
}

/// `KVM_INTERNAL_ERROR_EMULATION`: KVM could not emulate an instruction.
pub const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;
/// `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`: `insn_size`/`insn_bytes` are valid.
const EMULATION_FLAG_INSTRUCTION_BYTES: u64 = 1;
/// The longest x86 instruction.
const MAX_INSTRUCTION_LEN: usize = 15;

impl GuestFault {
    /// The instruction bytes KVM reports for an emulation failure: 1-15 bytes fetched at the
    /// failing instruction, which starts at the first byte (KVM may report the whole 15-byte
    /// window, as this project's hosts do). `Some` only when KVM says they are valid (flags bit
    /// 0 and `ndata >= 3`, as the KVM API documents `emulation_failure`).
    pub fn instruction_bytes(&self) -> Option<Vec<u8>> {
        let Self::InternalError {
            suberror: KVM_INTERNAL_ERROR_EMULATION,
            ndata,
            data,
        } = self
        else {
            return None;
        };
        if *ndata < 3 || data[0] & EMULATION_FLAG_INSTRUCTION_BYTES == 0 {
            return None;
        }
        // insn_size and insn_bytes[15] overlay data[1] and data[2], in memory (little-endian)
        // order.
        let bytes: Vec<u8> = data[1..3].iter().flat_map(|w| w.to_le_bytes()).collect();
        let len = usize::from(bytes[0]);
        (1..=MAX_INSTRUCTION_LEN)
            .contains(&len)
            .then(|| bytes[1..=len].to_vec())
    }
}

impl std::fmt::Display for GuestFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TripleFault {
                rip,
                rsp,
                exception,
            } => {
                write!(f, "triple fault at rip {rip:#x} rsp {rsp:#x}")?;
                match exception {
                    Some(vector) => write!(f, " delivering exception {vector}"),
                    None => Ok(()),
                }
            }
            Self::Exception { vector } => write!(f, "guest exception {vector}"),
            Self::Crash => write!(f, "guest kernel crashed"),
            Self::EntryFailure { reason } => write!(f, "KVM entry failure, reason {reason:#x}"),
            Self::InternalError {
                suberror,
                ndata,
                data,
            } => {
                write!(f, "KVM internal error, suberror {suberror}")?;
                let kept = data.len().min(*ndata as usize);
                let mut words = &data[..kept];
                if let Some(bytes) = self.instruction_bytes() {
                    write!(f, " (emulation failure), instruction bytes")?;
                    bytes.iter().try_for_each(|b| write!(f, " {b:02x}"))?;
                    words = &words[3..];
                    if words.is_empty() {
                        return Ok(());
                    }
                }
                write!(f, ", data [")?;
                for (i, word) in words.iter().enumerate() {
                    let sep = if i == 0 { "" } else { " " };
                    write!(f, "{sep}{word:#x}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// Why a VM stopped.
#[derive(Clone, Debug)]
pub enum ExitReason {
    /// The guest exited with this code through the debug-exit device.
    Exited(u32),
    /// The guest asked for a reset (i8042 or KVM reset event).
    Reset,
    /// The guest powered off (KVM shutdown event) or halted with nothing left to wake it.
    PowerOff,
    /// The guest failed.
    GuestFault(GuestFault),
    /// The host shut the VM down.
    Shutdown,
    /// The VMM failed to run the guest: a vCPU (`VcpuError`) or the device event loop
    /// (`EventLoopError`) failed. Downcast to look inside.
    HostError(Arc<dyn std::error::Error + Send + Sync>),
}

impl ExitReason {
    /// The exit code, if the guest exited through the debug-exit device.
    pub fn exit_code(&self) -> Option<u32> {
        match self {
            Self::Exited(code) => Some(*code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An emulation failure as KVM lays it out: flags, then insn_size and insn_bytes.
    fn emulation_failure(flags: u64, insn: &[u8], ndata: u32) -> GuestFault {
        let mut bytes = [0u8; 16];
        bytes[0] = insn.len() as u8;
        bytes[1..=insn.len()].copy_from_slice(insn);
        let mut data = [0u64; 8];
        data[0] = flags;
        data[1] = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        data[2] = u64::from_le_bytes(bytes[8..].try_into().unwrap());
        GuestFault::InternalError {
            suberror: KVM_INTERNAL_ERROR_EMULATION,
            ndata,
            data,
        }
    }

    #[test]
    fn emulation_failure_decodes_instruction_bytes() {
        // xrstor64 (%rdi), the first instruction Linux stops on without `noxsave`.
        let fault = emulation_failure(1, &[0x48, 0x0f, 0xae, 0x2f], 3);
        assert_eq!(
            fault.instruction_bytes(),
            Some(vec![0x48, 0x0f, 0xae, 0x2f])
        );
        assert_eq!(
            fault.to_string(),
            "KVM internal error, suberror 1 (emulation failure), instruction bytes 48 0f ae 2f"
        );
    }

    #[test]
    fn emulation_failure_as_this_host_reports_it_shows_bytes_and_extra_data() {
        // What kvm_pvm here reported for Linux's xrstor64 without `noxsave`: the 15-byte fetch
        // window, then extra words.
        let mut data = [0u64; 8];
        data[..4].copy_from_slice(&[1, 0x48c0_312f_ae0f_480f, 0x48ff_d940_d905_ae0f, 0x1000]);
        let fault = GuestFault::InternalError {
            suberror: 1,
            ndata: 8,
            data,
        };
        let bytes = fault.instruction_bytes().unwrap();
        assert_eq!(bytes.len(), 15);
        assert_eq!(bytes[..4], [0x48, 0x0f, 0xae, 0x2f]);
        assert_eq!(
            fault.to_string(),
            "KVM internal error, suberror 1 (emulation failure), instruction bytes \
             48 0f ae 2f 31 c0 48 0f ae 05 d9 40 d9 ff 48, data [0x1000 0x0 0x0 0x0 0x0]"
        );
    }

    #[test]
    fn fifteen_byte_instruction_spans_both_words() {
        let insn: Vec<u8> = (0xf0..=0xfe).collect();
        let fault = emulation_failure(1, &insn, 5);
        assert_eq!(fault.instruction_bytes(), Some(insn));
    }

    #[test]
    fn instruction_bytes_need_the_flag_ndata_and_a_valid_length() {
        assert_eq!(
            emulation_failure(0, &[0x0f, 0x0b], 3).instruction_bytes(),
            None
        );
        assert_eq!(
            emulation_failure(1, &[0x0f, 0x0b], 2).instruction_bytes(),
            None
        );
        assert_eq!(emulation_failure(1, &[], 3).instruction_bytes(), None);
        let mut too_long = emulation_failure(1, &[0x90], 3);
        if let GuestFault::InternalError { data, .. } = &mut too_long {
            data[1] = (data[1] & !0xff) | 16;
        }
        assert_eq!(too_long.instruction_bytes(), None);
    }

    #[test]
    fn other_internal_errors_show_their_data_words() {
        let mut data = [0u64; 8];
        data[..3].copy_from_slice(&[0x80, 0x1234, 7]);
        let fault = GuestFault::InternalError {
            suberror: 3,
            ndata: 3,
            data,
        };
        assert_eq!(fault.instruction_bytes(), None);
        assert_eq!(
            fault.to_string(),
            "KVM internal error, suberror 3, data [0x80 0x1234 0x7]"
        );
    }

    #[test]
    fn ndata_beyond_what_is_kept_shows_the_kept_words() {
        let fault = GuestFault::InternalError {
            suberror: 4,
            ndata: 1000,
            data: [1; 8],
        };
        assert_eq!(fault.to_string().matches("0x1").count(), 8);
    }
}
