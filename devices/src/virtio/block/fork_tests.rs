//! Forked disks: parent, children and siblings each see only their own writes, for every kind
//! of disk, through the mock driver; chains of layers; overlays saved and restored.

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::overlay_file::over_temp_file;
use super::testing::{pattern, WatchedBase};
use super::tests::{harness_of, harness_with, image, Harness, DISK_SECTORS};
use super::*;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{regs, Arena};
use crate::virtio::VirtioDevice;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const DISK_BYTES: usize = (DISK_SECTORS * SECTOR_SIZE) as usize;

/// The ways the VMM builds a disk over an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The image, written through.
    Raw,
    /// The image, read-only.
    ReadOnly,
    /// An in-memory overlay over the image.
    Memory,
    /// An overlay file over the image.
    File,
}

const WRITABLE: [Kind; 3] = [Kind::Raw, Kind::Memory, Kind::File];

/// A disk over `image`, as `kind` says; the overlay file, if any, is returned to keep it.
fn disk_over(image: &TempFile, kind: Kind) -> (Box<dyn BlockBackend>, Option<TempFile>) {
    let open = |write| {
        let file = File::options()
            .read(true)
            .write(write)
            .open(image.as_path());
        RawFile::new(file.unwrap()).unwrap()
    };
    match kind {
        Kind::Raw => (Box::new(open(true)), None),
        Kind::ReadOnly => (Box::new(open(false)), None),
        Kind::Memory => (Box::new(Overlay::new(open(false))), None),
        Kind::File => {
            let (overlay, cow) = over_temp_file(open(false));
            (Box::new(overlay), Some(cow))
        }
    }
}

/// A block device driven by the mock driver, beside a model of what its disk must read.
struct Vm {
    h: Harness,
    model: Vec<u8>,
    _cow: Option<TempFile>,
}

impl Vm {
    /// A VM whose disk is `kind` over a fresh pattern image (in `self.h.image`).
    fn new(kind: Kind) -> Self {
        let image = image();
        let (disk, cow) = disk_over(&image, kind);
        Self {
            model: std::fs::read(image.as_path()).unwrap(),
            h: harness_with(image, disk, kind == Kind::ReadOnly),
            _cow: cow,
        }
    }

    /// Writes sector `sector` full of `byte` through the queue.
    fn write(&mut self, sector: u64, byte: u8) {
        // Requests complete at once, so their buffers can be reused.
        self.h.arena = Arena::default();
        assert_eq!(self.h.write(sector, &[byte; 512]), OK, "write {sector}");
        let at = (sector * SECTOR_SIZE) as usize;
        self.model[at..at + 512].fill(byte);
    }

    /// A child VM: the device forked, behind a transport of its own.
    fn fork(&mut self) -> Self {
        let block = self.h.transport.device_mut().fork().unwrap();
        Self {
            h: harness_of(TempFile::new().unwrap(), block),
            model: self.model.clone(),
            _cow: None,
        }
    }

    /// Reads the whole disk through the queue and compares it with the model.
    fn check(&mut self, who: &str) {
        self.h.arena = Arena::default();
        let (status, all) = self.h.read(0, DISK_BYTES as u32);
        assert_eq!(status, OK, "{who}: read");
        let first_diff = all.iter().zip(&self.model).position(|(a, b)| a != b);
        assert!(
            first_diff.is_none(),
            "{who}: disk differs from what it wrote first at sector {}",
            first_diff.unwrap_or(0) / 512
        );
    }

    fn image_bytes(&self) -> Vec<u8> {
        std::fs::read(self.h.image.as_path()).unwrap()
    }
}

#[test]
fn a_fork_isolates_parent_and_child_both_ways_for_every_writable_disk_kind() {
    for kind in WRITABLE {
        let mut parent = Vm::new(kind);
        parent.write(1, 0x11);
        let image_at_fork = parent.image_bytes();
        let mut child = parent.fork();
        child.check(&format!("{kind:?} child at the fork"));
        // The parent writes after the fork, to a sector the child has not touched and to
        // one they share.
        parent.write(2, 0x22);
        parent.write(1, 0x23);
        child.check(&format!("{kind:?} child after the parent's writes"));
        // The child writes its own sector and the shared one.
        child.write(3, 0x33);
        child.write(1, 0x34);
        parent.check(&format!("{kind:?} parent after the child's writes"));
        child.check(&format!("{kind:?} child after its own writes"));
        assert!(
            parent.image_bytes() == image_at_fork,
            "{kind:?}: the image changed after the fork"
        );
        if kind != Kind::Raw {
            assert!(parent.image_bytes() == pattern(DISK_BYTES), "{kind:?}");
        }
    }
}

