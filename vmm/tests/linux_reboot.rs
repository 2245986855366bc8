//! The Linux guest's `reboot -f`, run through the agent, ends the VM with `ExitReason::Reset`
//! (the i8042 reset line, `reboot=k`). Its own binary: it ends the VM it boots.

mod common;

use zygote::sandbox::Command;
use zygote::ExitReason;

#[test]
fn reboot_in_the_guest_ends_the_vm_with_reset() {
    let mut guest = common::linux::boot("linux-reboot");
    eprintln!("boot to agent ready: {:?}", guest.boot_to_agent);
    // Held until the VM stops: dropping the stream would have the agent kill `reboot` before
    // it gets to the reboot system call. The reboot cuts the agent's answers short; the exit
    // reason is what counts.
    let _running = guest.sandbox.spawn(&Command::new("reboot").arg("-f"));
    let reason = common::linux::wait_exit(&mut guest);
    assert!(
        matches!(reason, ExitReason::Reset),
        "{reason:?}; console:\n{}",
        guest.console.text()
    );
}
