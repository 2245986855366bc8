//! Corrupt, truncated, foreign and mismatched snapshots: each is a typed error naming what is
//! wrong, and nothing is restored from it. One guest is booted and snapshotted per test.

mod common;

use std::path::{Path, PathBuf};

use common::{agent_vm, temp_path, AgentOpts};
use zygote::snapshot::{MEMORY_FILE, STATE_FILE};
use zygote::snapshot_format::{MmapEngine, StateFileError};
use zygote::{LoadError, MemoryFormat, RestoreConfig, Snapshot, Vm};

/// A fresh snapshot of an agent guest, in its own directory.
fn snapshot(name: &str) -> PathBuf {
    let vm = agent_vm(name, AgentOpts::default()).vm;
    vm.pause().unwrap();
    let dir = temp_path(&format!("{name}-snap"));
    let _ = std::fs::remove_dir_all(&dir);
    vm.snapshot(&dir, MemoryFormat::Raw).unwrap();
    dir
}

fn state_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join(STATE_FILE)).unwrap()
}

fn put_state(dir: &Path, bytes: &[u8]) {
    std::fs::write(dir.join(STATE_FILE), bytes).unwrap();
}

fn state_error(dir: &Path) -> StateFileError {
    match Snapshot::load(dir) {
        Err(LoadError::State(e)) => e,
        Err(other) => panic!("expected a state file error, got {other}"),
        Ok(_) => panic!("a corrupt snapshot loaded"),
    }
}

#[test]
fn truncated_state_files_are_refused_at_every_length() {
    let dir = snapshot("corrupt-trunc");
    let good = state_bytes(&dir);
    for len in [0, 7, 19, 20, 36, good.len() / 2, good.len() - 1] {
        put_state(&dir, &good[..len]);
        let err = state_error(&dir);
        assert!(
            matches!(
                err,
                StateFileError::Truncated { .. } | StateFileError::BadMagic { .. }
            ),
            "length {len}: {err}"
        );
    }
    put_state(&dir, &good);
    Snapshot::load(&dir).unwrap();
}

#[test]
fn a_flipped_bit_anywhere_is_a_checksum_error_naming_the_place() {
    let dir = snapshot("corrupt-flip");
    let good = state_bytes(&dir);
    // The header's crc, each section's header and payload: step through the whole file.
    let step = (good.len() / 40).max(1);
    for at in (8..good.len()).step_by(step) {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        put_state(&dir, &bad);
        match Snapshot::load(&dir) {
            Err(LoadError::State(e)) => {
                let text = e.to_string();
                assert!(
                    text.contains("crc32")
                        || text.contains("truncated")
                        || text.contains("cap")
                        || text.contains("version")
                        || text.contains("section"),
                    "byte {at}: {text}"
                );
            }
            other => panic!("byte {at}: {:?}", other.err()),
        }
    }
}

#[test]
fn wrong_magic_and_wrong_version_are_named() {
    let dir = snapshot("corrupt-magic");
    let good = state_bytes(&dir);
    let mut bad = good.clone();
    bad[..8].copy_from_slice(b"NOTZYGOT");
    put_state(&dir, &bad);
    assert!(matches!(state_error(&dir), StateFileError::BadMagic { .. }));

    let mut bad = good.clone();
    bad[8..12].copy_from_slice(&99u32.to_le_bytes());
    let crc = crc32fast::hash(&bad[..16]);
    bad[16..20].copy_from_slice(&crc.to_le_bytes());
    put_state(&dir, &bad);
    assert!(matches!(
        state_error(&dir),
        StateFileError::UnsupportedVersion { found: 99, .. }
    ));
}

#[test]
fn an_oversized_section_is_refused_before_it_is_allocated() {
    let dir = snapshot("corrupt-size");
    let mut bad = state_bytes(&dir);
    // The first section's header follows the 20-byte file header: id (4), version (1), then
    // the 8-byte length.
    bad[25..33].copy_from_slice(&(1u64 << 40).to_le_bytes());
    put_state(&dir, &bad);
    let err = state_error(&dir);
    assert!(
        matches!(
            err,
            StateFileError::SectionTooLarge { .. } | StateFileError::FileTooLarge { .. }
        ),
        "{err}"
    );
}

#[test]
fn a_memory_file_shorter_than_the_state_says_is_refused_before_mapping() {
    let dir = snapshot("corrupt-short");
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(MEMORY_FILE))
        .unwrap();
    memory.set_len(1 << 20).unwrap();
    let err = Snapshot::load(&dir)
        .err()
        .expect("a short memory file is refused");
    assert!(matches!(err, LoadError::Memory(_)), "{err}");
    std::fs::remove_file(dir.join(MEMORY_FILE)).unwrap();
    let err = Snapshot::load(&dir)
        .err()
        .expect("a missing memory file is refused");
    assert!(matches!(err, LoadError::Memory(_)), "{err}");
}

#[test]
fn a_snapshot_needing_a_cpu_feature_the_host_lacks_is_refused() {
    let dir = snapshot("corrupt-cpuid");
    let mut snapshot = Snapshot::load(&dir).unwrap();
    for vcpu in &mut snapshot.state_mut().vcpus {
        for entry in &mut vcpu.cpuid {
            if entry.function == 7 && entry.index == 0 {
                entry.ebx = u32::MAX;
                entry.ecx = u32::MAX;
            }
        }
    }
    let err = Vm::restore_snapshot(&snapshot, &mut MmapEngine::new(), RestoreConfig::default())
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains("CPUID leaf 0x7"), "{text}");
}
