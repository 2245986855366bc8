//! Snapshots on disk with Zygote's guest (agent workload, all three devices): counter, memory
//! checksum and disk contents come back identical through every engine and format.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{agent_vm, disk_image, temp_path, AgentOpts, GUEST_TIMEOUT};
use zygote::agent::{AgentClient, AGENT_PORT};
use zygote::snapshot_format::{EagerEngine, MemoryEngine, MmapEngine, PrefetchEngine, UffdEngine};
use zygote::state::DeviceResources;
use zygote::{
    BlockConfig, ExitReason, MemoryFormat, NetConfig, RestoreConfig, RunningVm, Snapshot, Vm,
    VsockConfig,
};

const MIB: u64 = 1 << 20;

/// What the guest held when it was snapshotted.
struct Expected {
    counter: u64,
    addr: u64,
    sum: u64,
    disk: Vec<u8>,
}

/// Boots the agent with a disk, a NIC and vsock, changes counter, memory and disk, pauses.
fn prepared(name: &str, image: &Path) -> (RunningVm, Expected) {
    let parent = agent_vm(
        name,
        AgentOpts {
            block: Some(BlockConfig::new(image)),
            packet_nic: true,
            ..Default::default()
        },
    );
    let mut agent = AgentClient::connect(&parent.uds, AGENT_PORT, GUEST_TIMEOUT).unwrap();
    agent.counter_add(77).unwrap();
    let (addr, sum) = agent.touch(8, 0x77).unwrap();
    let disk = vec![0x5a; 1024];
    agent.disk_write(10, &disk).unwrap();
    agent.disk_flush().unwrap();
    drop(agent);
    parent.vm.pause().unwrap();
    (
        parent.vm,
        Expected {
            counter: 77,
            addr,
            sum,
            disk,
        },
    )
}

fn resources(image: &Path, uds: &Path) -> DeviceResources {
    let (net, _endpoint) = NetConfig::packet().unwrap();
    DeviceResources {
        blocks: vec![BlockConfig::new(image)],
        nets: vec![net],
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.to_path_buf(),
        }),
    }
}

/// Restores `snapshot` through `engine` and checks the guest is as it was.
fn check_restore(
    snapshot: &Snapshot,
    engine: &mut dyn MemoryEngine,
    image: &Path,
    want: &Expected,
    tag: &str,
) -> RunningVm {
    let uds = temp_path(&format!("restored-{tag}.vsock"));
    let console = zygote::ConsoleBuffer::new();
    let config = RestoreConfig {
        devices: resources(image, &uds),
        serial_output: zygote::SerialOutput::Buffer(console.clone()),
        ..Default::default()
    };
    let vm = Vm::restore_snapshot(snapshot, engine, config)
        .unwrap_or_else(|e| panic!("{tag}: {e}"))
        .start()
        .unwrap();
    let mut agent = AgentClient::connect(&uds, AGENT_PORT, GUEST_TIMEOUT).unwrap();
    let counter = agent.counter_get();
    assert!(
        counter.is_ok(),
        "{tag}: {counter:?}, exit {:?}, console:\n{}",
        vm.exit_reason(),
        console.text()
    );
    assert_eq!(counter.unwrap(), want.counter, "{tag}: counter");
    assert_eq!(
        agent.checksum(want.addr, 8 * MIB).unwrap(),
        want.sum,
        "{tag}: memory"
    );
    assert_eq!(agent.disk_read(10, 2).unwrap(), want.disk, "{tag}: disk");
    vm
}