#[test]
fn a_read_only_disk_forks_into_two_readers_of_the_unchanged_image() {
    let mut parent = Vm::new(Kind::ReadOnly);
    let mut child = parent.fork();
    for (who, vm) in [("parent", &mut parent), ("child", &mut child)] {
        assert_ne!(
            vm.h.transport.device().features() & (1 << VIRTIO_BLK_F_RO),
            0,
            "{who}"
        );
        assert_eq!(vm.h.write(4, &[0x44; 512]), IOERR, "{who}");
        vm.check(who);
    }
    assert!(parent.image_bytes() == pattern(DISK_BYTES));
}

#[test]
fn the_child_has_the_parents_id_and_capacity() {
    let mut parent = Vm::new(Kind::Memory);
    let child = parent.fork();
    let mut child = child.h;
    assert_eq!(child.transport.device().capacity(), DISK_SECTORS);
    let mut capacity = [0u8; 8];
    crate::BusDevice::read(&mut child.transport, regs::CONFIG, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), DISK_SECTORS);
    assert_eq!(
        child.transport.device().features() & (1 << VIRTIO_BLK_F_RO),
        0
    );
    let buf = child.arena.alloc(20);
    let (status, _) = child.request(VIRTIO_BLK_T_GET_ID, 0, Some((buf, 20, true)));
    assert_eq!(status, OK);
    let mut id = [0u8; 20];
    child.mem.read_slice(&mut id, GuestAddress(buf)).unwrap();
    assert_eq!(&id[..11], b"zygote-disk");
}

#[test]
fn five_generations_each_see_only_their_own_writes() {
    for kind in WRITABLE {
        let mut generations = vec![Vm::new(kind)];
        for g in 0..5u8 {
            let parent = generations.last_mut().unwrap();
            parent.write(20 + u64::from(g), g);
            parent.write(5, g);
            let child = parent.fork();
            // After the fork: a sector nobody else touched, and one every generation writes.
            parent.write(40 + u64::from(g), 0x80 | g);
            parent.write(5, 0x80 | g);
            generations.push(child);
        }
        generations.last_mut().unwrap().write(5, 0xff);
        for (g, vm) in generations.iter_mut().enumerate() {
            vm.check(&format!("{kind:?} generation {g}"));
        }
        let image = generations[0].image_bytes();
        if kind != Kind::Raw {
            assert!(image == pattern(DISK_BYTES), "{kind:?}: image written");
        }
    }
}

#[test]
fn siblings_never_see_each_other() {
    for kind in WRITABLE {
        let mut parent = Vm::new(kind);
        parent.write(1, 1);
        let mut first = parent.fork();
        // Between the forks: the second child sees it, the first does not.
        parent.write(2, 2);
        let mut second = parent.fork();
        first.write(3, 0x31);
        second.write(3, 0x32);
        first.write(10, 0x41);
        second.write(11, 0x42);
        let mut grandchild = first.fork();
        first.write(12, 0x51);
        grandchild.write(13, 0x61);
        for (who, vm) in [
            ("parent", &mut parent),
            ("first", &mut first),
            ("second", &mut second),
            ("grandchild", &mut grandchild),
        ] {
            vm.check(&format!("{kind:?} {who}"));
        }
    }
}

/// A backend beside a model of what it must read.
struct Disk {
    backend: Box<dyn BlockBackend>,
    model: Vec<u8>,
}

impl Disk {
    fn write(&mut self, data: &[u8], offset: usize) {
        self.backend.write_at(data, offset as u64).unwrap();
        self.model[offset..offset + data.len()].copy_from_slice(data);
    }

    fn fork(&mut self) -> Self {
        Self {
            backend: fork_disk(&mut self.backend, false).unwrap(),
            model: self.model.clone(),
        }
    }

    fn check(&mut self, who: &str) {
        let mut all = vec![0u8; self.model.len()];
        self.backend.read_at(&mut all, 0).unwrap();
        assert!(all == self.model, "{who}: contents differ");
        // Reads that start and end inside sectors and blocks, across layers.
        let mut part = vec![0u8; 5000];
        self.backend.read_at(&mut part, 700).unwrap();
        assert!(part[..] == self.model[700..5700], "{who}: unaligned read");
    }
}

