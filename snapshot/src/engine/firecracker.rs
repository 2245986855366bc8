//! Firecracker's external userfaultfd handler protocol, both sides.
//!
//! The VMM side ([`FirecrackerUffdEngine`]) creates the guest memory, registers it with a
//! userfaultfd (MISSING mode), connects to the page server's Unix socket and sends, in one
//! message, the JSON array of [`GuestRegionUffdMapping`] with the userfaultfd attached as
//! `SCM_RIGHTS`, exactly as Firecracker does on snapshot load with `mem_backend` of type
//! `Uffd`. The page server then serves every fault through the userfaultfd (`UFFDIO_COPY`,
//! `UFFDIO_ZEROPAGE`); the socket stays open for the life of the VM and carries nothing else.
//! So page servers written for Firecracker serve Zygote unchanged.
//!
//! Failure detection on the VMM side (a watchdog thread, polling every 100 ms):
//! - the socket reaches end of file or errors (the page server died or closed it);
//! - the page server sends anything on the socket (the protocol has no replies: garbage);
//! - a fault stays unread on the userfaultfd for longer than the response bound
//!   ([`DEFAULT_RESPONSE_BOUND`], [`FirecrackerUffdEngine::response_bound`]): the server hangs.
//!
//! On any of these the engine calls the failure sink and unregisters the memory, which wakes
//! every blocked faulting thread (later faults read zeros; the VMM stops the VM).

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use userfaultfd::Uffd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::fault::{direct_map, new_uffd, register, Exit, Handler, Region};
use super::{
    EngineError, EngineService, FailureSink, Mapping, MemoryEngine, RestoredMemory, StatsCounters,
};
use crate::memory::{MemoryLayout, PageBitmap, PageSource, PAGE_SIZE, PAGE_SIZE_U64};

/// How long a fault may stay unread before the page server is declared unresponsive.
pub const DEFAULT_RESPONSE_BOUND: Duration = Duration::from_secs(2);
/// Largest handshake message a page server accepts, in bytes.
pub const MAX_HANDSHAKE_LEN: usize = 64 << 10;
/// Most regions a handshake may describe.
pub const MAX_REGIONS: usize = 64;

/// One guest memory region as Firecracker describes it to an external page server: `size`
/// bytes at host address `base_host_virt_addr` hold the memory image's bytes from `offset`.
/// Field names and meaning follow Firecracker's `GuestRegionUffdMapping` (JSON);
/// `page_size_kib` is Firecracker's deprecated duplicate of `page_size` (in bytes despite its
/// name), sent for older page servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRegionUffdMapping {
    /// Host virtual address of the region's first byte.
    pub base_host_virt_addr: u64,
    /// Region length in bytes.
    pub size: usize,
    /// Offset of the region's bytes in the memory image.
    pub offset: u64,
    /// Page size of the region in bytes.
    #[serde(default)]
    pub page_size: usize,
    /// Page size of the region in bytes (Firecracker's deprecated name).
    #[serde(default)]
    pub page_size_kib: usize,
}

/// What went wrong between the engine and a page server.
#[derive(Debug, thiserror::Error)]
pub enum PageServerError {
    /// Connecting to or talking on the socket failed.
    #[error("page server socket {path}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The page server closed the connection (it exited or crashed).
    #[error("the page server closed the connection")]
    Disconnected,
    /// The page server sent bytes; the protocol has no replies.
    #[error("the page server sent {len} unexpected bytes")]
    UnexpectedMessage {
        /// How many bytes arrived.
        len: usize,
    },
    /// A fault stayed unanswered past the response bound.
    #[error("a fault stayed unanswered for {0:?}")]
    Unresponsive(Duration),
    /// The handshake did not carry a userfaultfd.
    #[error("the handshake carried no userfaultfd")]
    NoUffd,
    /// The handshake JSON is not a valid region list.
    #[error("bad handshake")]
    BadHandshake(#[source] serde_json::Error),
    /// A region does not fit the page source, is not page-aligned, or uses another page size.
    #[error("region {index} does not fit the memory image or is not aligned")]
    BadRegion {
        /// Index of the region.
        index: usize,
    },
    /// Serving a fault failed.
    #[error("serving faults")]
    Serve(#[source] Box<EngineError>),
}

/// Hands the restored memory to an external page server speaking Firecracker's protocol.
///
/// Memory is a sealed memfd mapped shared (so the VM can still be snapshotted by fd and
/// forked); page servers written for Firecracker's anonymous memory serve it the same way,
/// since `UFFDIO_COPY` and `UFFDIO_ZEROPAGE` work on shmem. The engine does not read the
/// page source: the server opens the image itself. The source is still checked against the
/// layout, so a restore never starts on an image shorter than the layout.
#[derive(Debug, Clone)]
pub struct FirecrackerUffdEngine {
    socket: PathBuf,
    response_bound: Duration,
}

impl FirecrackerUffdEngine {
    /// An engine that connects to the page server listening at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        FirecrackerUffdEngine {
            socket: socket.into(),
            response_bound: DEFAULT_RESPONSE_BOUND,
        }
    }

