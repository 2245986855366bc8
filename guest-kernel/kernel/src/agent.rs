//! The `agent` workload: brings up the virtio devices, then serves the agent protocol
//! (`zygote_guest_proto::agent`) on vsock port `AGENT_PORT` to any number of host connections,
//! one poll loop over all of them.
//!
//! Each connection is a small state machine ([`Session`]). Frames that fit in a connection's
//! receive ring are decoded from a shared scratch copy; a larger frame (up to `MAX_FRAME`)
//! streams into the one big request buffer, which one connection owns at a time. Responses
//! are sent before the next connection is served (polling the device meanwhile); `Sink` and
//! `Source` streams advance a little on every pass, so they never hold the others up.
//! `NetRecv` and `ConnectHost` wait in place (polling vsock, bounded by their timeouts).

use zygote_guest_proto::agent::fill_source;
use zygote_guest_proto::agent::{
    frame_len, DecodeError, ErrorCode, Request, Response, StreamChecksum, AGENT_COUNTER_ADDR,
    AGENT_PORT, LEN_PREFIX, MAX_FRAME, MAX_HOST_REPLY, MAX_NET_FRAME, SECTOR_SIZE,
};
use zygote_guest_proto::{exit_code, Checksum, ERROR_PREFIX, LINE_PREFIX, READY_LINE};

use crate::arena::Arena;
use crate::boot_params::BootParams;
use crate::clock::Clock;
use crate::console::Console;
use crate::exit::exit;
use crate::println;
use crate::virtio::blk::BlkError;
use crate::virtio::vsock::{ConnId, ConnState, Vsock, CONN_BUF, MAX_CONNS};
use crate::virtio::{self, Devices};
use crate::workloads::{fill_and_checksum, touch_start};

/// How long a response may wait for the host's credit before the connection is dropped.
const SEND_TIMEOUT_MS: u64 = 10_000;
/// How long `ConnectHost` waits for the host to accept, and then for each reply byte.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Bytes of the `Source` stream generated per pass.
const SOURCE_CHUNK: usize = 64 * 1024;
/// Room for the largest response frame (an `Echo` of `MAX_ECHO` bytes).
const RESPONSE_BUF: usize = LEN_PREFIX + MAX_FRAME;

/// What a connection is doing.
#[derive(Clone, Copy)]
enum Session {
    /// No connection (or one the agent is done with).
    None,
    /// Waiting for the next request frame.
    Idle,
    /// Streaming a large frame of `total` bytes into the big buffer; `have` so far.
    Big { have: usize, total: usize },
    /// Receiving `left` more raw bytes of a `Sink`.
    Sink { left: u64, sum: StreamChecksum },
    /// Sending `left` more bytes of a `Source` from stream offset `offset`.
    Source { left: u64, offset: u64, seed: u64 },
}

/// The agent's buffers and devices.
struct Agent {
    devices: Devices,
    clock: Clock,
    /// Where `Touch` writes, and the first address it may not reach (the arena).
    touch_start: u64,
    touch_limit: u64,
    /// MAX_CONNS sessions, in arena memory (kept off the small user stack).
    sessions: &'static mut [Session],
    big_owner: Option<ConnId>,
    /// LEN_PREFIX + MAX_FRAME bytes: one large request at a time.
    big: &'static mut [u8],
    /// CONN_BUF bytes: a small request copied out of a ring, or stream data.
    scratch: &'static mut [u8],
    /// RESPONSE_BUF bytes: the response being sent.
    response: &'static mut [u8],
    /// MAX_DISK_SECTORS sectors: disk and net data.
    data: &'static mut [u8],
    boot: BootParams,
}

