//! Firecracker's external uffd handler protocol: Zygote's engine against a page server.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use zygote_snapshot::engine::{parse_handshake, GuestRegionUffdMapping, PageServerError};
use zygote_snapshot::memory::raw;
use zygote_snapshot::{
    EngineError, FailureSink, FirecrackerUffdEngine, MemoryEngine, PageSource, RestoredMemory,
    PAGE_SIZE,
};

fn channel_sink() -> (FailureSink, mpsc::Receiver<EngineError>) {
    let (tx, rx) = mpsc::channel();
    (
        Arc::new(move |e| {
            let _ = tx.send(e);
        }),
        rx,
    )
}

/// Starts the page-server binary on `socket` serving `image`; returns once it listens.
fn start_server(socket: &std::path::Path, image: &std::path::Path) -> Child {
    start_server_with(socket, image, &[])
}

fn start_server_with(socket: &std::path::Path, image: &std::path::Path, extra: &[&str]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_uffd_page_server"))
        .arg(socket)
        .arg(image)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "listening");
    child
}

/// Reads `len` bytes at `base` on another thread; `Some(bytes)` if it finished within `limit`.
fn read_within(
    restored: &RestoredMemory,
    offset: usize,
    len: usize,
    limit: Duration,
) -> Option<Vec<u8>> {
    let base = restored.mapping.as_ptr() as usize + offset;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let pages: Vec<u8> = (0..len / PAGE_SIZE)
            .flat_map(|p| common::read_mapping((base + p * PAGE_SIZE) as *const u8, PAGE_SIZE))
            .collect();
        let _ = tx.send(pages);
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn a_firecracker_page_server_process_serves_zygote_memory() {
    let layout = common::layout();
    let dir = common::temp_dir("fc");
    let image = dir.join("mem.raw");
    raw::write_raw(&common::patterned_guest_memory(&layout, 6), &layout, &image).unwrap();
    let socket = dir.join("uffd.sock");
    let mut server = start_server(&socket, &image);
    let (sink, failures) = channel_sink();
    let restored = FirecrackerUffdEngine::new(&socket)
        .restore(
            PageSource::open_raw(&image, &layout).unwrap(),
            &layout,
            sink,
        )
        .unwrap();
    let got = read_within(
        &restored,
        0,
        layout.size() as usize,
        Duration::from_secs(10),
    )
    .expect("reader blocked");
    assert!(
        got == common::expected(&layout, 6),
        "served memory differs from the image"
    );
    drop(restored);
    // Closing the connection ends the server cleanly.
    assert!(server.wait().unwrap().success());
    assert!(failures.try_recv().is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_page_server_serves_a_compressed_image_too() {
    let layout = common::layout();
    let dir = common::temp_dir("fc-zst");
    let image = dir.join("mem.zst");
    let mem = common::patterned_guest_memory(&layout, 9);
    zygote_snapshot::memory::compressed::write_compressed(
        &mem,
        &layout,
        zygote_snapshot::SnapshotId::random(),
        1,
        &image,
    )
    .unwrap();
    let socket = dir.join("uffd.sock");
    let mut server = start_server_with(&socket, &image, &["--compressed"]);
    let (sink, failures) = channel_sink();
    let source = PageSource::open_compressed(&image, &layout).unwrap();
    let restored = FirecrackerUffdEngine::new(&socket)
        .restore(source, &layout, sink)
        .unwrap();
    let got = read_within(
        &restored,
        0,
        layout.size() as usize,
        Duration::from_secs(10),
    )
    .expect("reader blocked");
    assert!(
        got == common::expected(&layout, 9),
        "served memory differs from the image"
    );
    drop(restored);
    assert!(server.wait().unwrap().success());
    assert!(failures.try_recv().is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_killed_page_server_is_reported_within_a_second_and_blocks_no_reader() {
    let layout = common::layout();
    let dir = common::temp_dir("fc-kill");
    let image = dir.join("mem.raw");
    raw::write_raw(&common::patterned_guest_memory(&layout, 6), &layout, &image).unwrap();
    let socket = dir.join("uffd.sock");
    let mut server = start_server(&socket, &image);
    let (sink, failures) = channel_sink();
    let restored = FirecrackerUffdEngine::new(&socket)
        .restore(
            PageSource::open_raw(&image, &layout).unwrap(),
            &layout,
            sink,
        )
        .unwrap();
    assert_eq!(
        read_within(&restored, 0, PAGE_SIZE, Duration::from_secs(5)).unwrap(),
        common::page_content(0, 6)
    );
    server.kill().unwrap();
    server.wait().unwrap();
    let err = failures
        .recv_timeout(Duration::from_secs(1))
        .expect("no failure within a second");
    assert!(
        matches!(err, EngineError::PageServer(PageServerError::Disconnected)),
        "{err:?}"
    );
    assert!(
        read_within(
            &restored,
            64 * PAGE_SIZE,
            64 * PAGE_SIZE,
            Duration::from_secs(1)
        )
        .is_some(),
        "a reader stayed blocked"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A fake page server: accepts, takes the handshake, then runs `then` with the stream.
fn fake_server(
    socket: &std::path::Path,
    then: impl FnOnce(std::os::unix::net::UnixStream, std::fs::File) + Send + 'static,
) {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let (len, fd) = stream.recv_with_fd(&mut buf).unwrap();
        let mappings: Vec<GuestRegionUffdMapping> = serde_json::from_slice(&buf[..len]).unwrap();
        assert_eq!(mappings.len(), 2);
        assert!(mappings
            .iter()
            .all(|m| m.page_size == PAGE_SIZE && m.page_size_kib == PAGE_SIZE));
        then(stream, fd.unwrap());
    });
}

#[test]
fn a_page_server_answering_garbage_is_reported_and_blocks_no_reader() {
    let layout = common::layout();
    let dir = common::temp_dir("fc-garbage");
    let image = dir.join("mem.raw");
    raw::write_raw(&common::patterned_guest_memory(&layout, 6), &layout, &image).unwrap();
    let socket = dir.join("uffd.sock");
    let (go_tx, go_rx) = mpsc::channel::<()>();
    fake_server(&socket, move |mut stream, _uffd| {
        let _ = go_rx.recv();
        std::io::Write::write_all(&mut stream, b"{\"not\": \"a protocol message\"}").unwrap();
        std::thread::sleep(Duration::from_secs(3));
    });
    let (sink, failures) = channel_sink();
    let restored = FirecrackerUffdEngine::new(&socket)
        .restore(
            PageSource::open_raw(&image, &layout).unwrap(),
            &layout,
            sink,
        )
        .unwrap();
    go_tx.send(()).unwrap();
    let err = failures
        .recv_timeout(Duration::from_secs(1))
        .expect("no failure within a second");
    assert!(
        matches!(
            err,
            EngineError::PageServer(PageServerError::UnexpectedMessage { .. })
        ),
        "{err:?}"
    );
    assert!(
        read_within(&restored, 0, 16 * PAGE_SIZE, Duration::from_secs(1)).is_some(),
        "a reader stayed blocked"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_page_server_that_never_serves_is_reported_after_the_bound() {
    let layout = common::layout();
    let dir = common::temp_dir("fc-hang");
    let image = dir.join("mem.raw");
    raw::write_raw(&common::patterned_guest_memory(&layout, 6), &layout, &image).unwrap();
    let socket = dir.join("uffd.sock");
    fake_server(&socket, |_stream, _uffd| {
        std::thread::sleep(Duration::from_secs(5))
    });
    let (sink, failures) = channel_sink();
    let engine = FirecrackerUffdEngine::new(&socket).response_bound(Duration::from_millis(300));
    let restored = engine
        .clone()
        .restore(
            PageSource::open_raw(&image, &layout).unwrap(),
            &layout,
            sink,
        )
        .unwrap();
    // The reader blocks until the watchdog gives up on the server, then reads zeros.
    let got = read_within(&restored, 0, PAGE_SIZE, Duration::from_secs(1))
        .expect("a reader stayed blocked");
    assert_eq!(got, vec![0u8; PAGE_SIZE]);
    let err = failures
        .recv_timeout(Duration::from_millis(100))
        .expect("no failure reported");
    assert!(
        matches!(
            err,
            EngineError::PageServer(PageServerError::Unresponsive(_))
        ),
        "{err:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_handshake_outside_the_image_is_refused() {
    let layout = common::layout();
    let ok = br#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096}]"#;
    assert_eq!(parse_handshake(ok, &layout).unwrap().len(), 1);
    let old = br#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":4096}]"#;
    assert_eq!(parse_handshake(old, &layout).unwrap().len(), 1);
    let past_end = format!(
        r#"[{{"base_host_virt_addr":4096,"size":8192,"offset":{},"page_size":4096}}]"#,
        layout.size()
    );
    assert!(matches!(
        parse_handshake(past_end.as_bytes(), &layout),
        Err(PageServerError::BadRegion { index: 0 })
    ));
    let unaligned = br#"[{"base_host_virt_addr":4097,"size":8192,"offset":0,"page_size":4096}]"#;
    assert!(matches!(
        parse_handshake(unaligned, &layout),
        Err(PageServerError::BadRegion { index: 0 })
    ));
    assert!(matches!(
        parse_handshake(b"garbage", &layout),
        Err(PageServerError::BadHandshake(_))
    ));
}