    /// How long a fault may stay unread before the server is declared unresponsive.
    pub fn response_bound(mut self, bound: Duration) -> Self {
        self.response_bound = bound;
        self
    }
}

impl MemoryEngine for FirecrackerUffdEngine {
    fn name(&self) -> &str {
        "firecracker-uffd"
    }

    fn restore(
        &mut self,
        source: PageSource,
        layout: &MemoryLayout,
        on_failure: FailureSink,
    ) -> Result<RestoredMemory, EngineError> {
        if source.layout() != layout {
            return Err(EngineError::LayoutMismatch);
        }
        drop(source);
        let memfd = crate::sys::sealed_memfd("zygote-restore-fc-uffd", layout.size())
            .map_err(EngineError::os("memfd_create"))?;
        let mapping = Mapping::map_file(
            &memfd,
            layout.size(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
        )
        .map_err(EngineError::os("mmap memfd"))?;
        let uffd = new_uffd(true)?;
        register(&uffd, mapping.as_ptr(), mapping.len())?;
        let mappings: Vec<GuestRegionUffdMapping> = layout
            .ranges()
            .iter()
            .map(|r| GuestRegionUffdMapping {
                base_host_virt_addr: mapping.as_ptr() as u64 + r.offset,
                size: r.len as usize,
                offset: r.offset,
                page_size: PAGE_SIZE,
                page_size_kib: PAGE_SIZE,
            })
            .collect();
        let socket_err = |source| PageServerError::Socket {
            path: self.socket.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.socket).map_err(socket_err)?;
        let json = serde_json::to_vec(&mappings).map_err(PageServerError::BadHandshake)?;
        stream
            .send_with_fd(&json[..], uffd.as_raw_fd())
            .map_err(|e| socket_err(std::io::Error::from_raw_os_error(e.errno())))?;
        let watchdog = Watchdog {
            stream,
            uffd,
            host: mapping.as_ptr() as usize,
            len: mapping.len(),
            bound: self.response_bound,
            on_failure,
        };
        let counters = Arc::new(StatsCounters::default());
        let stop = crate::sys::eventfd().map_err(EngineError::os("eventfd"))?;
        let stop_thread = stop.try_clone().map_err(EngineError::os("dup eventfd"))?;
        let thread = std::thread::Builder::new()
            .name("zygote-fc-uffd-watchdog".into())
            .spawn(move || watchdog.run(&stop_thread))
            .map_err(EngineError::os("spawn watchdog"))?;
        let service = EngineService::new(
            counters,
            Box::new(move || {
                crate::sys::eventfd_signal(&stop);
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

/// Watches the page server on the VMM side.
struct Watchdog {
    stream: UnixStream,
    uffd: Uffd,
    host: usize,
    len: usize,
    bound: Duration,
    on_failure: FailureSink,
}

impl Watchdog {
    fn run(self, stop: &std::fs::File) {
        let fds = [stop.as_raw_fd(), self.stream.as_raw_fd()];
        let mut unread_since: Option<Instant> = None;
        let failure = loop {
            let revents = match crate::sys::poll_readable(&fds, 100) {
                Ok(r) => r,
                Err(source) => {
                    break PageServerError::Socket {
                        path: PathBuf::new(),
                        source,
                    }
                }
            };
            if revents[0] != 0 {
                return;
            }
            if revents[1] != 0 {
                let mut buf = [0u8; 256];
                match std::io::Read::read(&mut &self.stream, &mut buf) {
                    Ok(0) => break PageServerError::Disconnected,
                    Ok(len) => break PageServerError::UnexpectedMessage { len },
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break PageServerError::Disconnected,
                }
            }
            let pending = crate::sys::poll_readable(&[self.uffd.as_raw_fd()], 0)
                .map(|r| r[0] & libc::POLLIN != 0)
                .unwrap_or(false);
            match (pending, unread_since) {
                (false, _) => unread_since = None,
                (true, None) => unread_since = Some(Instant::now()),
                (true, Some(t)) if t.elapsed() > self.bound => {
                    break PageServerError::Unresponsive(t.elapsed())
                }
                (true, Some(_)) => {}
            }
        };
        (self.on_failure)(EngineError::PageServer(failure));
        let _ = self
            .uffd
            .unregister(self.host as *mut libc::c_void, self.len);
    }
}

/// Accepts one VMM on `listener` and serves its faults from `source` until the VMM closes
/// the connection: the page-server side of Firecracker's protocol. Works for Firecracker
/// and for [`FirecrackerUffdEngine`]. Each region's `offset .. offset + size` must lie in the
/// source's layout. `neighbours` pages after each faulting one are served with it.
///
/// # Errors
/// [`PageServerError`] for a bad handshake or a failure while serving (the VMM side then
/// sees the connection close).
pub fn serve_firecracker_handler(
    listener: &UnixListener,
    source: PageSource,
    neighbours: u64,
) -> Result<(), PageServerError> {
    let (stream, _) = listener
        .accept()
        .map_err(|source| PageServerError::Socket {
            path: PathBuf::new(),
            source,
        })?;
    serve_connection(stream, source, neighbours)
}

/// Serves one accepted VMM connection (see [`serve_firecracker_handler`]).
///
/// # Errors
/// As [`serve_firecracker_handler`].
pub fn serve_connection(
    stream: UnixStream,
    source: PageSource,
    neighbours: u64,
) -> Result<(), PageServerError> {
    let mut buf = vec![0u8; MAX_HANDSHAKE_LEN];
    let (len, file) = stream
        .recv_with_fd(&mut buf)
        .map_err(|e| PageServerError::Socket {
            path: PathBuf::new(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
    let file = file.ok_or(PageServerError::NoUffd)?;
    let mappings = parse_handshake(&buf[..len], source.layout())?;
    // SAFETY: the fd came to us over SCM_RIGHTS and is owned by `file`; ownership moves to
    // the Uffd, which closes it.
    let uffd = unsafe {
        <Uffd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(file))
    };
    let regions = mappings
        .iter()
        .map(|m| Region {
            host: m.base_host_virt_addr as usize,
            size: m.size as u64,
            offset: m.offset,
        })
        .collect();
    let pages = source.layout().pages();
    let failure: Arc<Mutex<Option<EngineError>>> = Arc::default();
    let sink_slot = failure.clone();
    let direct = direct_map(&source);
    let handler = Handler {
        uffd,
        regions,
        source,
        served: Arc::new(Mutex::new(PageBitmap::new(pages))),
        neighbours,
        counters: Arc::new(StatsCounters::default()),
        on_failure: Some(Arc::new(move |e| {
            *sink_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e)
        })),
        zeropage: true,
        buf: Vec::new(),
        direct,
        stop_page: None,
    };
    match handler.run(&stream) {
        Exit::Stopped => Ok(()),
        Exit::Failed => {
            let err = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
            Err(PageServerError::Serve(Box::new(
                err.unwrap_or(EngineError::LayoutMismatch),
            )))
        }
    }
}

/// Parses and checks a handshake against the layout of the image the server serves.
///
/// # Errors
/// [`PageServerError::BadHandshake`], [`PageServerError::BadRegion`].
pub fn parse_handshake(
    bytes: &[u8],
    layout: &MemoryLayout,
) -> Result<Vec<GuestRegionUffdMapping>, PageServerError> {
    let mappings: Vec<GuestRegionUffdMapping> =
        serde_json::from_slice(bytes).map_err(PageServerError::BadHandshake)?;
    if mappings.len() > MAX_REGIONS {
        return Err(PageServerError::BadRegion { index: MAX_REGIONS });
    }
    for (index, m) in mappings.iter().enumerate() {
        let page_size = if m.page_size != 0 {
            m.page_size
        } else {
            m.page_size_kib
        };
        let end = m.offset.checked_add(m.size as u64);
        let aligned = [m.base_host_virt_addr, m.size as u64, m.offset]
            .iter()
            .all(|v| v % PAGE_SIZE_U64 == 0);
        if page_size != PAGE_SIZE
            || !aligned
            || m.size == 0
            || end.is_none_or(|e| e > layout.size())
        {
            return Err(PageServerError::BadRegion { index });
        }
    }
    Ok(mappings)
}

/// The layout of a raw image file of `path` as a page server sees it: one range of the
/// file's length rounded down to pages (Firecracker servers know offsets, not guest
/// addresses).
///
/// # Errors
/// [`PageServerError::Socket`] with the I/O error if the file cannot be read; a file under
/// one page is [`PageServerError::BadRegion`].
pub fn raw_image_layout(path: &Path) -> Result<MemoryLayout, PageServerError> {
    let len = std::fs::metadata(path)
        .map_err(|source| PageServerError::Socket {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    MemoryLayout::single(len - len % PAGE_SIZE_U64)
        .map_err(|_| PageServerError::BadRegion { index: 0 })
}
