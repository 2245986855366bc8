//! The codec against its documented format: round trips, truncations, limits, hostile bytes.

extern crate std;
use super::*;
use std::vec;
use std::vec::Vec;

fn all_requests(data: &[u8], sectors: &[u8]) -> Vec<Request<'static>> {
    // Leak so the requests can be 'static in a test.
    let data: &'static [u8] = std::boxed::Box::leak(data.to_vec().into_boxed_slice());
    let sectors: &'static [u8] = std::boxed::Box::leak(sectors.to_vec().into_boxed_slice());
    vec![
        Request::Ping,
        Request::Echo(data),
        Request::Echo(b""),
        Request::Touch {
            mib: 3,
            pattern: u64::MAX,
        },
        Request::Checksum {
            addr: 0x20_0000,
            len: 4096,
        },
        Request::DiskWrite {
            sector: 9,
            data: sectors,
        },
        Request::DiskRead {
            sector: u64::MAX,
            count: MAX_DISK_SECTORS,
        },
        Request::DiskFlush,
        Request::DiskId,
        Request::NetSend(data),
        Request::NetRecv { timeout_ms: 250 },
        Request::CounterAdd(5),
        Request::CounterGet,
        Request::Sink { len: 64 << 20 },
        Request::Source { len: 7, seed: 42 },
        Request::ConnectHost {
            port: 5000,
            payload: data,
        },
        Request::Exit(0xdead),
        Request::Identity,
        Request::Hello {
            version: PROTOCOL_VERSION,
        },
        Request::Exec(Exec {
            argv: Strings::new(b"/bin/sh\0-c\0echo hi\0").unwrap(),
            env: Strings::new(b"A=1\0").unwrap(),
            cwd: b"/tmp",
            stdin: data,
            timeout_ms: 5000,
        }),
        Request::Exec(Exec {
            argv: Strings::new(b"true\0").unwrap(),
            env: Strings::EMPTY,
            cwd: b"",
            stdin: b"",
            timeout_ms: 0,
        }),
        Request::Signal { pid: 77, signal: 9 },
        Request::WriteFile {
            path: b"/tmp/a",
            offset: 1 << 33,
            truncate: true,
            mode: 0o644,
            data,
        },
        Request::ReadFile {
            path: b"/tmp/a",
            offset: 3,
            len: MAX_FILE_CHUNK as u32,
        },
        Request::Stat(b"/"),
        Request::List {
            path: b"/tmp",
            start: 4,
        },
        Request::Remove {
            path: b"/tmp/a",
            recursive: false,
        },
        Request::Mkdir {
            path: b"/tmp/d/e",
            parents: true,
            mode: 0o755,
        },
        Request::Ports,
        Request::WaitPort {
            port: 3000,
            timeout_ms: 10,
        },
        Request::Bridge { port: 65535 },
    ]
}

fn all_responses(data: &'static [u8], sectors: &'static [u8]) -> Vec<Response<'static>> {
    vec![
        Response::Pong,
        Response::Echo(data),
        Response::Touched {
            addr: 0x20_0000,
            checksum: 1,
        },
        Response::Checksum(2),
        Response::DiskWritten,
        Response::DiskData(sectors),
        Response::DiskFlushed,
        Response::DiskId(*b"zygote-disk-id-12345"),
        Response::NetSent,
        Response::NetFrame(data),
        Response::Counter(u64::MAX),
        Response::Sunk {
            len: 10,
            checksum: 11,
        },
        Response::Sourcing { len: 12 },
        Response::HostReply(data),
        Response::HostReply(b""),
        Response::Exiting(3),
        Response::Identity {
            generation: 1,
            id: [0x5a; VM_ID_LEN],
            seed: u64::MAX,
            random: 9,
        },
        Response::Error(ErrorCode::NoFrame),
        Response::Error(ErrorCode::ReadOnly),
        Response::Error(ErrorCode::Unsupported),
        Response::Error(ErrorCode::IoError),
        Response::Hello {
            version: 2,
            guest: GuestKind::Linux,
        },
        Response::ExecStarted { pid: 1234 },
        Response::ExecOutput {
            stream: OutputStream::Stderr,
            data,
        },
        Response::ExecExited {
            status: ExitStatus::Exited(-1),
            timed_out: false,
        },
        Response::ExecExited {
            status: ExitStatus::Signaled(9),
            timed_out: true,
        },
        Response::Signaled,
        Response::Written,
        Response::FileData(data),
        Response::FileData(b""),
        Response::Stat(FileStat {
            kind: FileKind::Symlink,
            mode: 0o777,
            size: 5,
            mtime: -1,
        }),
        Response::Entries {
            next: 0,
            entries: Entries::new(b"").unwrap(),
        },
        Response::Entries {
            next: 9,
            entries: Entries::new(b"\x01\x05\0\0\0\0\0\0\0\x01\0a").unwrap(),
        },
        Response::Removed,
        Response::MadeDir,
        Response::Ports(PortList::new(&[0xb8, 0x0b, 0x50, 0]).unwrap()),
        Response::PortOpen,
        Response::Bridged,
    ]
}

