//! Run-state shared by a VM's handle and its vCPU threads: pause, resume, stop, and the exit
//! reason, with the kicks that pull vCPUs out of `KVM_RUN`.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zygote_devices::{VmRequest, VmRequestSink};

use crate::exit::{ExitReason, GuestFault};
use crate::idle::{Doorbell, IdleWaiter};
use crate::vcpu::Kick;

/// The state of a VM as its owner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// vCPUs are running guest code.
    Running,
    /// vCPUs are parked; guest memory and device state are still.
    Paused,
    /// The VM has stopped (or is stopping); see its exit reason.
    Stopped,
}

/// Why a pause did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PauseError {
    /// The VM was not running.
    State(VmState),
    /// Not every vCPU parked in time; the VM was left running.
    Timeout { parked: usize, alive: usize },
    /// Another caller resumed (or the VM stopped) before every vCPU parked.
    Interrupted(VmState),
}

/// What a vCPU thread should do next.
pub(crate) enum Next {
    Run,
    Stop,
}

struct State {
    run: VmState,
    vcpus_alive: usize,
    vcpus_parked: usize,
    kicks: Vec<Option<Kick>>,
    exit: Option<ExitReason>,
}

/// Run-state shared between a VM handle, its vCPU threads and its devices.
pub(crate) struct VmControl {
    state: Mutex<State>,
    changed: Condvar,
    /// Rung with every kick, so a vCPU sleeping on the idle port wakes for it too.
    doorbell: Arc<Doorbell>,
}

/// How long `pause` waits for every vCPU to park before reporting failure.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a pause re-sends its kick while waiting.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

impl VmControl {
    /// Control for `vcpus` vCPUs whose idle waits end on `doorbell`.
    pub(crate) fn new(vcpus: usize, doorbell: Arc<Doorbell>) -> Self {
        Self {
            state: Mutex::new(State {
                run: VmState::Running,
                vcpus_alive: 0,
                vcpus_parked: 0,
                kicks: (0..vcpus).map(|_| None).collect(),
                exit: None,
            }),
            changed: Condvar::new(),
            doorbell,
        }
    }

    /// The idle-port side of the doorbell for one vCPU thread.
    pub(crate) fn idle_waiter(&self) -> IdleWaiter {
        self.doorbell.waiter()
    }

