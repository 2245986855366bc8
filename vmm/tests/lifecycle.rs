//! Lifecycle on real KVM: shutting down a spinning guest, pause and resume, and states.

mod common;

use std::time::{Duration, Instant};

use common::{start, GUEST_TIMEOUT};
use zygote::{Error, ExitReason, VmState};
use zygote_guest::{Workload, READY_LINE};

#[test]
fn a_spinning_guest_is_shut_down_promptly() {
    let (mut vm, console) = start(&Workload::Spin);
    assert!(console.wait_for(READY_LINE, GUEST_TIMEOUT));
    assert!(
        vm.wait_timeout(Duration::from_millis(200)).is_none(),
        "still spinning"
    );
    let asked = Instant::now();
    let exit = vm.shutdown().unwrap();
    assert!(matches!(exit, ExitReason::Shutdown), "{exit:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!(vm.state(), VmState::Stopped);
}

#[test]
fn pause_and_resume_a_running_guest() {
    let parent = common::agent_vm("pause-resume", common::AgentOpts::default());
    let vm = &parent.vm;
    let mut agent =
        zygote::agent::AgentClient::connect(&parent.uds, zygote::agent::AGENT_PORT, GUEST_TIMEOUT)
            .unwrap();
    assert_eq!(agent.counter_add(1).unwrap(), 1);
    vm.pause().unwrap();
    assert_eq!(vm.state(), VmState::Paused);
    assert!(matches!(
        vm.pause(),
        Err(Error::InvalidState {
            op: "pause",
            state: VmState::Paused
        })
    ));
    vm.resume().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    assert!(matches!(
        vm.resume(),
        Err(Error::InvalidState { op: "resume", .. })
    ));
    // The vCPU really went back into the guest: only a running agent answers and changes its
    // counter. And the VM pauses and resumes again.
    assert_eq!(agent.counter_add(1).unwrap(), 2);
    vm.pause().unwrap();
    vm.resume().unwrap();
    assert_eq!(agent.counter_get().unwrap(), 2);
}

#[test]
fn a_paused_guest_can_be_shut_down() {
    let (mut vm, console) = start(&Workload::Spin);
    assert!(console.wait_for(READY_LINE, GUEST_TIMEOUT));
    vm.pause().unwrap();
    assert!(matches!(vm.shutdown().unwrap(), ExitReason::Shutdown));
}

#[test]
fn a_stopped_vm_cannot_be_paused_and_keeps_its_exit_reason() {
    let (mut vm, console) = start(&Workload::Exit(9));
    let exit = common::wait_exit(&mut vm, &console);
    assert_eq!(exit.exit_code(), Some(9));
    assert!(matches!(
        vm.pause(),
        Err(Error::InvalidState {
            state: VmState::Stopped,
            ..
        })
    ));
    // A timeout too large for a deadline waits forever, and the VM has already stopped.
    assert_eq!(
        vm.wait_timeout(Duration::MAX).and_then(|e| e.exit_code()),
        Some(9)
    );
    // Shutting down a VM that already exited reports how it ended.
    assert_eq!(vm.shutdown().unwrap().exit_code(), Some(9));
}

#[test]
fn dropping_a_running_vm_stops_it() {
    let (vm, console) = start(&Workload::Spin);
    assert!(console.wait_for(READY_LINE, GUEST_TIMEOUT));
    let asked = Instant::now();
    drop(vm);
    assert!(asked.elapsed() < Duration::from_secs(10));
}

/// A console writer that never returns, like a pipe nobody reads.
struct Stuck;

impl std::io::Write for Stuck {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        loop {
            std::thread::park();
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_stuck_console_writer_never_holds_up_the_guest() {
    let mut vm = common::builder(&Workload::Exit(4))
        .serial_writer(Stuck)
        .build()
        .unwrap()
        .start()
        .unwrap();
    let exit = vm.wait_timeout(GUEST_TIMEOUT).expect("the guest exits");
    assert_eq!(exit.exit_code(), Some(4));
    let asked = Instant::now();
    vm.shutdown().unwrap();
    drop(vm);
    assert!(asked.elapsed() < Duration::from_secs(10));

    // The same through a buffer that echoes to a stuck writer: the buffer still fills.
    let echoing = zygote::ConsoleBuffer::with_echo(Box::new(Stuck));
    let mut vm = common::builder(&Workload::Ready)
        .serial_output(zygote::SerialOutput::Buffer(echoing.clone()))
        .build()
        .unwrap()
        .start()
        .unwrap();
    assert!(echoing.wait_for(READY_LINE, GUEST_TIMEOUT));
    assert_eq!(vm.wait().unwrap().exit_code(), Some(0));
}

#[test]
fn the_serial_input_thread_stops_with_the_vm() {
    use std::io::Read;
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let (vm, console) = common::start_with(common::builder(&Workload::Spin).serial_input(theirs));
    assert!(console.wait_for(READY_LINE, GUEST_TIMEOUT));
    // Nothing is ever written: the pump waits on an idle source, and must still stop.
    drop(vm);
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        ours.read(&mut byte).unwrap(),
        0,
        "the VM let go of its input"
    );
}