#[test]
fn requests_round_trip_and_truncations_are_incomplete() {
    let sectors = vec![0xa5u8; 2 * SECTOR_SIZE];
    for request in all_requests(b"hello frame", &sectors) {
        let mut buf = vec![0u8; request.encoded_len() + 3];
        let n = request.encode(&mut buf).unwrap();
        assert_eq!(n, request.encoded_len());
        // Trailing bytes (the next frame) are left alone.
        assert_eq!(Request::decode(&buf), Ok((request, n)), "{request:?}");
        for cut in 0..n {
            assert_eq!(
                Request::decode(&buf[..cut]),
                Err(DecodeError::Incomplete),
                "{request:?} cut at {cut}"
            );
        }
        assert_eq!(
            request.encode(&mut buf[..n - 1]),
            Err(EncodeError::BufferTooSmall { needed: n })
        );
    }
}

#[test]
fn responses_round_trip_and_truncations_are_incomplete() {
    let sectors: &'static [u8] = std::boxed::Box::leak(vec![7u8; SECTOR_SIZE].into());
    for response in all_responses(b"reply", sectors) {
        let mut buf = vec![0u8; response.encoded_len()];
        let n = response.encode(&mut buf).unwrap();
        assert_eq!(Response::decode(&buf), Ok((response, n)), "{response:?}");
        for cut in 0..n {
            assert_eq!(Response::decode(&buf[..cut]), Err(DecodeError::Incomplete));
        }
    }
}

#[test]
fn wire_format_is_as_documented() {
    let mut buf = [0u8; 32];
    let n = Request::CounterAdd(0x0102).encode(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[9, 0, 0, 0, 11, 2, 1, 0, 0, 0, 0, 0, 0]);
    let n = Response::Counter(1).encode(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[10, 0, 0, 0, 0, 12, 1, 0, 0, 0, 0, 0, 0, 0]);
    let n = Request::Identity.encode(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[1, 0, 0, 0, 17]);
    let mut big = [0u8; 64];
    let n = Response::Identity {
        generation: 2,
        id: [0xee; VM_ID_LEN],
        seed: 3,
        random: 4,
    }
    .encode(&mut big)
    .unwrap();
    let mut expected = std::vec![42, 0, 0, 0, 0, 17, 2, 0, 0, 0, 0, 0, 0, 0];
    expected.extend_from_slice(&[0xee; VM_ID_LEN]);
    expected.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&big[..n], &expected[..]);
    let n = Response::Error(ErrorCode::NoFrame)
        .encode(&mut buf)
        .unwrap();
    assert_eq!(&buf[..n], &[1, 0, 0, 0, 8]);
}

#[test]
fn bad_lengths_are_rejected_before_reading_the_body() {
    let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
    assert_eq!(
        Request::decode(&huge),
        Err(DecodeError::BadLength(MAX_FRAME as u32 + 1))
    );
    assert_eq!(
        Response::decode(&[0xff, 0xff, 0xff, 0xff, 1]),
        Err(DecodeError::BadLength(u32::MAX))
    );
    assert_eq!(
        Request::decode(&[0, 0, 0, 0]),
        Err(DecodeError::BadLength(0))
    );
    assert_eq!(frame_len(&[1, 0, 0]), Err(DecodeError::Incomplete));
    assert_eq!(
        frame_len(&(MAX_FRAME as u32).to_le_bytes()),
        Ok(MAX_FRAME + 4)
    );
}

#[test]
fn garbage_is_an_error() {
    // Unknown opcode, unknown status.
    assert_eq!(
        Request::decode(&[1, 0, 0, 0, 99]),
        Err(DecodeError::UnknownOpcode(99))
    );
    assert_eq!(
        Response::decode(&[1, 0, 0, 0, 200]),
        Err(DecodeError::UnknownOpcode(200))
    );
    assert_eq!(
        Response::decode(&[2, 0, 0, 0, 0, 0]),
        Err(DecodeError::UnknownOpcode(0))
    );
    // Fixed-size bodies with extra or missing bytes.
    assert_eq!(
        Request::decode(&[2, 0, 0, 0, 1, 0]),
        Err(DecodeError::Invalid)
    );
    assert_eq!(
        Request::decode(&[2, 0, 0, 0, 11, 0]),
        Err(DecodeError::Invalid)
    );
    assert_eq!(
        Response::decode(&[2, 0, 0, 0, 8, 0]),
        Err(DecodeError::Invalid)
    );
    // Partial sectors, zero sectors, too many sectors.
    let mut frame = vec![0u8; 4 + 1 + 8 + 100];
    frame[..4].copy_from_slice(&(1u32 + 8 + 100).to_le_bytes());
    frame[4] = Opcode::DiskWrite as u8;
    assert_eq!(Request::decode(&frame), Err(DecodeError::Invalid));
    for count in [0u32, MAX_DISK_SECTORS + 1] {
        let mut buf = [0u8; 17];
        buf[..4].copy_from_slice(&13u32.to_le_bytes());
        buf[4] = Opcode::DiskRead as u8;
        buf[13..17].copy_from_slice(&count.to_le_bytes());
        assert_eq!(Request::decode(&buf), Err(DecodeError::Invalid));
    }
    // Encoding refuses what decoding would refuse.
    let mut buf = vec![0u8; 4096];
    assert_eq!(
        Request::DiskWrite {
            sector: 0,
            data: &[0; 3]
        }
        .encode(&mut buf),
        Err(EncodeError::Invalid)
    );
    assert_eq!(
        Request::NetSend(&[]).encode(&mut buf),
        Err(EncodeError::Invalid)
    );
    let big = vec![0u8; MAX_FRAME];
    assert_eq!(
        Request::Echo(&big).encode(&mut buf),
        Err(EncodeError::Invalid)
    );
}