/// A disk of `len` pattern bytes through `kind`'s backend over an image in a temporary file
/// (returned to keep it, with the overlay file if any).
fn disk(kind: Kind, len: usize) -> (Disk, TempFile, Option<TempFile>) {
    let image = TempFile::new().unwrap();
    image.as_file().write_all_at(&pattern(len), 0).unwrap();
    let (backend, cow) = disk_over(&image, kind);
    let disk = Disk {
        backend,
        model: pattern(len),
    };
    (disk, image, cow)
}

/// Depth of the chain under `disk`, found by forking it once more (which adds a layer only if
/// it wrote since its last fork) and freezing the probe's empty overlay.
fn layer_depth(disk: &mut Disk) -> usize {
    let mut probe = disk.fork();
    probe.backend.freeze().unwrap().depth()
}

#[test]
fn an_idle_disk_forks_without_adding_layers() {
    let (mut parent, _image, _cow) = disk(Kind::Memory, DISK_BYTES);
    parent.write(&[1; 512], 0);
    let mut children = Vec::new();
    for _ in 0..10 {
        children.push(parent.fork());
    }
    // Image, and the sectors written before the first fork.
    assert_eq!(layer_depth(&mut parent), 2);
    for child in &mut children {
        assert_eq!(layer_depth(child), 2);
        child.check("child");
    }
}

#[test]
fn partial_writes_over_a_chain_keep_each_layers_bytes() {
    // 7 blocks and a half, and a last sector of 300 bytes.
    let len = 7 * 4096 + 2048 + 300;
    for kind in WRITABLE {
        let (mut parent, image, _cow) = disk(kind, len);
        parent.write(&[1; 100], 4096 + 10);
        parent.write(&[2; 3000], 3 * 4096 + 1000);
        let mut child = parent.fork();
        child.write(&[3; 10], 4096 + 105);
        child.write(&[4; 20], 3 * 4096 + 3990);
        parent.write(&[5; 50], 4096 + 90);
        let mut grandchild = child.fork();
        grandchild.write(&[6; 700], 4096 + 60);
        grandchild.write(&[7; 200], len - 250);
        child.write(&[8; 9000], 2 * 4096 - 5);
        for (who, d) in [
            ("parent", &mut parent),
            ("child", &mut child),
            ("grandchild", &mut grandchild),
        ] {
            d.check(&format!("{kind:?} {who}"));
        }
        if kind != Kind::Raw {
            assert!(std::fs::read(image.as_path()).unwrap() == pattern(len));
        }
    }
}

#[test]
fn many_forks_that_each_write_a_little_keep_the_chain_shallow() {
    for kind in WRITABLE {
        let (mut parent, _image, _cow) = disk(kind, DISK_BYTES);
        let mut children = Vec::new();
        for i in 0..200 {
            // Layers overlap: each sector is written by many of them, partly.
            parent.write(&[i as u8; 300], (i % 5) * 512 + i);
            children.push(parent.fork());
            // Image, file overlay blocks, and log2(sectors held) + 1 layers of sectors.
            let depth = layer_depth(&mut parent);
            assert!(
                depth <= 2 + 9,
                "{kind:?}: {depth} layers after {} forks",
                i + 1
            );
        }
        for (i, child) in children.iter_mut().enumerate() {
            child.write(&[0xee; 512], 512 * (i % 7));
            child.check(&format!("{kind:?} child {i}"));
        }
        parent.check(&format!("{kind:?} parent"));
    }
}

#[test]
fn a_fork_that_froze_little_leaves_a_large_layer_below_it_alone() {
    let (mut parent, _image, _cow) = disk(Kind::Memory, DISK_BYTES);
    for sector in 0..40 {
        parent.write(&[1; 512], sector * 512);
    }
    let mut first = parent.fork();
    assert_eq!(layer_depth(&mut parent), 2, "image, 40 sectors");
    parent.write(&[2; 512], 0);
    let mut second = parent.fork();
    assert_eq!(layer_depth(&mut parent), 3, "image, 40 sectors, 1 sector");
    parent.write(&[3; 512], 512);
    let mut third = parent.fork();
    // The two small layers were merged; the large one was not.
    assert_eq!(layer_depth(&mut parent), 3, "image, 40 sectors, 2 sectors");
    for (who, d) in [
        ("parent", &mut parent),
        ("first", &mut first),
        ("second", &mut second),
        ("third", &mut third),
    ] {
        d.check(who);
    }
}

