//! Device benchmarks through the guest agent: vsock round trip (beside a floor of the same
//! request/response over a plain Unix socket pair) and throughput, virtio-blk 4 KiB random and
//! 128 KiB sequential reads, and virtio-net frames per second on the in-process backend.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zygote::agent::AgentClient;
use zygote::VsockConfig;
use zygote::{BlockConfig, ConsoleBuffer, NetConfig, PacketEndpoint, RunningVm, SerialOutput};
use zygote_guest::{Workload, READY_LINE};

const DISK_SECTORS: u64 = (64 << 20) / 512;

struct Guest {
    vm: RunningVm,
    agent: AgentClient,
    endpoint: PacketEndpoint,
    dir: std::path::PathBuf,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.vm.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn guest() -> Guest {
    let dir = std::env::temp_dir().join(format!("zygote-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0x5a; 64 << 20]).unwrap();
    let (net, endpoint) = NetConfig::packet().unwrap();
    let console = ConsoleBuffer::new();
    let vm = zygote_examples::guest(&Workload::Agent, 256)
        .block(BlockConfig::new(&disk).read_only())
        .net(net)
        .vsock(VsockConfig {
            guest_cid: 3,
            uds_path: dir.join("vsock"),
        })
        .serial_output(SerialOutput::Buffer(console.clone()))
        .build()
        .unwrap()
        .start()
        .unwrap();
    assert!(console.wait_for(READY_LINE, Duration::from_secs(60)));
    let agent = vm.agent().unwrap();
    Guest {
        vm,
        agent,
        endpoint,
        dir,
    }
}

/// The floor for an agent round trip: the same frames echoed by a thread over a Unix socket
/// pair, with no VM in between.
fn uds_echo_pair() -> UnixStream {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 6];
        while theirs.read_exact(&mut buf).is_ok() {
            if theirs.write_all(&buf).is_err() {
                break;
            }
        }
    });
    ours
}

fn vsock(c: &mut Criterion, guest: &mut Guest) {
    let mut group = c.benchmark_group("vsock");
    let mut floor = uds_echo_pair();
    let ping = [2u8, 0, 0, 0, 1, 0];
    group.bench_function("rtt_floor_uds", |b| {
        b.iter(|| {
            let mut back = [0u8; 6];
            floor.write_all(&ping).unwrap();
            floor.read_exact(&mut back).unwrap();
        })
    });
    group.bench_function("rtt", |b| b.iter(|| guest.agent.ping().unwrap()));
    let data = vec![0x33u8; 8 << 20];
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("throughput_8mib", |b| {
        b.iter(|| guest.agent.sink(&data).unwrap())
    });
    group.finish();
}

fn blk(c: &mut Criterion, guest: &mut Guest) {
    let mut group = c.benchmark_group("blk");
    group.throughput(Throughput::Bytes(4096));
    let mut sector = 0u64;
    group.bench_function("read_4k_random", |b| {
        b.iter(|| {
            // A multiplicative walk over the disk in 4 KiB steps.
            sector = (sector
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407))
                % (DISK_SECTORS / 8);
            guest.agent.disk_read(sector * 8, 8).unwrap()
        })
    });
    group.throughput(Throughput::Bytes(128 << 10));
    let mut next = 0u64;
    group.bench_function("read_seq_128k", |b| {
        b.iter(|| {
            let data = guest.agent.disk_read(next, 256).unwrap();
            next = (next + 256) % DISK_SECTORS;
            data
        })
    });
    group.finish();
}

fn net(c: &mut Criterion, guest: &mut Guest) {
    let mut group = c.benchmark_group("net");
    group.throughput(Throughput::Elements(1));
    let frame: Vec<u8> = (0..1514).map(|i| i as u8).collect();
    let mut buf = vec![0u8; 2048];
    group.bench_function("guest_to_host_frame", |b| {
        b.iter(|| {
            guest.agent.net_send(&frame).unwrap();
            guest
                .endpoint
                .recv(&mut buf, Duration::from_secs(5))
                .unwrap()
                .unwrap()
        })
    });
    group.bench_function("host_to_guest_frame", |b| {
        b.iter(|| {
            guest.endpoint.send(&frame).unwrap();
            guest.agent.net_recv(5000).unwrap().unwrap()
        })
    });
    group.finish();
}

fn devices(c: &mut Criterion) {
    let mut guest = guest();
    vsock(c, &mut guest);
    blk(c, &mut guest);
    net(c, &mut guest);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = devices
}
criterion_main!(benches);