#[test]
fn pseudo_random_bytes_never_panic() {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut buf = [0u8; 64];
    for _ in 0..20_000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (state >> 58) as usize;
        for byte in buf.iter_mut() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            *byte = (state >> 33) as u8;
        }
        // Keep the length prefix small sometimes so bodies get parsed.
        if state & 1 == 0 {
            buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        }
        let _ = Request::decode(&buf[..len.max(4)]);
        let _ = Response::decode(&buf[..len.max(4)]);
    }
}

#[test]
fn version_1_opcodes_keep_their_wire_values() {
    // Zygote's own guest and older hosts depend on these bytes.
    assert_eq!(Opcode::Exit as u8, 16);
    assert_eq!(ErrorCode::ReadOnly as u8, 11);
    let mut buf = [0u8; 16];
    let n = Request::Ping.encode(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[1, 0, 0, 0, 1]);
    let n = Request::Hello { version: 2 }.encode(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[5, 0, 0, 0, 17, 2, 0, 0, 0]);
}

#[test]
fn packed_strings_split_at_each_nul() {
    let strings = Strings::new(b"/bin/sh\0\0-c\0").unwrap();
    let items: Vec<&[u8]> = strings.iter().collect();
    assert_eq!(items, vec![&b"/bin/sh"[..], b"", b"-c"]);
    assert_eq!(Strings::EMPTY.iter().count(), 0);
    assert_eq!(Strings::new(b"no-terminator"), None);
}

#[test]
fn directory_entries_parse_to_the_last_byte_or_not_at_all() {
    let mut buf = [0u8; 64];
    let entry = DirEntry {
        kind: FileKind::Dir,
        size: 4096,
        name: b"etc",
    };
    let n = entry.write_to(&mut buf).unwrap();
    let n2 = DirEntry {
        kind: FileKind::File,
        size: 1,
        name: b"x",
    }
    .write_to(&mut buf[n..])
    .unwrap();
    let entries = Entries::new(&buf[..n + n2]).unwrap();
    let names: Vec<&[u8]> = entries.iter().map(|e| e.name).collect();
    assert_eq!(names, vec![&b"etc"[..], b"x"]);
    assert_eq!(entries.iter().next(), Some(entry));
    assert_eq!(Entries::new(&buf[..n + n2 - 1]), None);
    assert_eq!(entry.write_to(&mut buf[..n - 1]), None);
    assert_eq!(PortList::new(&[1, 2, 3]), None);
}

#[test]
fn bad_paths_argv_and_flags_are_invalid() {
    let mut buf = vec![0u8; 8192];
    let long = vec![b'a'; MAX_PATH + 1];
    for path in [&b""[..], b"a\0b", &long] {
        assert_eq!(
            Request::Stat(path).encode(&mut buf),
            Err(EncodeError::Invalid)
        );
        // The same body built by hand does not decode either.
        let mut frame = ((1 + path.len()) as u32).to_le_bytes().to_vec();
        frame.push(Opcode::Stat as u8);
        frame.extend_from_slice(path);
        assert_eq!(Request::decode(&frame), Err(DecodeError::Invalid));
    }
    let no_argv = Request::Exec(Exec {
        argv: Strings::EMPTY,
        env: Strings::EMPTY,
        cwd: b"",
        stdin: b"",
        timeout_ms: 0,
    });
    assert_eq!(no_argv.encode(&mut buf), Err(EncodeError::Invalid));
    // A flag byte other than 0 or 1.
    assert_eq!(
        Request::decode(&[3, 0, 0, 0, Opcode::Remove as u8, 2, b'a']),
        Err(DecodeError::Invalid)
    );
    // An exec event the protocol does not define.
    assert_eq!(
        Response::decode(&[3, 0, 0, 0, 0, Opcode::Exec as u8, 9]),
        Err(DecodeError::Invalid)
    );
    // Output events carry at least one byte.
    assert_eq!(
        Response::ExecOutput {
            stream: OutputStream::Stdout,
            data: b""
        }
        .encode(&mut buf),
        Err(EncodeError::Invalid)
    );
}