#[test]
fn a_backend_that_cannot_freeze_is_left_as_it_was() {
    let base = WatchedBase::new(DISK_BYTES, 0..0);
    let mut h = harness_with(image(), Box::new(Overlay::new(base)), false);
    assert_eq!(h.write(3, &[0x33; 512]), OK);
    let result = h.transport.device_mut().fork();
    assert!(matches!(result, Err(BlockForkError::Unsupported)));
    assert_eq!(h.read(3, 512), (OK, vec![0x33; 512]));
    assert_eq!(h.write(4, &[0x44; 512]), OK);
    assert_eq!(h.read(4, 1024).1[..512], [0x44; 512]);
}

/// Reads all of `backend`.
fn contents(backend: &mut dyn BlockBackend) -> Vec<u8> {
    let mut all = vec![0u8; backend.size() as usize];
    backend.read_at(&mut all, 0).unwrap();
    all
}

fn raw(image: &TempFile) -> RawFile {
    RawFile::new(File::open(image.as_path()).unwrap()).unwrap()
}

#[test]
fn a_memory_overlay_state_round_trips() {
    let (mut disk, image, _) = disk(Kind::Memory, DISK_BYTES);
    disk.write(&[9; 700], 1000);
    disk.write(&[8; 512], DISK_BYTES - 512);
    let Some(OverlayState::Memory(state)) = disk.backend.save_overlay().unwrap() else {
        panic!("an in-memory overlay saves its sectors");
    };
    assert_eq!(state.sectors, [1, 2, 3, DISK_SECTORS - 1]);
    assert_eq!(state.disk_size, DISK_BYTES as u64);
    let mut restored = Overlay::restore(raw(&image), &state).unwrap();
    assert_eq!(restored.save(), state);
    assert!(contents(&mut restored) == disk.model);
}

#[test]
fn a_file_overlay_state_round_trips_with_its_file() {
    let (mut disk, image, cow) = disk(Kind::File, DISK_BYTES);
    let cow = cow.unwrap();
    disk.write(&[9; 700], 1000);
    disk.write(&[7; 4096], 3 * 4096);
    let Some(OverlayState::File(state)) = disk.backend.save_overlay().unwrap() else {
        panic!("a file overlay saves its bitmap");
    };
    assert_eq!(state.present, [0b1001]);
    let file = File::options().read(true).write(true).open(cow.as_path());
    let mut restored = FileOverlay::restore(raw(&image), file.unwrap(), &state).unwrap();
    assert_eq!(restored.save(), state);
    assert_eq!(restored.dirty_blocks(), 2);
    assert!(contents(&mut restored) == disk.model);
}

#[test]
fn a_forked_disk_saves_its_chain_flattened_over_the_image() {
    let len = 7 * 4096 + 2048 + 300;
    for kind in WRITABLE {
        let (mut parent, image, _cow) = disk(kind, len);
        parent.write(&[1; 5000], 100);
        let mut child = parent.fork();
        child.write(&[2; 10], 4096 + 5);
        let mut grandchild = child.fork();
        grandchild.write(&[3; 200], len - 250);
        parent.write(&[4; 512], 6 * 4096);
        // The raw image holds what the parent wrote before the fork; overlays leave it as it
        // was.
        for (who, d) in [
            ("parent", &mut parent),
            ("child", &mut child),
            ("grandchild", &mut grandchild),
        ] {
            let Some(OverlayState::Memory(state)) = d.backend.save_overlay().unwrap() else {
                panic!("{kind:?} {who}: a forked disk saves an in-memory overlay");
            };
            let mut restored = Overlay::restore(raw(&image), &state).unwrap();
            assert!(contents(&mut restored) == d.model, "{kind:?} {who}");
        }
    }
}

#[test]
fn a_raw_disk_saves_no_overlay_until_it_forks() {
    let (mut disk, _image, _) = disk(Kind::Raw, DISK_BYTES);
    assert!(disk.backend.save_overlay().unwrap().is_none());
    let _child = disk.fork();
    disk.write(&[1; 512], 512);
    let Some(OverlayState::Memory(state)) = disk.backend.save_overlay().unwrap() else {
        panic!("a forked raw disk writes to memory");
    };
    assert_eq!(state.sectors, [1]);
}

