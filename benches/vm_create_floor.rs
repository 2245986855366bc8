//! VM creation: the raw kvm-ioctls floor (create VM + memory slot + vCPU + register state)
//! beside Zygote's `VmBuilder::build()` for the same memory size, so their ratio is Zygote's
//! own overhead (in-kernel irqchip and PIT, MSRs, LAPIC, devices, kernel and boot data loaded).
//! Both time creation only: the VMs are dropped outside the measurement (see the `vm_drop`
//! example for what dropping costs).

use criterion::{criterion_group, criterion_main, Criterion};
use zygote_guest::Workload;

const MEMORY_MIB: u64 = 128;

fn vm_create(c: &mut Criterion) {
    let mut group = c.benchmark_group("vm_create");
    group.bench_function("floor", |b| {
        b.iter_with_large_drop(|| {
            zygote_benches::create_vm((MEMORY_MIB << 20) as usize).expect("floor VM")
        })
    });
    group.bench_function("zygote", |b| {
        b.iter_with_large_drop(|| {
            zygote_examples::guest(&Workload::Ready, MEMORY_MIB)
                .build()
                .expect("zygote VM")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = vm_create
}
criterion_main!(benches);