fn snapshot_dir(name: &str) -> PathBuf {
    let dir = temp_path(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn every_engine_restores_raw_and_compressed_snapshots() {
    let image = disk_image("snap-engines.img", 1 << 20);
    let (vm, want) = prepared("snap-engines", &image);
    let raw_dir = snapshot_dir("snap-raw");
    let zst_dir = snapshot_dir("snap-zst");
    vm.snapshot(&raw_dir, MemoryFormat::Raw).unwrap();
    vm.snapshot(&zst_dir, MemoryFormat::Compressed { level: 1 })
        .unwrap();
    drop(vm);
    let raw = Snapshot::load(&raw_dir).unwrap();
    let zst = Snapshot::load(&zst_dir).unwrap();
    let working_set = temp_path("snap-working-set");
    let _ = std::fs::remove_file(&working_set);
    for (tag, snapshot) in [("raw", &raw), ("zst", &zst)] {
        let mut engines: Vec<(&str, Box<dyn MemoryEngine>)> = vec![
            ("eager", Box::new(EagerEngine::new())),
            ("uffd", Box::new(UffdEngine::new())),
            (
                "prefetch",
                Box::new(PrefetchEngine::new(working_set.clone())),
            ),
        ];
        if tag == "raw" {
            engines.push(("mmap", Box::new(MmapEngine::new())));
        }
        for (name, mut engine) in engines {
            let mut vm = check_restore(
                snapshot,
                engine.as_mut(),
                &image,
                &want,
                &format!("{tag}-{name}"),
            );
            vm.shutdown().unwrap();
        }
    }
}

#[test]
fn mmap_refuses_a_compressed_snapshot_with_a_typed_error() {
    let image = disk_image("snap-mmap-zst.img", 1 << 20);
    let (vm, _) = prepared("snap-mmap-zst", &image);
    let dir = snapshot_dir("snap-mmap-zst-dir");
    vm.snapshot(&dir, MemoryFormat::Compressed { level: 1 })
        .unwrap();
    let snapshot = Snapshot::load(&dir).unwrap();
    let uds = temp_path("snap-mmap-zst-restored.vsock");
    let config = RestoreConfig {
        devices: resources(&image, &uds),
        ..Default::default()
    };
    let err = Vm::restore_snapshot(&snapshot, &mut MmapEngine::new(), config)
        .err()
        .unwrap();
    assert!(matches!(err, zygote::LoadError::Engine(_)), "{err}");
}

#[test]
fn one_snapshot_restored_eight_times_at_once() {
    let image = disk_image("snap-eight.img", 1 << 20);
    let (vm, want) = prepared("snap-eight", &image);
    let dir = snapshot_dir("snap-eight-dir");
    vm.snapshot(&dir, MemoryFormat::Raw).unwrap();
    drop(vm);
    let snapshot = Snapshot::load(&dir).unwrap();
    let vms: Vec<RunningVm> = (0..8)
        .map(|i| {
            let uds = temp_path(&format!("snap-eight-{i}.vsock"));
            let config = RestoreConfig {
                devices: resources(&image, &uds),
                ..Default::default()
            };
            Vm::restore_snapshot(&snapshot, &mut MmapEngine::new(), config)
                .unwrap()
                .start()
                .unwrap()
        })
        .collect();
    for (i, vm) in vms.iter().enumerate() {
        let uds = temp_path(&format!("snap-eight-{i}.vsock"));
        let mut agent = AgentClient::connect(&uds, AGENT_PORT, GUEST_TIMEOUT).unwrap();
        assert_eq!(agent.counter_get().unwrap(), want.counter);
        assert_eq!(agent.checksum(want.addr, 8 * MIB).unwrap(), want.sum);
        // Each restore is its own VM: its writes stay its own.
        agent.counter_add(i as u64).unwrap();
        assert!(vm.exit_reason().is_none());
    }
}

#[test]
fn hibernate_then_resume_lazily() {
    let image = disk_image("snap-hibernate.img", 1 << 20);
    let (vm, want) = prepared("snap-hibernate", &image);
    let dir = snapshot_dir("snap-hibernate-dir");
    vm.hibernate(&dir, MemoryFormat::Raw).unwrap();
    let snapshot = Snapshot::load(&dir).unwrap();
    let mut vm = check_restore(
        &snapshot,
        &mut UffdEngine::new(),
        &image,
        &want,
        "hibernated",
    );
    vm.shutdown().unwrap();
}

#[test]
fn a_memory_file_truncated_under_a_running_restore_stops_that_vm_only() {
    let image = disk_image("snap-trunc.img", 1 << 20);
    let (vm, want) = prepared("snap-trunc", &image);
    let dir = snapshot_dir("snap-trunc-dir");
    vm.snapshot(&dir, MemoryFormat::Raw).unwrap();
    vm.resume().unwrap();
    let snapshot = Snapshot::load(&dir).unwrap();
    let uds = temp_path("snap-trunc-restored.vsock");
    let config = RestoreConfig {
        devices: resources(&image, &uds),
        ..Default::default()
    };
    let mut restored = Vm::restore_snapshot(&snapshot, &mut UffdEngine::new(), config)
        .unwrap()
        .start()
        .unwrap();
    // Pull the pages away before the guest touched most of them.
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(zygote::snapshot::MEMORY_FILE))
        .unwrap();
    memory.set_len(4096).unwrap();
    // Touching the guest's memory now faults on pages the source no longer has. The agent
    // client gives up as soon as the VM stops.
    if let Ok(mut agent) = restored.agent() {
        let _ = agent.checksum(want.addr, 8 * MIB);
    }
    let exit = restored
        .wait_timeout(Duration::from_secs(10))
        .expect("the restored VM stops when its pages are gone");
    assert!(matches!(exit, ExitReason::HostError(_)), "{exit:?}");
    restored.wait().unwrap();
    // The original VM, in the same process, keeps running.
    let mut agent = vm.agent().unwrap();
    assert_eq!(agent.counter_get().unwrap(), want.counter);
}

/// The same test body is the parent (snapshots, then runs this test binary again) and, with
/// `ZYGOTE_RESTORE_DIR` set, the other process (restores and checks what the parent wrote).
#[test]
fn a_snapshot_taken_in_one_process_restores_in_another() {
    if let Ok(dir) = std::env::var("ZYGOTE_RESTORE_DIR") {
        let image = PathBuf::from(std::env::var("ZYGOTE_RESTORE_IMAGE").unwrap());
        let number = |name: &str| std::env::var(name).unwrap().parse::<u64>().unwrap();
        let want = Expected {
            counter: number("ZYGOTE_RESTORE_COUNTER"),
            addr: number("ZYGOTE_RESTORE_ADDR"),
            sum: number("ZYGOTE_RESTORE_SUM"),
            disk: vec![0x5a; 1024],
        };
        let snapshot = Snapshot::load(Path::new(&dir)).unwrap();
        let mut vm = check_restore(
            &snapshot,
            &mut UffdEngine::new(),
            &image,
            &want,
            "other-process",
        );
        vm.shutdown().unwrap();
        return;
    }
    let image = disk_image("snap-xproc.img", 1 << 20);
    let (vm, want) = prepared("snap-xproc", &image);
    let dir = snapshot_dir("snap-xproc-dir");
    vm.snapshot(&dir, MemoryFormat::Compressed { level: 3 })
        .unwrap();
    drop(vm);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_snapshot_taken_in_one_process_restores_in_another",
            "--exact",
            "--test-threads=1",
        ])
        .env("ZYGOTE_RESTORE_DIR", &dir)
        .env("ZYGOTE_RESTORE_IMAGE", &image)
        .env("ZYGOTE_RESTORE_COUNTER", want.counter.to_string())
        .env("ZYGOTE_RESTORE_ADDR", want.addr.to_string())
        .env("ZYGOTE_RESTORE_SUM", want.sum.to_string())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the restore in the other process failed: {status}"
    );
}

