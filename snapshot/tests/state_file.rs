//! The state file container: round trip, golden file, and every corruption a typed error.

mod common;

use zygote_snapshot::format::{
    Place, FORMAT_CURRENT, FORMAT_V1, HEADER_LEN, MAGIC, MAX_SECTION_LEN, SECTION_HEADER_LEN,
};
use zygote_snapshot::memory::{ImageKind, MemoryManifest};
use zygote_snapshot::{SectionId, SnapshotId, StateFile, StateFileError, StateFileWriter};

fn sample() -> StateFileWriter {
    let mut w = StateFileWriter::new();
    w.section(SectionId::VM_CONFIG, 1, b"zygote golden config".to_vec())
        .unwrap();
    let manifest = MemoryManifest {
        id: SnapshotId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
        parent: None,
        kind: ImageKind::Raw,
        layout: common::layout(),
    };
    w.encoded(SectionId::MEMORY, 1, &manifest).unwrap();
    w.section(SectionId(0x7777), 3, vec![]).unwrap();
    w
}

#[test]
fn format_version_tripwire() {
    // Changing these is a format change: bump FORMAT_CURRENT, keep reading FORMAT_V1, and add
    // a golden file for the new version.
    assert_eq!(FORMAT_V1, 1);
    assert_eq!(FORMAT_CURRENT, FORMAT_V1);
    assert_eq!(&MAGIC, b"ZYGOTESN");
    assert_eq!(HEADER_LEN, 20);
    assert_eq!(SECTION_HEADER_LEN, 17);
}

#[test]
fn golden_v1_file_reads_and_is_rewritten_byte_identical() {
    let golden_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/state-v1.zsn");
    let fresh = sample().to_bytes();
    if std::env::var_os("ZYGOTE_BLESS").is_some() {
        std::fs::write(&golden_path, &fresh).unwrap();
    }
    let golden = std::fs::read(&golden_path).unwrap();
    assert_eq!(
        fresh, golden,
        "the state file encoding changed: this is a format change"
    );
    let file = StateFile::read(&golden_path).unwrap();
    assert_eq!(
        file.section(SectionId::VM_CONFIG).unwrap().bytes,
        b"zygote golden config"
    );
    let (version, manifest): (u8, MemoryManifest) = file.decode(SectionId::MEMORY, &[1]).unwrap();
    assert_eq!(version, 1);
    assert_eq!(manifest.layout, common::layout());
    assert_eq!(
        manifest.id,
        SnapshotId(0x0123_4567_89ab_cdef_0011_2233_4455_6677)
    );
}

#[test]
fn round_trip_keeps_every_section_in_order() {
    let bytes = sample().to_bytes();
    let file = StateFile::from_bytes(&bytes).unwrap();
    let ids: Vec<_> = file.sections().iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        vec![SectionId::VM_CONFIG, SectionId::MEMORY, SectionId(0x7777)]
    );
    assert_eq!(file.section(SectionId(0x7777)).unwrap().version, 3);
}

/// Offsets where each section header starts, and the file length.
fn boundaries(bytes: &[u8]) -> Vec<usize> {
    let file = StateFile::from_bytes(bytes).unwrap();
    let mut at = HEADER_LEN;
    let mut out = vec![0, HEADER_LEN];
    for s in file.sections() {
        at += SECTION_HEADER_LEN + s.bytes.len();
        out.push(at);
    }
    out
}

#[test]
fn truncation_anywhere_is_a_truncated_error_naming_the_place() {
    let bytes = sample().to_bytes();
    let bounds = boundaries(&bytes);
    for cut in 0..bytes.len() {
        let err = StateFile::from_bytes(&bytes[..cut]).unwrap_err();
        let StateFileError::Truncated { place } = err else {
            panic!("cut at {cut}: {err:?}")
        };
        let expected_section = bounds.iter().skip(1).filter(|&&b| b <= cut).count();
        match place {
            Place::Header => assert!(cut < HEADER_LEN),
            Place::Section { index, .. } => {
                assert_eq!(index as usize + 1, expected_section, "cut at {cut}")
            }
        }
    }
}

