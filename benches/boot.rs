//! Build + boot to the guest's ready line: what a user waits for before a fresh VM is usable.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use zygote::{ConsoleBuffer, SerialOutput};
use zygote_guest::{Workload, READY_LINE};

fn boot_to_ready() -> Duration {
    let console = ConsoleBuffer::new();
    let start = Instant::now();
    let vm = zygote_examples::guest(&Workload::Ready, 128)
        .serial_output(SerialOutput::Buffer(console.clone()))
        .build()
        .expect("build");
    let mut running = vm.start().expect("start");
    assert!(
        console.wait_for(READY_LINE, Duration::from_secs(60)),
        "ready line"
    );
    let elapsed = start.elapsed();
    running.wait().expect("wait");
    elapsed
}

fn boot(c: &mut Criterion) {
    c.bench_function("boot", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| boot_to_ready()).sum())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(10));
    targets = boot
}
criterion_main!(benches);
