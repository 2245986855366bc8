//! A memory engine written outside Zygote, against its public API only: the restored guest's
//! pages are fetched, one fault at a time, from another process.
//!
//! ```sh
//! cargo run --release --example remote_engine
//! ```
//!
//! The example boots Zygote's guest kernel (agent workload, vsock), has the agent bump its
//! counter and write 16 MiB, pauses the guest and writes a raw snapshot. It then starts a copy
//! of itself as a page server (`remote_engine serve <memory file>`, with one end of a Unix
//! socket pair as its stdin) and restores the snapshot through [`RemoteEngine`]:
//!
//! - `restore` makes a memfd of the guest's size, maps it shared, and registers the mapping
//!   with userfaultfd (missing-page mode), so every first touch of a page, by a vCPU (through
//!   KVM) or by the VMM's device threads, stops in the kernel and is reported to the engine;
//! - a handler thread reads those reports, asks the server for the page (request: the page
//!   index as a little-endian `u64`; answer: the page's 4096 bytes) and places it with
//!   `UFFDIO_COPY`, which wakes the faulting thread;
//! - if the server goes away, the handler tells the VMM through the failure sink (the VM
//!   stops with an error) and unregisters the memory, so no thread stays blocked.
//!
//! The page index is the byte offset in the memory layout divided by 4096: a raw image holds
//! page `i` at file offset `i * 4096`, the same place the engine's mapping holds it.
//! The example checks that the restored agent has the counter and the 16 MiB checksum, and
//! prints one line: `engine=remote counter=<n> checksum_ok=true faults=<n> restore_us=<n>
//! first_ping_us=<n> checksum_ms=<n>`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zygote::snapshot_format::{
    EngineError, EngineService, FailureSink, Mapping, MemoryEngine, MemoryLayout, PageSource,
    RestoredMemory, StatsCounters, PAGE_SIZE,
};
use zygote::state::DeviceResources;
use zygote::{ConsoleBuffer, MemoryFormat, RestoreConfig, SerialOutput, Snapshot, Vm, VsockConfig};
use zygote_guest::{Workload, READY_LINE};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const COUNTER: u64 = 7;
const TOUCH_MIB: u32 = 16;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(args.get(2).ok_or("serve needs the memory file")?),
        _ => {
            let dir = std::env::temp_dir().join(format!("zygote-remote-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let result = restore_remotely(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            result
        }
    }
}

/// The page server: answers page requests on stdin (a Unix socket) from the raw image.
fn serve(memory: &str) -> Result<()> {
    let image = File::open(memory)?;
    let pages = image.metadata()?.len() / PAGE_SIZE as u64;
    // SAFETY: the parent gave us a Unix socket as fd 0; nothing else in this process uses it.
    let mut socket = UnixStream::from(unsafe { OwnedFd::from_raw_fd(0) });
    let mut page = vec![0u8; PAGE_SIZE];
    let mut request = [0u8; 8];
    // The engine closing its end ends the loop.
    while socket.read_exact(&mut request).is_ok() {
        let index = u64::from_le_bytes(request);
        if index >= pages {
            return Err(format!("page {index} is outside the image").into());
        }
        image.read_exact_at(&mut page, index * PAGE_SIZE as u64)?;
        socket.write_all(&page)?;
    }
    Ok(())
}

/// Guest memory whose pages come from a page server at the other end of `server`.
struct RemoteEngine {
    server: Option<UnixStream>,
}

impl MemoryEngine for RemoteEngine {
    fn name(&self) -> &str {
        "remote"
    }

    fn restore(
        &mut self,
        _source: PageSource,
        layout: &MemoryLayout,
        on_failure: FailureSink,
    ) -> std::result::Result<RestoredMemory, EngineError> {
        let os = |op| move |source| EngineError::Os { op, source };
        let server = self.server.take().ok_or(EngineError::Os {
            op: "take the page server connection (one restore per engine)",
            source: std::io::ErrorKind::AlreadyExists.into(),
        })?;
        let memfd = memfd(layout.size()).map_err(os("memfd_create"))?;
        let flags = libc::MAP_SHARED | libc::MAP_NORESERVE;
        let mapping = Mapping::map_file(
            &memfd,
            layout.size(),
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
        )
        .map_err(os("mmap"))?;
        let uffd = userfaultfd::UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            // KVM touches guest memory from the kernel: those faults must be reported too.
            .user_mode_only(false)
            .create()
            .map_err(|source| EngineError::Userfaultfd {
                op: "create",
                source,
            })?;
        uffd.register(mapping.as_ptr().cast(), mapping.len())
            .map_err(|source| EngineError::Userfaultfd {
                op: "register",
                source,
            })?;
        let counters = Arc::new(StatsCounters::default());
        // Dropping `stop` makes `stopped` readable: the handler's signal to return.
        let (stop, stopped) = UnixStream::pair().map_err(os("socketpair"))?;
        let handler = Handler {
            uffd,
            base: mapping.as_ptr() as usize,
            len: mapping.len(),
            server,
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("remote-pages".into())
            .spawn(move || handler.run(&stopped, on_failure))
            .map_err(os("spawn the fault handler"))?;
        let service = EngineService::new(
            counters,
            Box::new(move || {
                drop(stop);
                let _ = thread.join();
            }),
        );
        Ok(RestoredMemory {
            mapping,
            memfd: Some(memfd),
            service: Some(service),
        })
    }
}

/// Serves the faults of one registered mapping from the page server.
struct Handler {
    uffd: userfaultfd::Uffd,
    base: usize,
    len: usize,
    server: UnixStream,
    counters: Arc<StatsCounters>,
}

impl Handler {
    fn run(mut self, stopped: &UnixStream, on_failure: FailureSink) {
        if let Err(error) = self.serve_until(stopped) {
            on_failure(error);
            // Wakes every blocked thread; later touches get zero pages (the VM is stopping).
            let _ = self
                .uffd
                .unregister(self.base as *mut libc::c_void, self.len);
        }
    }