/// Runs the agent; never returns.
pub fn run(cmdline: &str, boot: &BootParams) -> ! {
    // SAFETY: the linker script reserves the page at AGENT_COUNTER_ADDR for the counter and
    // nothing else uses it; it is identity-mapped RAM.
    unsafe { (AGENT_COUNTER_ADDR as *mut u64).write_volatile(0) };
    let start = touch_start();
    let Some(mut arena) = Arena::at_top_of_ram(boot, start) else {
        fail("agent: not enough RAM for the agent's buffers")
    };
    let clock = Clock::new();
    let devices = virtio::discover(cmdline, &mut arena, clock);
    if devices.vsock.is_none() {
        fail("agent: no virtio-vsock device")
    }
    let mut take = |size: usize| -> &'static mut [u8] {
        let Some(ptr) = arena.alloc_uninit(size, 4096) else {
            fail("agent: out of arena memory")
        };
        // SAFETY: the arena handed out `size` bytes nobody else uses, for the whole run; they
        // are zeroed here so the slice is initialized.
        unsafe {
            ptr.write_bytes(0, size);
            core::slice::from_raw_parts_mut(ptr, size)
        }
    };
    let big = take(LEN_PREFIX + MAX_FRAME);
    let scratch = take(CONN_BUF.max(SOURCE_CHUNK));
    let response = take(RESPONSE_BUF);
    let data = take(zygote_guest_proto::agent::MAX_DISK_SECTORS as usize * SECTOR_SIZE);
    let Some(sessions) = arena.alloc_slice(MAX_CONNS, Session::None) else {
        fail("agent: out of arena memory")
    };
    let mut agent = Agent {
        devices,
        clock,
        touch_start: start,
        touch_limit: arena.start(),
        sessions,
        big_owner: None,
        big,
        scratch,
        response,
        data,
        boot: *boot,
    };
    let blk = agent.devices.blk.as_ref().map_or(0, |blk| blk.capacity());
    let mac = agent.devices.net.as_ref().map(|net| net.mac());
    let cid = agent.vsock().guest_cid();
    println!("{LINE_PREFIX}agent blk_sectors={blk} net_mac={mac:02x?} vsock_cid={cid}");
    agent.vsock().listen(AGENT_PORT);
    Console.write_bytes(READY_LINE.as_bytes());
    agent.serve()
}

fn fail(reason: &str) -> ! {
    println!("{ERROR_PREFIX}{reason}");
    exit(exit_code::AGENT_ERROR)
}

impl Agent {
    fn vsock(&mut self) -> &mut Vsock {
        match self.devices.vsock.as_mut() {
            Some(vsock) => vsock,
            None => fail("agent: no virtio-vsock device"),
        }
    }

    fn serve(&mut self) -> ! {
        loop {
            self.vsock().poll();
            while let Some(id) = self.vsock().accept() {
                self.end_session(id);
                self.sessions[id] = Session::Idle;
            }
            for id in 0..MAX_CONNS {
                if !matches!(self.sessions[id], Session::None) {
                    self.step(id);
                }
            }
            core::hint::spin_loop();
        }
    }

    /// Drops connection `id`'s session (and the big buffer if it held it).
    fn end_session(&mut self, id: ConnId) {
        self.sessions[id] = Session::None;
        if self.big_owner == Some(id) {
            self.big_owner = None;
        }
    }

    /// Closes connection `id` and forgets its session.
    fn hang_up(&mut self, id: ConnId) {
        self.end_session(id);
        let vsock = self.vsock();
        match vsock.state(id) {
            ConnState::Closed => vsock.release(id),
            _ => vsock.close(id),
        }
    }

