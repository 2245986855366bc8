//! What forking a disk costs (`Block::fork`, called while the VM is paused) and what the chain
//! of frozen layers it builds costs a read, in `devices/DESIGN.md`.
//!
//! Run: `cargo run --release -p zygote-benches --example disk_fork`
//! Prints `name=value` lines, each the median of its runs unless it says otherwise:
//! - `fork_<disk>_us`: `Block::fork` on a 1 GiB disk of that kind holding that many 512-byte
//!   sectors in its overlay (building the disk and dropping the devices are not timed);
//! - `fork_merging_<n>_us`: a fork whose frozen overlay of `n` sectors merges a layer of `n`
//!   sectors below it, and the cost per sector merged;
//! - `forks_1000x10`: 1,000 forks of one disk, each after writing 10 sectors: median, mean
//!   and longest fork, and the chain's depth at the end;
//! - `read_4k_depth_<d>_ns`: a 4 KiB read of sectors no overlay layer holds, through a chain
//!   of `d` layers (the image included; its bytes in the page cache; each layer of sectors
//!   three times the size of the one above it, the top one 10 sectors), and
//!   `read_512_lowest_layer_depth_<d>_ns`: a sector the lowest of them holds.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use zygote_devices::virtio::block::{
    fork_disk, Block, BlockBackend, FileOverlay, Overlay, RawFile,
};

const DISK_BYTES: u64 = 1 << 30;
const SECTOR: u64 = 512;
const RUNS: usize = 21;

/// A sparse image file, removed when dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str, len: u64) -> Self {
        let path = std::env::temp_dir().join(format!("zygote-{name}-{}", std::process::id()));
        File::create(&path).unwrap().set_len(len).unwrap();
        Self(path)
    }

    fn open(&self, write: bool) -> File {
        let file = File::options().read(true).write(write).open(&self.0);
        file.unwrap()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `sectors` sectors spread over the disk, one request each.
fn fill(disk: &mut dyn BlockBackend, sectors: u64, salt: u64) {
    let stride = DISK_BYTES / SECTOR / sectors.max(1);
    for i in 0..sectors {
        let sector = i * stride + salt % stride.max(1);
        disk.write_at(&[i as u8; SECTOR as usize], sector * SECTOR)
            .unwrap();
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Median time of `Block::fork` on devices `build` makes.
fn fork_time(mut build: impl FnMut() -> Block) -> Duration {
    let times = (0..RUNS)
        .map(|_| {
            let mut block = build();
            let start = Instant::now();
            let child = block.fork().expect("fork");
            let took = start.elapsed();
            drop((child, block));
            took
        })
        .collect();
    median(times)
}

fn block(disk: Box<dyn BlockBackend>) -> Block {
    Block::new(disk, false, "bench").unwrap()
}

/// A disk over a chain of `depth` layers: the image, then `depth - 1` layers of sectors,
/// each three times the size of the one above it (so none is merged), the top one 10 sectors.
fn chain(image: &TempPath, depth: u32) -> Box<dyn BlockBackend> {
    let raw = RawFile::new(image.open(false)).unwrap();
    let mut disk: Box<dyn BlockBackend> = Box::new(Overlay::new(raw));
    for layer in 1..depth {
        fill(
            disk.as_mut(),
            10 * 3u64.pow(depth - 1 - layer),
            u64::from(layer),
        );
        drop(fork_disk(&mut disk, false).unwrap());
    }
    disk
}

/// Depth of the chain under `disk`, from freezing a fork of it (which adds no layer).
fn depth(disk: &mut Box<dyn BlockBackend>) -> usize {
    let mut probe = fork_disk(disk, false).unwrap();
    probe.freeze().unwrap().depth()
}

/// Median time of a read of `len` bytes at `offset`, over many reads.
fn read_time(disk: &mut dyn BlockBackend, offset: u64, len: usize) -> Duration {
    let mut buf = vec![0u8; len];
    let times = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..1000 {
                disk.read_at(&mut buf, offset).unwrap();
            }
            start.elapsed() / 1000
        })
        .collect();
    median(times)
}

fn main() {
    let image = TempPath::new("disk-fork-image", DISK_BYTES);
    let raw = || RawFile::new(image.open(false)).unwrap();
    let us = |d: Duration| d.as_secs_f64() * 1e6;

    let fork = fork_time(|| block(Box::new(RawFile::new(image.open(true)).unwrap())));
    println!("fork_raw_us={:.2}", us(fork));
    for sectors in [0, 10_000, 100_000] {
        let fork = fork_time(|| {
            let mut disk = Overlay::new(raw());
            fill(&mut disk, sectors, 0);
            block(Box::new(disk))
        });
        println!("fork_memory_overlay_{sectors}_us={:.2}", us(fork));
    }
    let cow = TempPath::new("disk-fork-cow", 0);
    let fork = fork_time(|| {
        let mut disk = FileOverlay::new(raw(), cow.open(true)).unwrap();
        fill(&mut disk, 10_000, 0);
        block(Box::new(disk))
    });
    println!("fork_file_overlay_10000_us={:.2}", us(fork));
    for sectors in [1_000, 10_000] {
        let fork = fork_time(|| {
            let mut disk: Box<dyn BlockBackend> = Box::new(Overlay::new(raw()));
            fill(disk.as_mut(), sectors, 1);
            drop(fork_disk(&mut disk, false).unwrap());
            fill(disk.as_mut(), sectors, 2);
            block(disk)
        });
        println!(
            "fork_merging_{sectors}_us={:.2} per_sector_merged_ns={:.0}",
            us(fork),
            fork.as_nanos() as f64 / (2 * sectors) as f64
        );
    }

    let mut disk: Box<dyn BlockBackend> = Box::new(Overlay::new(raw()));
    let mut times = Vec::new();
    for i in 0..1000 {
        fill(disk.as_mut(), 10, i);
        let start = Instant::now();
        let child = fork_disk(&mut disk, false).unwrap();
        times.push(start.elapsed());
        drop(child);
    }
    let longest = times.iter().max().copied().unwrap_or_default();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "forks_1000x10 median_us={:.2} mean_us={:.2} longest_us={:.2} depth={}",
        us(median(times)),
        us(mean),
        us(longest),
        depth(&mut disk)
    );

    for layers in [1, 2, 5, 8, 11] {
        let mut disk = chain(&image, layers);
        assert_eq!(depth(&mut disk), layers as usize);
        // Layer `l` holds sectors `l + i * stride`: sectors 100 to 107 are in none of them.
        let read = read_time(disk.as_mut(), 100 * SECTOR, 4096);
        println!("read_4k_depth_{layers}_ns={}", read.as_nanos());
        if layers > 1 {
            // Sector 1 is in the lowest layer of sectors, above the image.
            let read = read_time(disk.as_mut(), SECTOR, 512);
            println!(
                "read_512_lowest_layer_depth_{layers}_ns={}",
                read.as_nanos()
            );
        }
    }
}
