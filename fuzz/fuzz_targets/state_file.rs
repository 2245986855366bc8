//! A state file is read from disk and must not be trusted: any bytes must parse or fail with
//! a typed `StateFileError`, never panic, hang or allocate past the caps.
//!
//! Run: `cargo +nightly fuzz run state_file` from this folder (seed it with the golden file:
//! `mkdir -p corpus/state_file && cp ../snapshot/tests/golden/state-v1.zsn corpus/state_file/`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use zygote_snapshot::memory::MemoryManifest;
use zygote_snapshot::{SectionId, StateFile};

fuzz_target!(|bytes: &[u8]| {
    let Ok(file) = StateFile::from_bytes(bytes) else {
        return;
    };
    // Whatever parsed must decode or fail cleanly as the typed sections Zygote reads.
    let _ = file.decode::<MemoryManifest>(SectionId::MEMORY, &[1]);
    let _ = file.decode::<zygote_snapshot::PageBitmap>(SectionId::DIFF_BITMAP, &[1]);
    let mut reader = bytes;
    let _ = StateFile::read_prefix(&mut reader, bytes.len() as u64);
});
