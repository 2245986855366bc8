//! Boots Zygote's guest kernel, echoes its console, and prints how long that took:
//! `boot_to_ready_us` from the start of `build()` to the guest's ready line on the console,
//! `vm_create_us` for `build()` alone (KVM VM, memory, devices, vCPU, kernel loaded).
//!
//! Run: `cargo run --release --example boot`

use std::error::Error;
use std::time::{Duration, Instant};

use zygote::{ConsoleBuffer, SerialOutput};
use zygote_guest::{Workload, READY_LINE};

fn main() -> Result<(), Box<dyn Error>> {
    let console = ConsoleBuffer::with_echo(Box::new(std::io::stdout()));
    let start = Instant::now();
    let vm = zygote_examples::guest(&Workload::Ready, 128)
        .serial_output(SerialOutput::Buffer(console.clone()))
        .build()?;
    let vm_create = start.elapsed();
    let mut running = vm.start()?;
    if !console.wait_for(READY_LINE, Duration::from_secs(60)) {
        running.shutdown()?;
        return Err("the guest did not print its ready line within 60 s".into());
    }
    let boot_to_ready = start.elapsed();
    let exit = running.wait()?;
    if exit.exit_code() != Some(0) {
        return Err(format!("the guest stopped with {exit:?}").into());
    }
    println!(
        "boot_to_ready_us={} vm_create_us={}",
        boot_to_ready.as_micros(),
        vm_create.as_micros()
    );
    Ok(())
}
