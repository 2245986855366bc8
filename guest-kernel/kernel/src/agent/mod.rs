//! The `agent` workload: brings up the virtio devices, then serves the agent protocol
//! (`zygote_guest_proto::agent`) on vsock port `AGENT_PORT` to any number of host connections,
//! one poll loop over all of them.
//!
//! Each connection is a small state machine ([`Session`], `session`). Frames that fit in a
//! connection's receive ring are decoded from a shared scratch copy; a larger frame (up to
//! `MAX_FRAME`) streams into the one big request buffer, which one connection owns at a time.
//! Responses are sent before the next connection is served (polling the device meanwhile;
//! `ops`); `Sink` and `Source` streams (`stream`) advance a little on every pass, so they never
//! hold the others up. `NetRecv` and `ConnectHost` (`net`, `host`) wait in place (polling
//! vsock, bounded by their timeouts). `memory` and `disk` carry out the other requests.
//!
//! Every pass of the loop reads the VM identity page's generation (`identity`: a clone
//! reseeds its random state and takes on its new id) and ends with the idle check (`idle`):
//! once passes have found nothing to do for a while, the guest sleeps on the VMM's idle port
//! instead of spinning, for at most [`IDLE_WAIT_US`] at a time.

mod disk;
mod host;
mod memory;
mod net;
mod ops;
mod session;
mod stream;

use zygote_guest_proto::agent::{
    AGENT_COUNTER_ADDR, AGENT_PORT, LEN_PREFIX, MAX_DISK_SECTORS, MAX_FRAME, SECTOR_SIZE,
};
use zygote_guest_proto::{exit_code, ERROR_PREFIX, LINE_PREFIX, READY_LINE};

use crate::arena::Arena;
use crate::boot_params::BootParams;
use crate::clock::Clock;
use crate::console::Console;
use crate::exit::exit;
use crate::identity::Identity;
use crate::idle::Idle;
use crate::println;
use crate::virtio::vsock::{ConnId, ConnState, Vsock, CONN_BUF, MAX_CONNS};
use crate::virtio::{self, Devices};
use crate::workloads::touch_start;
use session::Session;
use stream::SOURCE_CHUNK;

/// Room for the largest response frame (an `Echo` of `MAX_ECHO` bytes).
const RESPONSE_BUF: usize = LEN_PREFIX + MAX_FRAME;

/// The longest the agent sleeps on the idle port at a time: 100 ms. Nothing in the serve loop
/// needs waking sooner without a device ringing first (a closing connection's 2 s timeout may
/// fire up to this late); ten wake-ups a second keep an idle VM's vCPU near 0% of a core.
const IDLE_WAIT_US: u32 = 100_000;

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
    /// The VM's identity and the agent's random state.
    identity: Identity,
}

/// Runs the agent; never returns.
pub fn run(cmdline: &str, boot: &BootParams) -> ! {
    run_after(cmdline, boot, |_, _, _| {})
}

/// Runs the agent, calling `first` once the devices are up, before the agent takes its
/// buffers, announces the devices and prints the ready line (the `hostile` workload's hook;
/// `first` may take arena memory and reset devices). Never returns.
pub fn run_after(
    cmdline: &str,
    boot: &BootParams,
    first: impl FnOnce(&mut Devices, &mut Arena, &Clock),
) -> ! {
    // SAFETY: the linker script reserves the page at AGENT_COUNTER_ADDR for the counter and
    // nothing else uses it; it is identity-mapped RAM.
    unsafe { (AGENT_COUNTER_ADDR as *mut u64).write_volatile(0) };
    let start = touch_start();
    let Some(mut arena) = Arena::at_top_of_ram(boot, start) else {
        fail("agent: not enough RAM for the agent's buffers")
    };
    let clock = Clock::new();
    let mut devices = virtio::discover(cmdline, &mut arena, clock);
    if devices.vsock.is_none() {
        fail("agent: no virtio-vsock device")
    }
    first(&mut devices, &mut arena, &clock);
    let mut agent = Agent::new(devices, clock, &mut arena, start, boot);
    agent.announce();
    agent.vsock().listen(AGENT_PORT);
    Console.write_bytes(READY_LINE.as_bytes());
    agent.serve()
}

fn fail(reason: &str) -> ! {
    println!("{ERROR_PREFIX}{reason}");
    exit(exit_code::AGENT_ERROR)
}

/// `size` zeroed bytes of `arena`, the agent's for the whole run.
fn take(arena: &mut Arena, size: usize) -> &'static mut [u8] {
    let Some(ptr) = arena.alloc_uninit(size, 4096) else {
        fail("agent: out of arena memory")
    };
    // SAFETY: the arena handed out `size` bytes nobody else uses, for the whole run; they
    // are zeroed here so the slice is initialized.
    unsafe {
        ptr.write_bytes(0, size);
        core::slice::from_raw_parts_mut(ptr, size)
    }
}

impl Agent {
    /// The agent over `devices`, its buffers taken from `arena`; `Touch` may write from
    /// `touch_start` up to where the arena then begins.
    fn new(
        devices: Devices,
        clock: Clock,
        arena: &mut Arena,
        touch_start: u64,
        boot: &BootParams,
    ) -> Self {
        let big = take(arena, LEN_PREFIX + MAX_FRAME);
        let scratch = take(arena, CONN_BUF.max(SOURCE_CHUNK));
        let response = take(arena, RESPONSE_BUF);
        let data = take(arena, MAX_DISK_SECTORS as usize * SECTOR_SIZE);
        let Some(sessions) = arena.alloc_slice(MAX_CONNS, Session::None) else {
            fail("agent: out of arena memory")
        };
        Agent {
            devices,
            clock,
            touch_start,
            touch_limit: arena.start(),
            sessions,
            big_owner: None,
            big,
            scratch,
            response,
            data,
            boot: *boot,
            identity: Identity::new(),
        }
    }

    /// Prints the devices the agent found.
    fn announce(&mut self) {
        let blk = self.devices.blk.as_ref().map_or(0, |blk| blk.capacity());
        let mac = self.devices.net.as_ref().map(|net| net.mac());
        let cid = self.vsock().guest_cid();
        println!("{LINE_PREFIX}agent blk_sectors={blk} net_mac={mac:02x?} vsock_cid={cid}");
    }

    fn vsock(&mut self) -> &mut Vsock {
        match self.devices.vsock.as_mut() {
            Some(vsock) => vsock,
            None => fail("agent: no virtio-vsock device"),
        }
    }

    fn serve(&mut self) -> ! {
        let first = self.vsock().activity();
        let mut idle = Idle::new(&self.clock, first, IDLE_WAIT_US);
        loop {
            self.identity.check();
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
            idle.after_pass(self.vsock().activity());
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
}