    /// Advances connection `id` as far as its data allows.
    fn step(&mut self, id: ConnId) {
        match self.vsock().state(id) {
            ConnState::Established => {}
            ConnState::Free | ConnState::Closing | ConnState::Connecting => {
                self.end_session(id);
                return;
            }
            // The peer is gone and can take no response.
            ConnState::Closed => return self.hang_up(id),
        }
        match self.sessions[id] {
            Session::None => {}
            Session::Idle => self.next_frame(id),
            Session::Big { have, total } => {
                let n = {
                    let Agent { devices, big, .. } = self;
                    let vsock = devices.vsock.as_mut().expect("checked at start");
                    vsock.recv(id, &mut big[have..total])
                };
                let have = have + n;
                if have == total {
                    self.end_session(id);
                    self.sessions[id] = Session::Idle;
                    self.big_owner = Some(id);
                    let frame: &[u8] = {
                        let big: *const [u8] = &self.big[..total];
                        // SAFETY: `big` lives for the whole run and only this connection,
                        // which owns it (`big_owner`), uses it until `handle` returns.
                        unsafe { &*big }
                    };
                    self.handle(id, frame);
                    if self.big_owner == Some(id) {
                        self.big_owner = None;
                    }
                } else {
                    self.sessions[id] = Session::Big { have, total };
                    if self.vsock().at_eof(id) {
                        self.hang_up(id);
                    }
                }
            }
            Session::Sink { left, mut sum } => {
                let want = (left.min(self.scratch.len() as u64)) as usize;
                let n = {
                    let Agent {
                        devices, scratch, ..
                    } = self;
                    let vsock = devices.vsock.as_mut().expect("checked at start");
                    vsock.recv(id, &mut scratch[..want])
                };
                sum.update(&self.scratch[..n]);
                let left = left - n as u64;
                if left == 0 {
                    self.sessions[id] = Session::Idle;
                    let response = Response::Sunk {
                        len: sum.len(),
                        checksum: sum.value(),
                    };
                    self.respond(id, &response);
                } else {
                    self.sessions[id] = Session::Sink { left, sum };
                    if self.vsock().at_eof(id) {
                        self.hang_up(id);
                    }
                }
            }
            Session::Source { left, offset, seed } => {
                let n = (left.min(SOURCE_CHUNK as u64)) as usize;
                fill_source(seed, offset, &mut self.scratch[..n]);
                let sent = {
                    let Agent {
                        devices, scratch, ..
                    } = self;
                    let vsock = devices.vsock.as_mut().expect("checked at start");
                    vsock.send(id, &scratch[..n])
                };
                match sent {
                    Ok(sent) if sent as u64 == left => self.sessions[id] = Session::Idle,
                    Ok(sent) => {
                        self.sessions[id] = Session::Source {
                            left: left - sent as u64,
                            offset: offset + sent as u64,
                            seed,
                        }
                    }
                    Err(_) => self.hang_up(id),
                }
            }
        }
    }

    /// Starts on the next request frame of connection `id`, if enough of it arrived.
    fn next_frame(&mut self, id: ConnId) {
        let mut prefix = [0u8; LEN_PREFIX];
        let vsock = self.vsock();
        let available = vsock.available(id);
        if available < LEN_PREFIX {
            if vsock.at_eof(id) {
                self.hang_up(id);
            }
            return;
        }
        vsock.peek(id, &mut prefix);
        let total = match frame_len(&prefix) {
            Ok(total) => total,
            Err(_) => {
                // The stream cannot be resynchronized: say why, then hang up.
                self.respond(id, &Response::Error(ErrorCode::FrameTooLarge));
                return self.hang_up(id);
            }
        };
        if total <= CONN_BUF {
            if available >= total {
                let n = {
                    let Agent {
                        devices, scratch, ..
                    } = self;
                    let vsock = devices.vsock.as_mut().expect("checked at start");
                    vsock.recv(id, &mut scratch[..total])
                };
                let frame: &[u8] = {
                    let scratch: *const [u8] = &self.scratch[..n];
                    // SAFETY: `scratch` lives for the whole run; `handle` never writes it
                    // before it is done with the request (Sink and Source use it only on
                    // later passes).
                    unsafe { &*scratch }
                };
                self.handle(id, frame);
            }
        } else if self.big_owner.is_none() {
            self.big_owner = Some(id);
            self.sessions[id] = Session::Big { have: 0, total };
        }
    }

    /// Decodes and carries out one request frame, sending its response.
    fn handle(&mut self, id: ConnId, frame: &[u8]) {
        let request = match Request::decode(frame) {
            Ok((request, _)) => request,
            Err(DecodeError::UnknownOpcode(_)) => {
                return self.respond(id, &Response::Error(ErrorCode::UnknownOpcode))
            }
            Err(_) => return self.respond(id, &Response::Error(ErrorCode::Malformed)),
        };
        match request {
            Request::Sink { len } if len > 0 => {
                self.sessions[id] = Session::Sink {
                    left: len,
                    sum: StreamChecksum::new(),
                };
            }
            Request::Source { len, seed } => {
                self.respond(id, &Response::Sourcing { len });
                if len > 0 && matches!(self.sessions[id], Session::Idle) {
                    self.sessions[id] = Session::Source {
                        left: len,
                        offset: 0,
                        seed,
                    };
                }
            }
            Request::Exit(code) => {
                self.respond(id, &Response::Exiting(code));
                self.vsock().drain(1_000);
                exit(code)
            }
            other => {
                let out: *mut [u8] = &mut *self.response;
                let encoded = {
                    let response = self.execute(other);
                    // SAFETY: `execute` never touches the response buffer (the response it
                    // returns may borrow the data buffer or the request, never this one), and
                    // nothing else refers to it until `send_encoded`.
                    response.encode(unsafe { &mut *out })
                };
                self.send_encoded(id, encoded);
            }
        }
    }