#[test]
fn a_bit_flip_anywhere_is_refused() {
    let bytes = sample().to_bytes();
    for at in 0..bytes.len() {
        for bit in [0, 5] {
            let mut bad = bytes.clone();
            bad[at] ^= 1 << bit;
            let err = StateFile::from_bytes(&bad).expect_err(&format!("flip at {at} accepted"));
            match err {
                StateFileError::BadMagic { .. } => assert!(at < 8),
                StateFileError::Checksum {
                    place: Place::Header,
                } => assert!(at < HEADER_LEN),
                StateFileError::Checksum {
                    place: Place::Section { .. },
                } => assert!(at >= HEADER_LEN),
                // A flipped length reads as a longer or shorter section.
                StateFileError::Truncated { .. }
                | StateFileError::SectionTooLarge { .. }
                | StateFileError::TrailingBytes { .. } => {}
                other => panic!("flip at {at}: unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn a_bit_flip_in_each_section_payload_names_that_section() {
    let bytes = sample().to_bytes();
    let bounds = boundaries(&bytes);
    for (index, pair) in bounds[1..].windows(2).enumerate() {
        if pair[1] - pair[0] == SECTION_HEADER_LEN {
            continue; // empty payload
        }
        let mut bad = bytes.clone();
        bad[pair[0] + SECTION_HEADER_LEN] ^= 0x80;
        match StateFile::from_bytes(&bad).unwrap_err() {
            StateFileError::Checksum {
                place:
                    Place::Section {
                        index: i,
                        id: Some(_),
                    },
            } => assert_eq!(i as usize, index),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn wrong_magic_is_refused() {
    let mut bytes = sample().to_bytes();
    bytes[..8].copy_from_slice(b"NOTZYGOT");
    assert!(
        matches!(StateFile::from_bytes(&bytes), Err(StateFileError::BadMagic { found }) if &found == b"NOTZYGOT")
    );
}

#[test]
fn an_unknown_format_version_is_refused_with_what_is_supported() {
    let mut bytes = sample().to_bytes();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..16]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    match StateFile::from_bytes(&bytes) {
        Err(StateFileError::UnsupportedVersion {
            found: 2,
            supported,
        }) => assert_eq!(supported, &[FORMAT_V1]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_oversized_section_is_refused_before_allocation() {
    let mut bytes = sample().to_bytes();
    let len_at = HEADER_LEN + 5;
    bytes[len_at..len_at + 8].copy_from_slice(&(MAX_SECTION_LEN + 1).to_le_bytes());
    match StateFile::from_bytes(&bytes) {
        Err(StateFileError::SectionTooLarge {
            place:
                Place::Section {
                    index: 0,
                    id: Some(SectionId::VM_CONFIG),
                },
            len,
            cap,
        }) => {
            assert_eq!(len, MAX_SECTION_LEN + 1);
            assert_eq!(cap, MAX_SECTION_LEN);
        }
        other => panic!("{other:?}"),
    }
    // A length under the cap but past the end of the file is a truncation, also refused
    // before allocating it.
    bytes[len_at..len_at + 8].copy_from_slice(&(MAX_SECTION_LEN - 1).to_le_bytes());
    assert!(matches!(
        StateFile::from_bytes(&bytes),
        Err(StateFileError::Truncated { .. })
    ));
}

#[test]
fn duplicate_and_missing_sections_are_typed_errors() {
    let mut w = StateFileWriter::new();
    w.section(SectionId::VCPUS, 1, vec![1]).unwrap();
    assert!(matches!(
        w.section(SectionId::VCPUS, 1, vec![2]),
        Err(StateFileError::DuplicateSection {
            section: SectionId::VCPUS
        })
    ));
    let file = StateFile::from_bytes(&w.to_bytes()).unwrap();
    assert!(matches!(
        file.section(SectionId::DEVICES),
        Err(StateFileError::MissingSection {
            section: SectionId::DEVICES
        })
    ));
    assert!(matches!(
        file.decode::<u8>(SectionId::VCPUS, &[2]),
        Err(StateFileError::UnsupportedSectionVersion { found: 1, .. })
    ));
    // A payload that does not decode as the type asked is a Decode error naming the section.
    let mut w = StateFileWriter::new();
    w.section(SectionId::MEMORY, 1, vec![0xff, 0xff]).unwrap();
    let file = StateFile::from_bytes(&w.to_bytes()).unwrap();
    assert!(matches!(
        file.decode::<MemoryManifest>(SectionId::MEMORY, &[1]),
        Err(StateFileError::Decode {
            section: SectionId::MEMORY,
            ..
        })
    ));
}

#[test]
fn a_written_file_reads_back_and_leaves_no_temporary() {
    let dir = common::temp_dir("state-write");
    let path = dir.join("vm.zsn");
    sample().write_atomic(&path).unwrap();
    assert_eq!(
        StateFile::read(&path).unwrap(),
        StateFile::from_bytes(&sample().to_bytes()).unwrap()
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("vm.zsn")]);
    std::fs::remove_dir_all(dir).unwrap();
}