#[test]
fn overlay_states_that_do_not_fit_the_disk_are_refused() {
    let image = image();
    let good = MemoryOverlayState {
        disk_size: DISK_BYTES as u64,
        sectors: vec![1, 5],
        data: vec![0; 1024],
    };
    assert!(Overlay::restore(raw(&image), &good).is_ok());
    let refused = |state: MemoryOverlayState| Overlay::restore(raw(&image), &state).err();
    let with = |f: fn(&mut MemoryOverlayState)| {
        let mut state = good.clone();
        f(&mut state);
        state
    };
    use OverlayRestoreError as E;
    assert!(matches!(
        refused(with(|s| s.disk_size += 512)),
        Some(E::DiskSizeMismatch { .. })
    ));
    assert!(matches!(
        refused(with(|s| s.data.push(0))),
        Some(E::DataLength { .. })
    ));
    assert!(matches!(
        refused(with(|s| s.sectors.push(7))),
        Some(E::DataLength { .. })
    ));
    assert!(matches!(
        refused(with(|s| s.sectors[1] = DISK_SECTORS)),
        Some(E::SectorOutOfRange { sector: 64, .. })
    ));
    assert!(matches!(
        refused(with(|s| s.sectors[1] = u64::MAX)),
        Some(E::SectorOutOfRange { .. })
    ));
    assert!(matches!(
        refused(with(|s| s.sectors[1] = 1)),
        Some(E::SectorsNotAscending { index: 1, .. })
    ));
    assert!(matches!(
        refused(with(|s| s.sectors = vec![5, 1])),
        Some(E::SectorsNotAscending { index: 1, .. })
    ));

    // Eight blocks of 4 KiB: one word, bits 0 to 7.
    let cow = TempFile::new().unwrap();
    cow.as_file().set_len(DISK_BYTES as u64).unwrap();
    let restore = |present: Vec<u64>, disk_size: u64| {
        let file = File::options().read(true).write(true).open(cow.as_path());
        let state = FileOverlayState { disk_size, present };
        FileOverlay::restore(raw(&image), file.unwrap(), &state).err()
    };
    let size = DISK_BYTES as u64;
    assert!(restore(vec![0xff], size).is_none());
    assert!(matches!(
        restore(vec![0x1ff], size),
        Some(E::BlockOutOfRange {
            block: 8,
            blocks: 8
        })
    ));
    assert!(matches!(
        restore(vec![1 << 63], size),
        Some(E::BlockOutOfRange { block: 63, .. })
    ));
    assert!(matches!(
        restore(vec![], size),
        Some(E::BitmapLength {
            words: 0,
            expected: 1
        })
    ));
    assert!(matches!(
        restore(vec![1, 0], size),
        Some(E::BitmapLength { words: 2, .. })
    ));
    assert!(matches!(
        restore(vec![1], size - 4096),
        Some(E::DiskSizeMismatch { .. })
    ));
    cow.as_file().set_len(size - 1).unwrap();
    assert!(matches!(
        restore(vec![1], size),
        Some(E::OverlayFileTooSmall { .. })
    ));
    let null = File::open("/dev/null").unwrap();
    let state = FileOverlayState {
        disk_size: size,
        present: vec![1],
    };
    assert!(matches!(
        FileOverlay::restore(raw(&image), null, &state).err(),
        Some(E::OverlayFile(_))
    ));
}

#[test]
fn a_file_overlay_over_frozen_layers_is_not_saved() {
    let (mut disk, _image, _) = disk(Kind::Memory, DISK_BYTES);
    let frozen = FrozenDisk::new(disk.backend.freeze().unwrap());
    let (overlay, _cow) = over_temp_file(frozen);
    assert!(matches!(
        overlay.save_overlay(),
        Err(OverlaySaveError::FileOverlayOverFrozenLayer)
    ));
}

#[test]
fn a_forked_device_restores_with_the_parents_transport_state() {
    let mut parent = Vm::new(Kind::Memory);
    parent.write(6, 0x66);
    let state = parent.h.transport.save();
    let block = parent.h.transport.device_mut().fork().unwrap();
    let child = MmioTransport::restore(block, parent.h.mem.clone(), parent.h.irq.clone(), &state);
    let mut child = child.unwrap();
    assert_eq!(child.save(), state);
    // The parent keeps going; the child's disk is the parent's at the fork.
    parent.write(6, 0x67);
    let mut sector = [0u8; 512];
    let disk = &mut child.device_mut().disk;
    disk.read_at(&mut sector, 6 * SECTOR_SIZE).unwrap();
    assert_eq!(sector, [0x66; 512]);
}
