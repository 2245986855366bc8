//! The `hostile` workload: brings the devices up as the agent does, sends the virtio-blk
//! device read requests with one thing wrong each, the vsock device packets on no
//! connection (one malformed), and every net and vsock queue chains with one bad buffer
//! each ([`BadBuf`]), prints how each was answered ([`HostileBlk`], [`HostileVsock`],
//! [`HostileQueue`]), resets each device, then carries on as the agent, so the host can check
//! that the VMM and every device still work. The bad chains are built by test-only code next
//! to each driver (`virtio::queue::hostile`, `virtio::blk::hostile`, `virtio::net::hostile`,
//! `virtio::vsock::hostile`).

use zygote_guest_proto::agent::SECTOR_SIZE;
use zygote_guest_proto::{
    BadBuf, HostileBlk, HostileOutcome, HostileQueue, HostileQueueId, HostileVsock, ERROR_PREFIX,
};

use crate::agent;
use crate::arena::Arena;
use crate::boot_params::BootParams;
use crate::clock::Clock;
use crate::println;
use crate::virtio::blk::{BadRead, Blk};
use crate::virtio::net::Net;
use crate::virtio::vsock::{Vsock, STRAY_PEER_PORT, STRAY_PORTS};

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

/// The transmit cases in the order they are sent: `Loop` last, since the queue's free list
/// cannot be trusted once a looped chain comes back.
const TX_ORDER: [BadBuf; 6] = [
    BadBuf::OutsideRam,
    BadBuf::MmioGap,
    BadBuf::HugeLen,
    BadBuf::ZeroLen,
    BadBuf::WrongDirection,
    BadBuf::Loop,
];
/// First stray port of the vsock transmit cases (one each, in `BadBuf::ALL` order), after the
/// two of [`HostileVsock`]; then those of the receive cases, then the recovery's.
const VSOCK_TX_PORTS: u32 = STRAY_PORTS + 2;
const VSOCK_RX_PORTS: u32 = VSOCK_TX_PORTS + 6;
const VSOCK_RECOVERY_PORT: u32 = VSOCK_RX_PORTS + 6;
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
        if let Some(net) = devices.net.as_mut() {
            for line in net_cases(net, arena, clock) {
                println!("{line}");
            }
        }
        if let Some(vsock) = devices.vsock.as_mut() {
            let (packets, tx) = vsock_cases(vsock, clock);
            println!("{packets}");
            for line in vsock_queue_cases(vsock, arena, clock, tx) {
                println!("{line}");
            }
        }
    })
}

/// Every [`BadBuf`] case on the net transmit queue, then on the receive queue (each on a
/// freshly reset device with only the bad chain posted; the host echoes the frame sent to
/// fill it), then a reset with every buffer posted and a frame echoed back whole.
fn net_cases(net: &mut Net, arena: &mut Arena, clock: &Clock) -> [HostileQueue; 2] {
    let mut tx = HostileQueue::new(HostileQueueId::NetTx);
    let mut rx = HostileQueue::new(HostileQueueId::NetRx);
    for case in TX_ORDER {
        tx.set(case, net.bad_send(clock, case));
    }
    for case in BadBuf::ALL {
        rx.set(case, net.bad_receive(clock, arena, case));
    }
    let recovered = net.recover(clock, arena);
    tx.recovered = recovered;
    rx.recovered = recovered;
    [rx, tx]
}

/// Every [`BadBuf`] case on the vsock receive queue (each on a freshly reset device with
/// only the bad chain posted, an RST for a stray packet to fill it) and on the event queue,
/// then a reset and a stray packet answered with RST. `tx` holds the transmit cases'
/// outcomes ([`vsock_cases`]).
fn vsock_queue_cases(
    vsock: &mut Vsock,
    arena: &mut Arena,
    clock: &Clock,
    mut tx: HostileQueue,
) -> [HostileQueue; 3] {
    let mut rx = HostileQueue::new(HostileQueueId::VsockRx);
    for (port, case) in (VSOCK_RX_PORTS..).zip(BadBuf::ALL) {
        rx.set(case, vsock.bad_receive(clock, arena, case, port));
    }
    let mut events = HostileQueue::new(HostileQueueId::VsockEvent);
    events.outcomes = vsock.bad_events(clock, arena);
    let recovered = vsock.reinit(arena, true, true).is_ok()
        && vsock.send_stray_rw(VSOCK_RECOVERY_PORT, STRAY_PEER_PORT, 16, 16)
        && wait_for_rst(vsock, clock, VSOCK_RECOVERY_PORT);
    for queue in [&mut rx, &mut tx, &mut events] {
        queue.recovered = recovered;
    }
    [rx, tx, events]
}

/// Polls the device until the RST for `port` arrived and every transmit slot is back, or
/// [`VSOCK_WAIT_MS`] pass; whether the RST arrived.
fn wait_for_rst(vsock: &mut Vsock, clock: &Clock, port: u32) -> bool {
    let deadline = clock.deadline_ms(VSOCK_WAIT_MS);
    loop {
        let answered = vsock.stray_rst(port) && vsock.tx_idle();
        if answered || deadline.passed() {
            return vsock.stray_rst(port);
        }
        vsock.poll();
        core::hint::spin_loop();
    }
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

/// Sends an RW whose header claims 4096 bytes while the chain carries 16, then one RW per
/// [`BadBuf`] case with a good header and a bad payload buffer, then a well-formed RW, all on
/// connections the host does not know, and waits for the device to take every one back and
/// answer the last (it answers in order, so answers to the others would have come before).
/// Returns the [`HostileVsock`] line and the transmit queue's [`HostileQueue`] (recovery not
/// yet tried).
fn vsock_cases(vsock: &mut Vsock, clock: &Clock) -> (HostileVsock, HostileQueue) {
    let short = STRAY_PORTS;
    let unknown = STRAY_PORTS + 1;
    let sent_short = vsock.send_stray_rw(short, STRAY_PEER_PORT, 4096, 16);
    let mut sent_bad = [false; 6];
    for case in TX_ORDER {
        let i = case_index(case);
        sent_bad[i] = vsock.send_bad_rw(VSOCK_TX_PORTS + i as u32, STRAY_PEER_PORT, case);
    }
    let sent_unknown = vsock.send_stray_rw(unknown, STRAY_PEER_PORT, 16, 16);
    wait_for_rst(vsock, clock, unknown);
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
    let mut tx = HostileQueue::new(HostileQueueId::VsockTx);
    for case in BadBuf::ALL {
        let i = case_index(case);
        tx.set(case, outcome(sent_bad[i], VSOCK_TX_PORTS + i as u32));
    }
    let packets = HostileVsock {
        short_payload: outcome(sent_short, short),
        unknown_conn: outcome(sent_unknown, unknown),
    };
    (packets, tx)
}

/// The position of `case` in `BadBuf::ALL`.
fn case_index(case: BadBuf) -> usize {
    BadBuf::ALL.iter().position(|&c| c == case).unwrap_or(0)
}
