//! Why Zygote registers guest memory before creating the in-kernel irqchip: times
//! `KVM_SET_USER_MEMORY_REGION` for 128 MiB done before and after `KVM_CREATE_IRQCHIP`.
//!
//! Run: `cargo run --release -p zygote-benches --example memslot_order`
//! Seen here (PVM): before about 65 µs, after about 7.8 ms.

use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VmFd};

const SIZE: usize = 128 << 20;

fn timed_region(vm: &VmFd, memory: &zygote_benches::SharedMemory) -> Duration {
    let start = Instant::now();
    memory.register(vm, 0).expect("KVM_SET_USER_MEMORY_REGION");
    start.elapsed()
}

fn main() {
    let kvm = Kvm::new().expect("open /dev/kvm");
    for round in 0..3 {
        let memory = zygote_benches::SharedMemory::new(SIZE).expect("guest memory");
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        let before = timed_region(&vm, &memory);
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        drop(vm);

        let memory = zygote_benches::SharedMemory::new(SIZE).expect("guest memory");
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        let after = timed_region(&vm, &memory);
        println!(
            "round {round}: region_before_irqchip_us={} region_after_irqchip_us={}",
            before.as_micros(),
            after.as_micros()
        );
    }
}