#[test]
fn diff_chains_and_their_merge_restore_exactly() {
    let image = disk_image("snap-diff.img", 1 << 20);
    let (vm, mut want) = prepared("snap-diff", &image);
    let full = snapshot_dir("snap-diff-full");
    vm.snapshot(&full, MemoryFormat::Raw).unwrap();
    // Nothing ran since: a diff right away holds (almost) nothing.
    let early = vm
        .snapshot(&snapshot_dir("snap-diff-early"), MemoryFormat::Diff)
        .unwrap();
    assert!(early.data_pages < 16, "{early:?}");
    let mut dirs = vec![full.clone(), temp_path("snap-diff-early")];
    for step in 1..=2u64 {
        vm.resume().unwrap();
        let mut agent = vm.agent().unwrap();
        want.counter = agent.counter_add(step).unwrap();
        let (addr, sum) = agent.touch(8, 0x1000 + step).unwrap();
        (want.addr, want.sum) = (addr, sum);
        drop(agent);
        vm.pause().unwrap();
        let dir = snapshot_dir(&format!("snap-diff-{step}"));
        let info = vm.snapshot(&dir, MemoryFormat::Diff).unwrap();
        // A diff holds what changed: the 8 MiB touched (2,048 pages) and a few pages of the
        // agent's own state and buffers, never the rest of memory.
        assert!((2048..2048 + 256).contains(&info.data_pages), "{info:?}");
        dirs.push(dir);
    }
    // Each diff names the snapshot before it: full, early, step 1, step 2.
    let chain = Snapshot::load_chain(&dirs).unwrap();
    let working_set = temp_path("snap-diff-working-set");
    let _ = std::fs::remove_file(&working_set);
    // Every engine that serves a chain (mmap maps a single raw image: see the merge below).
    let chain_engines: Vec<(&str, Box<dyn MemoryEngine>)> = vec![
        ("eager", Box::new(EagerEngine::new())),
        ("uffd", Box::new(UffdEngine::new())),
        ("prefetch", Box::new(PrefetchEngine::new(working_set))),
    ];
    for (name, mut engine) in chain_engines {
        let tag = format!("diff-chain-{name}");
        let mut restored = check_restore(&chain, engine.as_mut(), &image, &want, &tag);
        restored.shutdown().unwrap();
    }

    let merged_dir = snapshot_dir("snap-diff-merged");
    let merged = Snapshot::merge_chain(&dirs, &merged_dir).unwrap();
    let merged_engines: Vec<(&str, Box<dyn MemoryEngine>)> = vec![
        ("eager", Box::new(EagerEngine::new())),
        ("mmap", Box::new(MmapEngine::new())),
        ("uffd", Box::new(UffdEngine::new())),
    ];
    for (name, mut engine) in merged_engines {
        let tag = format!("merged-{name}");
        let mut restored = check_restore(&merged, engine.as_mut(), &image, &want, &tag);
        restored.shutdown().unwrap();
    }

    // A chain with a diff missing in the middle names the wrong parent.
    let err = Snapshot::load_chain(&[&dirs[0], &dirs[3]]).err().unwrap();
    assert!(err.to_string().contains("parent"), "{err}");
    // A diff alone is not a snapshot.
    assert!(Snapshot::load(&dirs[2]).is_err());
}

