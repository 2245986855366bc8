//! Why Zygote tears VMs down on a background thread: times closing a KVM VM (with one vCPU)
//! with and without an in-kernel irqchip, and dropping a Zygote VM.
//!
//! Run: `cargo run --release -p zygote-benches --example vm_drop`
//! Seen here (PVM): without irqchip about 0.2 ms, with it about 20 ms; a Zygote VM's drop
//! returns in well under a millisecond because the teardown runs on its own thread.

use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;
use zygote_guest::Workload;

fn raw_close(kvm: &Kvm, irqchip: bool) -> Duration {
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    if irqchip {
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    }
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let start = Instant::now();
    drop(vcpu);
    drop(vm);
    start.elapsed()
}

fn zygote_drop() -> Duration {
    let vm = zygote_examples::guest(&Workload::Ready, 128)
        .build()
        .expect("build");
    let start = Instant::now();
    drop(vm);
    start.elapsed()
}

fn main() {
    let kvm = Kvm::new().expect("open /dev/kvm");
    for round in 0..3 {
        println!(
            "round {round}: close_us={} close_with_irqchip_us={} zygote_drop_us={}",
            raw_close(&kvm, false).as_micros(),
            raw_close(&kvm, true).as_micros(),
            zygote_drop().as_micros(),
        );
        // Let the background teardown finish before the next round.
        std::thread::sleep(Duration::from_millis(50));
    }
}
