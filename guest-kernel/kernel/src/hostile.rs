//! The `hostile` workload: brings the devices up as the agent does, sends the virtio-blk
//! device read requests with one thing wrong each and the vsock device packets on no
//! connection (one malformed), prints how each was answered ([`HostileBlk`],
//! [`HostileVsock`]), then carries on as the agent, so the host can check that the VMM and
//! every device still work. The bad chains are built by test-only code next to each driver
//! (`virtio::queue::hostile`, `virtio::blk::hostile`, `virtio::vsock::hostile`).

use zygote_guest_proto::agent::SECTOR_SIZE;
use zygote_guest_proto::{HostileBlk, HostileOutcome, HostileVsock, ERROR_PREFIX};

use crate::agent;
use crate::arena::Arena;
use crate::boot_params::BootParams;
use crate::clock::Clock;
use crate::println;
use crate::virtio::blk::{BadRead, Blk};
use crate::virtio::vsock::{Vsock, STRAY_PORTS};

/// The blk cases, in the order they run and the line reports them.
const BLK_CASES: [BadRead; HostileBlk::CASES as usize] = [
    BadRead::OutsideRam,
    BadRead::PastEnd,
    BadRead::WrongDirection,
    BadRead::ZeroLen,
    BadRead::ZeroData,
    BadRead::HugeLen,
    BadRead::Loop,
];

/// The host port the stray vsock packets go to (nothing listens there; it does not matter).
const STRAY_PEER_PORT: u32 = 9;
/// How long the vsock device gets to take the packets and answer.
const VSOCK_WAIT_MS: u64 = 5_000;

/// Runs the workload; never returns.
pub fn run(cmdline: &str, boot: &BootParams) -> ! {
    agent::run_after(cmdline, boot, |devices, arena, clock| {
        match devices.blk.as_mut() {
            Some(blk) => {
                if let Some(result) = blk_cases(blk, arena, clock) {
                    println!("{result}");
                }
            }
            None => println!("{ERROR_PREFIX}hostile: no virtio-blk device"),
        }
        if let Some(vsock) = devices.vsock.as_mut() {
            println!("{}", vsock_cases(vsock, clock));
        }
    })
}

/// Runs every blk case, each followed by a good read of sector 0; `None` (after an error
/// line) when even the first good read fails.
fn blk_cases(blk: &mut Blk, arena: &mut Arena, clock: &Clock) -> Option<HostileBlk> {
    let fail = |reason: &str| println!("{ERROR_PREFIX}hostile: {reason}");
    let Some(data) = arena.alloc(SECTOR_SIZE, SECTOR_SIZE) else {
        fail("out of arena memory");
        return None;
    };
    let mut sector0 = [0u8; SECTOR_SIZE];
    if blk.read(clock, 0, &mut sector0).is_err() {
        fail("the first read of sector 0 failed");
        return None;
    }
    let mut result = HostileBlk {
        outside_ram: HostileOutcome::Timeout,
        past_end: HostileOutcome::Timeout,
        wrong_direction: HostileOutcome::Timeout,
        zero_len: HostileOutcome::Timeout,
        zero_data: HostileOutcome::Timeout,
        huge_len: HostileOutcome::Timeout,
        looped: HostileOutcome::Timeout,
        good_reads: 0,
        recovered: false,
    };
    for case in BLK_CASES {
        let outcome = blk.bad_read(clock, case, data);
        *outcome_of(&mut result, case) = outcome;
        // A device that needs a reset, or that kept the chain, is reset and set up again.
        let reset = matches!(
            outcome,
            HostileOutcome::NeedsReset | HostileOutcome::Timeout
        );
        let usable = !reset
            || blk
                .reinit(arena)
                .map_err(|e| println!("{ERROR_PREFIX}hostile: blk reset: {e}"))
                .is_ok();
        let mut again = [0u8; SECTOR_SIZE];
        let good = usable && blk.read(clock, 0, &mut again).is_ok() && again == sector0;
        result.good_reads += u32::from(good);
        if case == BadRead::Loop {
            result.recovered = reset && good;
        }
    }
    Some(result)
}

fn outcome_of(result: &mut HostileBlk, case: BadRead) -> &mut HostileOutcome {
    match case {
        BadRead::OutsideRam => &mut result.outside_ram,
        BadRead::PastEnd => &mut result.past_end,
        BadRead::WrongDirection => &mut result.wrong_direction,
        BadRead::ZeroLen => &mut result.zero_len,
        BadRead::ZeroData => &mut result.zero_data,
        BadRead::HugeLen => &mut result.huge_len,
        BadRead::Loop => &mut result.looped,
    }
}

/// Sends an RW whose header claims 4096 bytes while the chain carries 16, then a well-formed
/// RW, both on connections the host does not know, and waits for the device to take both
/// back and answer the second (it answers in order, so an answer to the first would have
/// come before).
fn vsock_cases(vsock: &mut Vsock, clock: &Clock) -> HostileVsock {
    let short = STRAY_PORTS;
    let unknown = STRAY_PORTS + 1;
    let sent_short = vsock.send_stray_rw(short, STRAY_PEER_PORT, 4096, 16);
    let sent_unknown = vsock.send_stray_rw(unknown, STRAY_PEER_PORT, 16, 16);
    let deadline = clock.deadline_ms(VSOCK_WAIT_MS);
    loop {
        let answered = vsock.stray_rst(unknown) && vsock.tx_idle();
        if answered || deadline.passed() {
            break;
        }
        vsock.poll();
        core::hint::spin_loop();
    }
    let needs_reset = vsock.needs_reset();
    let outcome = |sent: bool, port: u32| {
        if !sent {
            HostileOutcome::Timeout
        } else if vsock.stray_rst(port) {
            HostileOutcome::Rst
        } else if needs_reset {
            HostileOutcome::NeedsReset
        } else if vsock.tx_idle() {
            HostileOutcome::Dropped
        } else {
            HostileOutcome::Timeout
        }
    };
    HostileVsock {
        short_payload: outcome(sent_short, short),
        unknown_conn: outcome(sent_unknown, unknown),
    }
}
