//! A page server speaking Firecracker's external userfaultfd handler protocol.
//!
//! Usage: `uffd_page_server <socket-path> <memory-image> [neighbours] [--compressed]`
//!
//! Listens on `socket-path`, prints `listening` on stdout, accepts one VMM (Firecracker or
//! Zygote's `FirecrackerUffdEngine`), and serves its page faults from the image (raw, or a
//! Zygote compressed image with `--compressed`) until the
//! VMM closes the connection. Exits 0 then, 1 on any error (printed on stderr).

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use zygote_snapshot::engine::{raw_image_layout, serve_firecracker_handler};
use zygote_snapshot::PageSource;

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let compressed = args.iter().any(|a| a == "--compressed");
    args.retain(|a| a != "--compressed");
    if args.len() < 3 {
        eprintln!(
            "usage: {} <socket-path> <raw-memory-image> [neighbours]",
            args[0]
        );
        std::process::exit(2);
    }
    let socket = PathBuf::from(&args[1]);
    let image = PathBuf::from(&args[2]);
    let neighbours = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(7);
    if let Err(e) = run(&socket, &image, neighbours, compressed) {
        let mut msg = format!("uffd_page_server: {e}");
        let mut source = std::error::Error::source(&*e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        eprintln!("{msg}");
        std::process::exit(1);
    }
}

fn run(
    socket: &std::path::Path,
    image: &std::path::Path,
    neighbours: u64,
    compressed: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let source = if compressed {
        PageSource::open_compressed_own_layout(image)?
    } else {
        PageSource::open_raw(image, &raw_image_layout(image)?)?
    };
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    println!("listening");
    std::io::stdout().flush()?;
    serve_firecracker_handler(&listener, source, neighbours)?;
    Ok(())
}