    fn serve_until(&mut self, stopped: &UnixStream) -> std::result::Result<(), EngineError> {
        let mut page = vec![0u8; PAGE_SIZE];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stopped.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(EngineError::Os {
                    op: "poll",
                    source: error,
                });
            }
            if fds[1].revents != 0 {
                return Ok(());
            }
            while let Some(event) =
                self.uffd
                    .read_event()
                    .map_err(|source| EngineError::Userfaultfd {
                        op: "read event",
                        source,
                    })?
            {
                if let userfaultfd::Event::Pagefault { addr, .. } = event {
                    self.serve(addr as usize, &mut page)?;
                }
            }
        }
    }

    /// Fetches the page holding `addr` and places it.
    fn serve(&mut self, addr: usize, page: &mut [u8]) -> std::result::Result<(), EngineError> {
        let at = addr & !(PAGE_SIZE - 1);
        let index = ((at - self.base) / PAGE_SIZE) as u64;
        let fetch = |server: &mut UnixStream, page: &mut [u8]| {
            server.write_all(&index.to_le_bytes())?;
            server.read_exact(page)
        };
        fetch(&mut self.server, page).map_err(|source| EngineError::Os {
            op: "fetch a page from the page server",
            source,
        })?;
        self.counters
            .faults
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `at` is a page of the registered mapping and `page` holds PAGE_SIZE bytes;
        // COPY fills the page only if it is still missing, then wakes the faulting threads.
        match unsafe {
            self.uffd.copy(
                page.as_ptr().cast(),
                at as *mut libc::c_void,
                PAGE_SIZE,
                true,
            )
        } {
            Ok(_) => {
                self.counters
                    .pages_copied
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            // Another fault on the same page was served first: just wake whoever waits.
            Err(userfaultfd::Error::CopyFailed(errno)) if errno as i32 == libc::EEXIST => self
                .uffd
                .wake(at as *mut libc::c_void, PAGE_SIZE)
                .map_err(|source| EngineError::Userfaultfd { op: "wake", source }),
            Err(source) => Err(EngineError::Userfaultfd { op: "copy", source }),
        }
    }
}

fn memfd(size: u64) -> std::io::Result<File> {
    // SAFETY: a valid NUL-terminated name and valid flags.
    let fd = unsafe { libc::memfd_create(c"remote-engine".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// Boots, snapshots, and restores the guest through a page server in another process.
fn restore_remotely(dir: &std::path::Path) -> Result<()> {
    let console = ConsoleBuffer::new();
    let vm = zygote_examples::guest(&Workload::Agent, 256)
        .serial_output(SerialOutput::Buffer(console.clone()))
        .vsock(VsockConfig {
            guest_cid: 3,
            uds_path: dir.join("parent.vsock"),
        })
        .build()?
        .start()?;
    if !console.wait_for(READY_LINE, Duration::from_secs(60)) {
        return Err(format!("the guest did not start:\n{}", console.text()).into());
    }
    let mut agent = vm.agent()?;
    agent.counter_add(COUNTER)?;
    let (addr, sum) = agent.touch(TOUCH_MIB, 0x7e40_7e40)?;
    drop(agent);
    vm.pause()?;
    let snapshot_dir = dir.join("snapshot");
    vm.snapshot(&snapshot_dir, MemoryFormat::Raw)?;
    drop(vm);

    let (engine_end, server_end) = UnixStream::pair()?;
    let mut server = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg(snapshot_dir.join(zygote::snapshot::MEMORY_FILE))
        .stdin(Stdio::from(OwnedFd::from(server_end)))
        .spawn()?;
    let mut engine = RemoteEngine {
        server: Some(engine_end),
    };
    let snapshot = Snapshot::load(&snapshot_dir)?;
    let config = RestoreConfig {
        devices: DeviceResources {
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: dir.join("restored.vsock"),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let started = Instant::now();
    let vm = Vm::restore_snapshot(&snapshot, &mut engine, config)?.start()?;
    let restore_us = started.elapsed().as_micros();
    let mut agent = vm.agent()?;
    agent.ping()?;
    let first_ping_us = started.elapsed().as_micros();
    let counter = agent.counter_get()?;
    let checking = Instant::now();
    let checksum_ok = agent.checksum(addr, u64::from(TOUCH_MIB) << 20)? == sum;
    let checksum_ms = checking.elapsed().as_millis();
    let faults = vm.engine_stats().map_or(0, |s| s.faults);
    drop(agent);
    drop(vm);
    // The VM's teardown stops the handler, which closes the socket: the server then exits.
    let status = server.wait()?;
    println!(
        "engine=remote counter={counter} checksum_ok={checksum_ok} faults={faults} restore_us={restore_us} first_ping_us={first_ping_us} checksum_ms={checksum_ms}"
    );
    if counter != COUNTER || !checksum_ok || !status.success() {
        return Err(format!(
            "the restored guest differs (counter {counter}), or the server failed ({status})"
        )
        .into());
    }
    Ok(())
}
