//! The vCPU thread: run the guest, dispatch its exits, obey pause and stop.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuExit;
use zygote_devices::Bus;

use super::{pio, Kick, Vcpu, VcpuError};
use crate::control::{Next, VmControl};
use crate::exit::{ExitReason, GuestFault};
use crate::idle::{IdleWaiter, IDLE_PORT};

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// The buses a vCPU dispatches its I/O exits to.
#[derive(Clone)]
pub(crate) struct Buses {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
}

/// A vCPU shared between its thread, which holds the lock while in `KVM_RUN` and handling
/// the exit, and the VM handle, which takes it only while the vCPU is parked (to read or set
/// its state).
pub(crate) type SharedVcpu = Arc<Mutex<Vcpu>>;

/// Locks a shared vCPU; a thread that panicked while holding it left nothing half-written
/// that matters (the fd itself holds the state).
pub(crate) fn lock(vcpu: &SharedVcpu) -> MutexGuard<'_, Vcpu> {
    vcpu.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the thread that runs `vcpu` until the VM stops.
pub(crate) fn spawn(
    vcpu: SharedVcpu,
    buses: Buses,
    control: Arc<VmControl>,
) -> Result<JoinHandle<()>, VcpuError> {
    let index = lock(&vcpu).index;
    std::thread::Builder::new()
        .name(format!("zygote-vcpu{index}"))
        .spawn(move || run(&vcpu, &buses, &control))
        .map_err(|source| VcpuError::Spawn { index, source })
}

fn run(vcpu: &SharedVcpu, buses: &Buses, control: &VmControl) {
    let (index, kick) = {
        let mut guard = lock(vcpu);
        let kick = Kick::for_current_thread(guard.fd.get_kvm_run());
        (guard.index, kick)
    };
    control.register(usize::from(index), kick);
    // The kick goes away when this guard drops, on a normal return and on a panic alike; the
    // run page it points into lives as long as the shared vCPU.
    let _registered = Registered { control, index };
    let mut before_park = || complete_pending_io(&mut lock(vcpu));
    let mut idle = control.idle_waiter();
    while let Next::Run = control.next(&mut before_park) {
        if let Some(reason) = run_once(&mut lock(vcpu), buses, &mut idle) {
            control.finish(reason);
        }
    }
}

/// Finishes an I/O exit the guest has not seen the end of. KVM completes a PIO or MMIO exit
/// (stores the data read, advances RIP) only on the next `KVM_RUN`; entering once with
/// `immediate_exit` set does that and returns at once with `EINTR`, so the vCPU's saved
/// registers never hold a half-done instruction (KVM API, `KVM_RUN` and `immediate_exit`).
fn complete_pending_io(vcpu: &mut Vcpu) {
    if !std::mem::take(&mut vcpu.io_pending) {
        return;
    }
    vcpu.fd.set_kvm_immediate_exit(1);
    // The expected result is EINTR; an exit here would be a KVM bug, and any error shows up
    // again on the next real run.
    let _ = vcpu.fd.run();
    vcpu.fd.set_kvm_immediate_exit(0);
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
fn run_once(vcpu: &mut Vcpu, buses: &Buses, idle: &mut IdleWaiter) -> Option<ExitReason> {
    let index = vcpu.index;
    // Taken before KVM_RUN lends out the run page's data area: how a port exit's element size
    // is read while its data is borrowed.
    let run_page = NonNull::from(vcpu.fd.get_kvm_run());
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
    vcpu.io_pending = matches!(
        exit,
        VcpuExit::IoIn(..) | VcpuExit::IoOut(..) | VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..)
    );
    match exit {
        // `data` holds `count` elements (string I/O): one access per element.
        VcpuExit::IoIn(port, data) => {
            pio::read(&buses.pio, port, io_size(run_page), data);
            None
        }
        VcpuExit::IoOut(IDLE_PORT, data) => {
            idle.idle(data);
            None
        }
        VcpuExit::IoOut(port, data) => {
            pio::write(&buses.pio, port, io_size(run_page), data);
            None
        }
        // One access of at most 8 bytes: KVM never batches MMIO.
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

/// `kvm_run.io.size` of the port exit just taken: the bytes in one element (1, 2 or 4).
fn io_size(run: NonNull<kvm_run>) -> usize {
    // SAFETY: `run` points at this vCPU's `kvm_run` mapping, which lives as long as its fd, and
    // the last exit was KVM_EXIT_IO, so `io` is the union member KVM filled in. The byte read
    // is not covered by the borrow the exit holds (the data area at `io.data_offset`, past the
    // structure), and only this thread and KVM, which is not running it, touch `io`.
    let size = unsafe { std::ptr::addr_of!((*run.as_ptr()).__bindgen_anon_1.io.size).read() };
    usize::from(size)
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
        data: std::array::from_fn(|i| internal.data[i]),
    })
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_run;

    use super::*;

    #[test]
    fn a_panicking_vcpu_thread_unregisters_and_stops_the_vm() {
        let doorbell = Arc::new(crate::idle::Doorbell::default());
        let control = Arc::new(VmControl::new(1, doorbell));
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