    fn respond(&mut self, id: ConnId, response: &Response<'_>) {
        let encoded = response.encode(self.response);
        self.send_encoded(id, encoded);
    }

    fn send_encoded(
        &mut self,
        id: ConnId,
        encoded: Result<usize, zygote_guest_proto::agent::EncodeError>,
    ) {
        let len = match encoded {
            Ok(len) => len,
            Err(_) => Response::Error(ErrorCode::InvalidArgument)
                .encode(self.response)
                .unwrap_or(0),
        };
        let Agent {
            devices, response, ..
        } = self;
        let vsock = devices.vsock.as_mut().expect("checked at start");
        if vsock
            .send_all(id, &response[..len], SEND_TIMEOUT_MS)
            .is_err()
        {
            self.hang_up(id);
        }
    }

    /// Carries out a request that answers with one response frame.
    fn execute<'r>(&'r mut self, request: Request<'r>) -> Response<'r> {
        let error = Response::Error;
        match request {
            Request::Ping => Response::Pong,
            Request::Echo(data) => Response::Echo(data),
            Request::Touch { mib, pattern } => self.touch(mib, pattern),
            Request::Checksum { addr, len } => self.checksum(addr, len),
            Request::CounterAdd(value) => Response::Counter(counter_add(value)),
            Request::CounterGet => Response::Counter(counter_add(0)),
            Request::Sink { .. } => Response::Sunk {
                len: 0,
                checksum: StreamChecksum::new().value(),
            },
            Request::DiskWrite { sector, data } => {
                let Agent { devices, clock, .. } = self;
                match devices.blk.as_mut() {
                    None => error(ErrorCode::NoDevice),
                    Some(blk) => match blk.write(clock, sector, data) {
                        Ok(()) => Response::DiskWritten,
                        Err(e) => error(blk_error(e)),
                    },
                }
            }
            Request::DiskRead { sector, count } => {
                let Agent {
                    devices,
                    clock,
                    data,
                    ..
                } = self;
                let buf = &mut data[..count as usize * SECTOR_SIZE];
                match devices.blk.as_mut() {
                    None => error(ErrorCode::NoDevice),
                    Some(blk) => match blk.read(clock, sector, buf) {
                        Ok(()) => Response::DiskData(buf),
                        Err(e) => error(blk_error(e)),
                    },
                }
            }
            Request::DiskFlush => {
                let Agent { devices, clock, .. } = self;
                match devices.blk.as_mut().map(|blk| blk.flush(clock)) {
                    None => error(ErrorCode::NoDevice),
                    Some(Ok(())) => Response::DiskFlushed,
                    Some(Err(e)) => error(blk_error(e)),
                }
            }
            Request::DiskId => {
                let Agent { devices, clock, .. } = self;
                match devices.blk.as_mut().map(|blk| blk.id(clock)) {
                    None => error(ErrorCode::NoDevice),
                    Some(Ok(id)) => Response::DiskId(id),
                    Some(Err(e)) => error(blk_error(e)),
                }
            }
            Request::NetSend(frame) => {
                let Agent { devices, clock, .. } = self;
                match devices.net.as_mut().map(|net| net.send(clock, frame)) {
                    None => error(ErrorCode::NoDevice),
                    Some(Ok(())) => Response::NetSent,
                    Some(Err(_)) => error(ErrorCode::DeviceError),
                }
            }
            Request::NetRecv { timeout_ms } => self.net_recv(timeout_ms),
            Request::ConnectHost { port, payload } => self.connect_host(port, payload),
            // Handled by `handle`.
            Request::Source { .. } | Request::Exit(_) => error(ErrorCode::InvalidArgument),
        }
    }

