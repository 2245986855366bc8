//! The vCPU thread: run the guest, dispatch its exits, obey pause and stop.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_ioctls::VcpuExit;
use zygote_devices::Bus;

use super::{Kick, Vcpu, VcpuError};
use crate::control::{Next, VmControl};
use crate::exit::{ExitReason, GuestFault};

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// The buses a vCPU dispatches its I/O exits to.
#[derive(Clone)]
pub(crate) struct Buses {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
}

/// Starts the thread that runs `vcpu` until the VM stops.
pub(crate) fn spawn(
    vcpu: Vcpu,
    buses: Buses,
    control: Arc<VmControl>,
) -> Result<JoinHandle<()>, VcpuError> {
    let index = vcpu.index;
    std::thread::Builder::new()
        .name(format!("zygote-vcpu{index}"))
        .spawn(move || run(vcpu, &buses, &control))
        .map_err(|source| VcpuError::Spawn { index, source })
}

fn run(mut vcpu: Vcpu, buses: &Buses, control: &VmControl) {
    let index = vcpu.index;
    control.register(
        usize::from(index),
        Kick::for_current_thread(vcpu.fd.get_kvm_run()),
    );
    // Declared after `vcpu`, so it is dropped first: the kick goes away before the run page
    // is unmapped, on a normal return and on a panic alike.
    let _registered = Registered { control, index };
    while let Next::Run = control.next() {
        if let Some(reason) = run_once(&mut vcpu, buses) {
            control.finish(reason);
        }
    }
}

/// Unregisters a vCPU thread's kick when the thread ends, and stops the VM with a host error
/// if it ends by panicking (a panicking device or console writer).
struct Registered<'a> {
    control: &'a VmControl,
    index: u8,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.control.unregister(usize::from(self.index));
        if std::thread::panicking() {
            let index = self.index;
            let error = VcpuError::Panicked { index };
            self.control.finish(ExitReason::HostError(Arc::new(error)));
        }
    }
}

/// Runs the guest until its next exit and handles it; returns a reason if the VM must stop.
fn run_once(vcpu: &mut Vcpu, buses: &Buses) -> Option<ExitReason> {
    let index = vcpu.index;
    let exit = match vcpu.fd.run() {
        Ok(exit) => exit,
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            // A kick: clear the flag and let the caller look at the run state.
            vcpu.fd.set_kvm_immediate_exit(0);
            return None;
        }
        Err(source) => {
            return Some(ExitReason::HostError(Arc::new(VcpuError::Run {
                index,
                source,
            })));
        }
    };
    match exit {
        VcpuExit::IoIn(port, data) => {
            if buses.pio.read(u64::from(port), data).is_err() {
                // Nothing there: an ISA bus floats high.
                data.fill(0xff);
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            // Writes to unclaimed ports are dropped, as on real hardware.
            let _ = buses.pio.write(u64::from(port), data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if buses.mmio.read(addr, data).is_err() {
                data.fill(0xff);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            let _ = buses.mmio.write(addr, data);
            None
        }
        VcpuExit::Intr => None,
        VcpuExit::InternalError => Some(internal_error(vcpu)),
        VcpuExit::Shutdown => Some(triple_fault(vcpu)),
        other => match stop_reason(index, other) {
            Some(reason) => Some(reason),
            None => Some(unexpected_exit(vcpu)),
        },
    }
}

/// Maps an exit that ends the VM to its reason; `None` for exits the VMM does not know.
fn stop_reason(index: u8, exit: VcpuExit<'_>) -> Option<ExitReason> {
    Some(match exit {
        VcpuExit::Hlt => ExitReason::PowerOff,
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
            KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
            KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestFault(GuestFault::Crash),
            kind => host_error(VcpuError::UnexpectedSystemEvent { index, kind }),
        },
        VcpuExit::FailEntry(reason, _) => {
            ExitReason::GuestFault(GuestFault::EntryFailure { reason })
        }
        _ => return None,
    })
}

/// An exit the VMM does not handle, named by KVM's raw exit reason.
fn unexpected_exit(vcpu: &mut Vcpu) -> ExitReason {
    let exit_reason = vcpu.fd.get_kvm_run().exit_reason;
    host_error(VcpuError::UnexpectedExit {
        index: vcpu.index,
        exit_reason,
    })
}

fn host_error(error: VcpuError) -> ExitReason {
    ExitReason::HostError(Arc::new(error))
}

/// A triple fault, with what KVM still knows of the CPU state (zeros if it cannot say).
fn triple_fault(vcpu: &Vcpu) -> ExitReason {
    let regs = vcpu.fd.get_regs().unwrap_or_default();
    let exception = vcpu
        .fd
        .get_vcpu_events()
        .ok()
        .filter(|events| events.exception.injected != 0 || events.exception.pending != 0)
        .map(|events| events.exception.nr);
    ExitReason::GuestFault(GuestFault::TripleFault {
        rip: regs.rip,
        rsp: regs.rsp,
        exception,
    })
}

/// A `KVM_EXIT_INTERNAL_ERROR`, with everything KVM reports in `kvm_run.internal`.
fn internal_error(vcpu: &mut Vcpu) -> ExitReason {
    let run = vcpu.fd.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is the union member KVM
    // filled in; it is plain integers, valid for any bit pattern.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    ExitReason::GuestFault(GuestFault::InternalError {
        suberror: internal.suberror,
        ndata: internal.ndata,
        data: internal.data,
    })
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_run;

    use super::*;

    #[test]
    fn a_panicking_vcpu_thread_unregisters_and_stops_the_vm() {
        let control = Arc::new(VmControl::new(1));
        let thread_control = control.clone();
        let thread = std::thread::spawn(move || {
            let mut run = Box::new(kvm_run::default());
            thread_control.register(0, Kick::for_current_thread(&mut run));
            let _registered = Registered {
                control: &thread_control,
                index: 0,
            };
            panic!("a device bug");
        });
        assert!(thread.join().is_err());
        assert_eq!(
            control.registered_kicks(),
            0,
            "no kick left pointing at a dead thread"
        );
        let reason = control.exit_reason();
        assert!(
            matches!(&reason, Some(ExitReason::HostError(e))
                if matches!(e.downcast_ref(), Some(VcpuError::Panicked { index: 0 }))),
            "{reason:?}"
        );
    }
}