#[test]
fn a_disk_overlay_comes_back_with_its_sectors() {
    let image = disk_image("snap-overlay.img", 1 << 20);
    let base = std::fs::read(&image).unwrap();
    let overlay_file = temp_path("snap-overlay.cow");
    for (tag, config) in [
        ("memory", BlockConfig::new(&image).overlay()),
        ("file", BlockConfig::new(&image).overlay_file(&overlay_file)),
    ] {
        let parent = agent_vm(
            &format!("snap-overlay-{tag}"),
            AgentOpts {
                block: Some(config.clone()),
                ..Default::default()
            },
        );
        let mut agent = parent.vm.agent().unwrap();
        agent.disk_write(20, &[0x42; 1024]).unwrap();
        drop(agent);
        parent.vm.pause().unwrap();
        let dir = snapshot_dir(&format!("snap-overlay-{tag}-dir"));
        parent.vm.snapshot(&dir, MemoryFormat::Raw).unwrap();
        drop(parent);
        let snapshot = Snapshot::load(&dir).unwrap();
        let uds = temp_path(&format!("snap-overlay-{tag}-restored.vsock"));
        let restore = |block: BlockConfig| RestoreConfig {
            devices: DeviceResources {
                blocks: vec![block],
                nets: Vec::new(),
                vsock: Some(VsockConfig {
                    guest_cid: 3,
                    uds_path: uds.clone(),
                }),
            },
            ..Default::default()
        };
        // Giving the disk back without the overlay it was saved with is refused.
        let err = Vm::restore_snapshot(
            &snapshot,
            &mut MmapEngine::new(),
            restore(BlockConfig::new(&image)),
        )
        .err()
        .expect("refused");
        assert!(err.to_string().contains("overlay"), "{tag}: {err}");
        let mut vm = Vm::restore_snapshot(&snapshot, &mut MmapEngine::new(), restore(config))
            .unwrap()
            .start()
            .unwrap();
        let mut agent = vm.agent().unwrap();
        assert_eq!(agent.disk_read(20, 2).unwrap(), vec![0x42; 1024], "{tag}");
        vm.shutdown().unwrap();
        assert_eq!(
            std::fs::read(&image).unwrap(),
            base,
            "{tag}: the image was written"
        );
    }
}