    fn touch(&mut self, mib: u32, pattern: u64) -> Response<'static> {
        let start = self.touch_start;
        let end = u64::from(mib)
            .checked_mul(1 << 20)
            .and_then(|len| start.checked_add(len));
        match end {
            Some(end) if end <= self.touch_limit && self.is_ram(start, end) => {
                let checksum = fill_and_checksum(start, u64::from(mib) << 17, pattern);
                Response::Touched {
                    addr: start,
                    checksum,
                }
            }
            _ => Response::Error(ErrorCode::OutOfRange),
        }
    }

    fn checksum(&self, addr: u64, len: u64) -> Response<'static> {
        if addr % 8 != 0 || len % 8 != 0 {
            return Response::Error(ErrorCode::InvalidArgument);
        }
        match addr.checked_add(len) {
            Some(end) if self.is_ram(addr, end) => {
                let mut sum = Checksum::new();
                for index in 0..len / 8 {
                    // SAFETY: `addr..end` is usable RAM (e820), identity-mapped; reading it
                    // disturbs nothing. Volatile: the host or a device may change it.
                    sum.update(unsafe { ((addr + index * 8) as *const u64).read_volatile() });
                }
                Response::Checksum(sum.value())
            }
            _ => Response::Error(ErrorCode::OutOfRange),
        }
    }

    fn is_ram(&self, start: u64, end: u64) -> bool {
        end <= zygote_guest_proto::IDENTITY_MAP_LIMIT
            && self.boot.e820().any(|entry| entry.covers(start, end))
    }

    fn net_recv(&mut self, timeout_ms: u32) -> Response<'_> {
        let deadline = self.clock.deadline_ms(u64::from(timeout_ms));
        let Agent { devices, data, .. } = self;
        let Some(net) = devices.net.as_mut() else {
            return Response::Error(ErrorCode::NoDevice);
        };
        let out = &mut data[..MAX_NET_FRAME];
        loop {
            if let Some(len) = net.try_recv(out) {
                return Response::NetFrame(&out[..len]);
            }
            if deadline.passed() {
                return Response::Error(ErrorCode::NoFrame);
            }
            // Keep vsock traffic flowing for the other connections meanwhile.
            if let Some(vsock) = devices.vsock.as_mut() {
                vsock.poll();
            }
        }
    }

    fn connect_host(&mut self, port: u32, payload: &[u8]) -> Response<'_> {
        let Agent {
            devices,
            clock,
            data,
            ..
        } = self;
        let vsock = devices.vsock.as_mut().expect("checked at start");
        let Ok(conn) = vsock.connect(port) else {
            return Response::Error(ErrorCode::Busy);
        };
        let deadline = clock.deadline_ms(CONNECT_TIMEOUT_MS);
        while vsock.state(conn) == ConnState::Connecting && !deadline.passed() {
            vsock.poll();
        }
        if vsock.state(conn) != ConnState::Established
            || vsock.send_all(conn, payload, CONNECT_TIMEOUT_MS).is_err()
        {
            vsock.close(conn);
            return Response::Error(ErrorCode::ConnectFailed);
        }
        let out = &mut data[..MAX_HOST_REPLY];
        let mut got = 0;
        let mut deadline = clock.deadline_ms(CONNECT_TIMEOUT_MS);
        while got < out.len() && !vsock.at_eof(conn) && !deadline.passed() {
            vsock.poll();
            let n = vsock.recv(conn, &mut out[got..]);
            if n > 0 {
                got += n;
                deadline = clock.deadline_ms(CONNECT_TIMEOUT_MS);
            }
        }
        match vsock.state(conn) {
            ConnState::Closed => vsock.release(conn),
            _ => vsock.close(conn),
        }
        Response::HostReply(&out[..got])
    }
}

/// Adds `value` to the counter at AGENT_COUNTER_ADDR (wrapping); the new value.
fn counter_add(value: u64) -> u64 {
    let counter = AGENT_COUNTER_ADDR as *mut u64;
    // SAFETY: the page at AGENT_COUNTER_ADDR is reserved for the counter (see `run`).
    unsafe {
        let new = counter.read_volatile().wrapping_add(value);
        counter.write_volatile(new);
        new
    }
}

fn blk_error(error: BlkError) -> ErrorCode {
    match error {
        BlkError::OutOfRange => ErrorCode::OutOfRange,
        BlkError::ReadOnly => ErrorCode::ReadOnly,
        BlkError::Status(_) | BlkError::Device(_) => ErrorCode::DeviceError,
    }
}
