//! Pulling a vCPU thread out of `KVM_RUN`: set `immediate_exit` in its `kvm_run` page, then
//! signal the thread. The flag covers the window in which the signal arrives just before the
//! thread enters `KVM_RUN`; the signal covers a thread already inside it.

use std::ptr::NonNull;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Offset from `SIGRTMIN` of the signal used to kick vCPU threads.
pub const KICK_SIGNAL_OFFSET: i32 = 0;

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for the kick signal, so the signal interrupts `KVM_RUN`
/// instead of killing the process. Installing it again is harmless.
pub fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(SIGRTMIN() + KICK_SIGNAL_OFFSET, noop_handler)
}

/// A handle that kicks one vCPU thread out of `KVM_RUN`.
pub struct Kick {
    thread: libc::pthread_t,
    /// The kernel's id of the same thread (`/proc/self/task/<tid>`).
    tid: u32,
    run: NonNull<kvm_run>,
}

// SAFETY: the pointer is only dereferenced in `kick`, which `VmControl` calls under its lock
// and only while the vCPU thread is registered; the thread unregisters (under the same lock)
// before its `kvm_run` mapping is unmapped or the thread exits.
unsafe impl Send for Kick {}

impl Kick {
    /// A kick for the calling thread, whose vCPU maps its run structure at `run`.
    pub fn for_current_thread(run: &mut kvm_run) -> Self {
        Self {
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() },
            // SAFETY: gettid has no preconditions; a thread id is positive.
            tid: unsafe { libc::gettid() } as u32,
            run: NonNull::from(run),
        }
    }

    /// The Linux thread id of the vCPU thread.
    pub fn thread_id(&self) -> u32 {
        self.tid
    }

    /// Makes the vCPU's current or next `KVM_RUN` return with `EINTR`.
    pub fn kick(&self) {
        // SAFETY: the run page is mapped while the kick is registered (see `Send` above). A
        // volatile byte store is how KVM's documentation has userspace set this flag.
        unsafe { std::ptr::addr_of_mut!((*self.run.as_ptr()).immediate_exit).write_volatile(1) };
        // SAFETY: the thread is alive while its kick is registered.
        unsafe { libc::pthread_kill(self.thread, SIGRTMIN() + KICK_SIGNAL_OFFSET) };
    }
}