    /// Pulls every registered vCPU out of `KVM_RUN` and out of an idle wait.
    fn kick_all(&self, state: &State) {
        for kick in state.kicks.iter().flatten() {
            kick.kick();
        }
        self.doorbell.ring();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        match self.changed.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    /// Called by vCPU thread `index` when it starts: makes it kickable.
    pub(crate) fn register(&self, index: usize, kick: Kick) {
        let mut state = self.lock();
        state.vcpus_alive += 1;
        state.kicks[index] = Some(kick);
        if state.run == VmState::Stopped {
            self.kick_all(&state);
        }
    }

    /// Called by vCPU thread `index` as it ends, before its `kvm_run` mapping goes away.
    pub(crate) fn unregister(&self, index: usize) {
        let mut state = self.lock();
        state.kicks[index] = None;
        state.vcpus_alive -= 1;
        drop(state);
        self.changed.notify_all();
    }

    /// Called by a vCPU thread before each `KVM_RUN`: parks while paused. Before it parks it
    /// calls `before_park` once, without the lock held (to complete a pending I/O exit).
    pub(crate) fn next(&self, before_park: &mut dyn FnMut()) -> Next {
        let mut state = self.lock();
        let mut prepared = false;
        let mut parked = false;
        loop {
            match state.run {
                VmState::Running => break,
                VmState::Stopped => break,
                VmState::Paused => {
                    if !prepared {
                        prepared = true;
                        drop(state);
                        before_park();
                        state = self.lock();
                        continue;
                    }
                    if !parked {
                        parked = true;
                        state.vcpus_parked += 1;
                        self.changed.notify_all();
                    }
                    state = self.wait(state, Duration::from_secs(1));
                }
            }
        }
        if parked {
            state.vcpus_parked -= 1;
        }
        match state.run {
            VmState::Stopped => Next::Stop,
            _ => Next::Run,
        }
    }

    /// Stops the VM with `reason`, unless it already stopped with another.
    pub(crate) fn finish(&self, reason: ExitReason) {
        let mut state = self.lock();
        if state.exit.is_none() {
            state.exit = Some(reason);
        }
        state.run = VmState::Stopped;
        self.kick_all(&state);
        drop(state);
        self.changed.notify_all();
    }

    /// The Linux thread ids of the vCPU threads running now, in vCPU order.
    pub(crate) fn thread_ids(&self) -> Vec<u32> {
        self.lock()
            .kicks
            .iter()
            .flatten()
            .map(|kick| kick.thread_id())
            .collect()
    }

    /// How many vCPU threads are registered for kicks.
    #[cfg(test)]
    pub(crate) fn registered_kicks(&self) -> usize {
        self.lock().kicks.iter().flatten().count()
    }

    pub(crate) fn state(&self) -> VmState {
        self.lock().run
    }

    pub(crate) fn exit_reason(&self) -> Option<ExitReason> {
        self.lock().exit.clone()
    }

    /// Parks every vCPU and returns once all are parked.
    pub(crate) fn pause(&self) -> Result<(), PauseError> {
        let mut state = self.lock();
        if state.run != VmState::Running {
            return Err(PauseError::State(state.run));
        }
        state.run = VmState::Paused;
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        while state.run == VmState::Paused && state.vcpus_parked < state.vcpus_alive {
            if Instant::now() >= deadline {
                // A vCPU is stuck outside KVM_RUN (in a device): go back to running, so the
                // caller never believes a guest is still when it is not.
                let (parked, alive) = (state.vcpus_parked, state.vcpus_alive);
                state.run = VmState::Running;
                drop(state);
                self.changed.notify_all();
                return Err(PauseError::Timeout { parked, alive });
            }
            self.kick_all(&state);
            state = self.wait(state, KICK_INTERVAL);
        }
        match state.run {
            VmState::Paused => Ok(()),
            other => Err(PauseError::Interrupted(other)),
        }
    }

    /// Lets parked vCPUs run again. Returns the state found if the VM was not paused.
    pub(crate) fn resume(&self) -> Result<(), VmState> {
        let mut state = self.lock();
        if state.run != VmState::Paused {
            return Err(state.run);
        }
        state.run = VmState::Running;
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// Waits until the VM stops or `timeout` passes; returns the exit reason if it stopped.
    pub(crate) fn wait_exit(&self, timeout: Duration) -> Option<ExitReason> {
        // A deadline past what `Instant` can hold is no deadline at all.
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            return Some(self.wait_exit_forever());
        };
        let mut state = self.lock();
        loop {
            if let Some(exit) = &state.exit {
                return Some(exit.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self.wait(state, left);
        }
    }

    /// Waits until the VM stops and returns why.
    pub(crate) fn wait_exit_forever(&self) -> ExitReason {
        let mut state = self.lock();
        loop {
            if let Some(exit) = &state.exit {
                return exit.clone();
            }
            state = self.wait(state, Duration::from_secs(1));
        }
    }
}

impl VmRequestSink for VmControl {
    fn request(&self, request: VmRequest) {
        let reason = match request {
            VmRequest::Exit(code) => ExitReason::Exited(code),
            VmRequest::Fault(vector) => ExitReason::GuestFault(GuestFault::Exception { vector }),
            VmRequest::Reset => ExitReason::Reset,
        };
        self.finish(reason);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kvm_bindings::kvm_run;

    use super::*;
    use crate::idle::Wake;

    /// A vCPU thread whose guest does nothing but sleep on the idle port for an hour at a time;
    /// returns why each sleep ended.
    fn sleepy_vcpu(control: Arc<VmControl>) -> std::thread::JoinHandle<Vec<Wake>> {
        crate::vcpu::install_kick_handler().unwrap();
        std::thread::spawn(move || {
            let mut run = Box::new(kvm_run::default());
            control.register(0, Kick::for_current_thread(&mut run));
            let mut idle = control.idle_waiter();
            let mut wakes = Vec::new();
            while let Next::Run = control.next(&mut || {}) {
                wakes.push(idle.wait(Duration::from_secs(3600)));
            }
            control.unregister(0);
            wakes
        })
    }

    #[test]
    fn pause_and_stop_wake_a_vcpu_sleeping_on_the_idle_port() {
        let doorbell = Arc::new(Doorbell::default());
        let control = Arc::new(VmControl::new(1, doorbell.clone()));
        let vcpu = sleepy_vcpu(control.clone());
        let asleep = || {
            while doorbell.sleepers() == 0 {
                std::thread::yield_now();
            }
        };
        for _ in 0..3 {
            asleep();
            control.pause().expect("the sleeping vCPU parks");
            control.resume().unwrap();
        }
        asleep();
        control.finish(ExitReason::Shutdown);
        let wakes = vcpu.join().unwrap();
        assert!(wakes.iter().all(|&wake| wake == Wake::Rung), "{wakes:?}");
    }

    /// A vCPU thread that registers and then never comes back to `next()` (stuck in a device).
    fn stuck_vcpu(control: &Arc<VmControl>) -> Box<kvm_run> {
        let mut run = Box::new(kvm_run::default());
        control.register(0, Kick::for_current_thread(&mut run));
        run
    }

    #[test]
    fn a_pause_cut_short_by_a_stop_says_so_instead_of_blaming_the_state() {
        crate::vcpu::install_kick_handler().unwrap();
        let control = Arc::new(VmControl::new(1, Arc::new(Doorbell::default())));
        let _run = stuck_vcpu(&control);
        let stopper = control.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            stopper.finish(ExitReason::Shutdown);
        });
        assert_eq!(
            control.pause(),
            Err(PauseError::Interrupted(VmState::Stopped))
        );
        thread.join().unwrap();
        control.unregister(0);
    }

    #[test]
    fn a_pause_cut_short_by_a_resume_says_so() {
        crate::vcpu::install_kick_handler().unwrap();
        let control = Arc::new(VmControl::new(1, Arc::new(Doorbell::default())));
        let _run = stuck_vcpu(&control);
        let resumer = control.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            resumer.resume().unwrap();
        });
        assert_eq!(
            control.pause(),
            Err(PauseError::Interrupted(VmState::Running))
        );
        thread.join().unwrap();
        control.unregister(0);
    }
}
