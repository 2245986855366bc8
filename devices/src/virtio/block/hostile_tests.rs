//! A hostile driver: each bad chain completes with an error status or marks the device as
//! needing reset, and a good request afterwards still works.

use std::io;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::tests::{expected, harness, harness_with, image, Harness};
use super::{BlockBackend, QUEUE_SIZE, SEG_MAX};
use crate::virtio::testing::{notify, BudgetedRefills, Desc, MEM_SIZE};

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// What a hostile chain must lead to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Completed with this status byte.
    Status(u8),
    /// Completed without a status; the device needs reset.
    NeedsReset,
}

/// Submits `descs` as one chain and reports the outcome from the status byte at `status`.
fn outcome(h: &mut Harness, descs: &[Desc], status: u64) -> Outcome {
    h.submit(descs);
    if h.needs_reset() {
        Outcome::NeedsReset
    } else {
        Outcome::Status(h.read_status(status))
    }
}

fn good_read_still_works(h: &mut Harness) {
    assert_eq!(h.read(2, 512), (OK, expected(2, 512)));
}

/// Runs `build` (which returns the outcome) on a fresh device, checks it, then a good read.
fn check(name: &str, want: Outcome, build: impl FnOnce(&mut Harness) -> Outcome) {
    let mut h = harness(false);
    assert_eq!(build(&mut h), want, "{name}");
    good_read_still_works(&mut h);
}

fn read_chain(h: &mut Harness, data: Desc) -> (Vec<Desc>, u64) {
    let header = h.header(VIRTIO_BLK_T_IN, 0);
    let status = h.status_byte();
    (
        vec![Desc::readable(header, 16), data, Desc::writable(status, 1)],
        status,
    )
}

#[test]
fn buffers_outside_guest_memory() {
    check("data outside", Outcome::Status(IOERR), |h| {
        let (descs, status) = read_chain(h, Desc::writable(MEM_SIZE - 256, 512));
        outcome(h, &descs, status)
    });
    check("header outside", Outcome::Status(IOERR), |h| {
        let status = h.status_byte();
        outcome(
            h,
            &[Desc::readable(MEM_SIZE, 16), Desc::writable(status, 1)],
            status,
        )
    });
    check("status outside", Outcome::NeedsReset, |h| {
        let header = h.header(VIRTIO_BLK_T_IN, 0);
        outcome(
            h,
            &[Desc::readable(header, 16), Desc::writable(MEM_SIZE, 1)],
            0,
        )
    });
    check("address wraps", Outcome::Status(IOERR), |h| {
        let (descs, status) = read_chain(h, Desc::writable(u64::MAX - 100, 512));
        outcome(h, &descs, status)
    });
}

#[test]
fn zero_and_huge_lengths() {
    check("zero-length header", Outcome::Status(IOERR), |h| {
        let header = h.header(VIRTIO_BLK_T_IN, 0);
        let status = h.status_byte();
        outcome(
            h,
            &[Desc::readable(header, 0), Desc::writable(status, 1)],
            status,
        )
    });
    check("zero-length status", Outcome::NeedsReset, |h| {
        let header = h.header(VIRTIO_BLK_T_IN, 0);
        let status = h.status_byte();
        outcome(
            h,
            &[Desc::readable(header, 16), Desc::writable(status, 0)],
            status,
        )
    });
    check("huge data", Outcome::Status(IOERR), |h| {
        let (descs, status) = read_chain(h, Desc::writable(0x20_0000, 0xffff_fe00));
        outcome(h, &descs, status)
    });
    check("lengths overflow 4 GiB", Outcome::NeedsReset, |h| {
        let header = h.header(VIRTIO_BLK_T_IN, 0);
        let status = h.status_byte();
        let descs = [
            Desc::readable(header, 16),
            Desc::writable(0x20_0000, 0xffff_0000),
            Desc::writable(0x20_0000, 0xffff_0000),
            Desc::writable(status, 1),
        ];
        outcome(h, &descs, status)
    });
    check("unaligned length", Outcome::Status(IOERR), |h| {
        let buf = h.arena.alloc(100);
        let (descs, status) = read_chain(h, Desc::writable(buf, 100));
        outcome(h, &descs, status)
    });
}

#[test]
fn wrong_directions() {
    check("read into readable buffer", Outcome::Status(IOERR), |h| {
        let buf = h.arena.alloc(512);
        let (descs, status) = read_chain(h, Desc::readable(buf, 512));
        outcome(h, &descs, status)
    });
    check("write from writable buffer", Outcome::Status(IOERR), |h| {
        let header = h.header(VIRTIO_BLK_T_OUT, 0);
        let (buf, status) = (h.arena.alloc(512), h.status_byte());
        let descs = [
            Desc::readable(header, 16),
            Desc::writable(buf, 512),
            Desc::writable(status, 1),
        ];
        outcome(h, &descs, status)
    });
    check("writable header", Outcome::Status(IOERR), |h| {
        let header = h.header(VIRTIO_BLK_T_IN, 0);
        let status = h.status_byte();
        outcome(
            h,
            &[Desc::writable(header, 16), Desc::writable(status, 1)],
            status,
        )
    });
    check("readable status", Outcome::NeedsReset, |h| {
        let header = h.header(VIRTIO_BLK_T_IN, 0);
        let status = h.status_byte();
        outcome(
            h,
            &[Desc::readable(header, 16), Desc::readable(status, 1)],
            status,
        )
    });
    check("readable after writable", Outcome::NeedsReset, |h| {
        let header = h.header(VIRTIO_BLK_T_IN, 0);
        let status = h.status_byte();
        let descs = [
            Desc::readable(header, 16),
            Desc::writable(status, 1),
            Desc::readable(header, 16),
        ];
        outcome(h, &descs, status)
    });
    check("unsupported type", Outcome::Status(UNSUPP), |h| {
        let header = h.header(VIRTIO_BLK_T_DISCARD, 0);
        let status = h.status_byte();
        outcome(
            h,
            &[Desc::readable(header, 16), Desc::writable(status, 1)],
            status,
        )
    });
}

/// Writes descriptors at chosen table slots, publishes `head`, notifies, and reports.
fn raw_chain(h: &mut Harness, slots: &[(u16, Desc)], head: u16, status: u64) -> Outcome {
    for &(index, desc) in slots {
        h.queue.write_desc(&h.mem, index, desc);
    }
    h.queue.publish(&h.mem, head);
    notify(&mut h.transport, 0);
    // The chain is consumed (unless its head is unusable, which add_used refuses).
    let _ = h.queue.next_used(&h.mem);
    if h.needs_reset() {
        Outcome::NeedsReset
    } else {
        Outcome::Status(h.read_status(status))
    }
}

#[test]
fn malformed_chains() {
    check("loop", Outcome::NeedsReset, |h| {
        let header = h.header(VIRTIO_BLK_T_IN, 0);
        let status = h.status_byte();
        let slots = [
            (100, Desc::readable(header, 16).then(101)),
            (101, Desc::writable(status, 1).then(100)),
        ];
        raw_chain(h, &slots, 100, status)
    });
    check("too many descriptors", Outcome::NeedsReset, |h| {
        let header = h.header(VIRTIO_BLK_T_IN, 0);
        let status = h.status_byte();
        let mut slots = vec![(0, Desc::readable(header, 16).then(1))];
        for i in 1..QUEUE_SIZE {
            slots.push((i, Desc::writable(status, 1).then(i + 1)));
        }
        raw_chain(h, &slots, 0, status)
    });
    check("next past the table", Outcome::NeedsReset, |h| {
        let header = h.header(VIRTIO_BLK_T_IN, 0);
        let status = h.status_byte();
        raw_chain(
            h,
            &[(7, Desc::readable(header, 16).then(QUEUE_SIZE))],
            7,
            status,
        )
    });
    check("head past the table", Outcome::NeedsReset, |h| {
        raw_chain(h, &[], QUEUE_SIZE + 5, 0)
    });
    check("indirect table outside memory", Outcome::NeedsReset, |h| {
        let indirect = Desc {
            addr: MEM_SIZE,
            len: 64,
            flags: VRING_DESC_F_INDIRECT as u16,
            next: 0,
        };
        raw_chain(h, &[(3, indirect)], 3, 0)
    });
}

#[test]
fn bad_avail_index_needs_reset_and_reset_recovers() {
    let mut h = harness(false);
    h.queue.set_avail_idx(&h.mem, QUEUE_SIZE + 1);
    notify(&mut h.transport, 0);
    assert!(h.needs_reset());
    assert_eq!(h.queue.used_idx(&h.mem), 0);
    h.reinit();
    assert!(!h.needs_reset());
    good_read_still_works(&mut h);
}

#[test]
fn requests_keep_working_after_many_hostile_chains() {
    let mut h = harness(false);
    for round in 0..3 * u32::from(QUEUE_SIZE) {
        let header = h.header(VIRTIO_BLK_T_IN, u64::from(round));
        let descs = [Desc::readable(header, 16), Desc::writable(MEM_SIZE + 7, 1)];
        h.submit(&descs);
    }
    good_read_still_works(&mut h);
}

/// A disk that stands for a driver on another vCPU refilling the ring while the device
/// works: its first `refills` reads each make the request available once more.
struct RefillingDisk {
    refills: BudgetedRefills,
}

impl BlockBackend for RefillingDisk {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_at(&mut self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        self.refills.refill();
        Ok(())
    }
    fn write_at(&mut self, _: &[u8], _: u64) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn one_notify_serves_at_most_a_queue_of_requests_while_the_driver_refills() {
    let refills = 3 * u32::from(QUEUE_SIZE);
    let (budget, driver) = BudgetedRefills::new(refills);
    let disk = RefillingDisk { refills: budget };
    let mut h = harness_with(image(), Box::new(disk), false);
    let header = h.header(VIRTIO_BLK_T_IN, 0);
    let data = h.arena.alloc(512);
    let status = h.status_byte();
    let head = h.queue.add_chain(
        &h.mem,
        &[
            Desc::readable(header, 16),
            Desc::writable(data, 512),
            Desc::writable(status, 1),
        ],
    );
    *driver.lock().unwrap() = Some(h.queue.refiller(&h.mem, head));
    notify(&mut h.transport, 0);
    assert_eq!(h.queue.used_idx(&h.mem), QUEUE_SIZE, "one queue's worth");
    assert!(h.transport.has_pending_work(), "the rest is left for later");
    h.transport.process_pending_work();
    assert_eq!(h.queue.used_idx(&h.mem), 2 * QUEUE_SIZE);
    // Once the driver stops refilling, what it made available is served and no work is left.
    let mut rounds = 0;
    while h.transport.has_pending_work() {
        h.transport.process_pending_work();
        rounds += 1;
        assert!(rounds <= 2, "pending work never ends");
    }
    assert_eq!(u32::from(h.queue.used_idx(&h.mem)), refills + 1);
    assert_eq!(h.read_status(status), OK);
    assert!(!h.needs_reset());
}

#[test]
fn a_chain_with_more_than_seg_max_buffers_fails_with_ioerr() {
    // Indirect descriptors are not offered, but virtio-queue follows them, so a chain can have
    // more buffers than the queue has entries: header, SEG_MAX + 1 data buffers, status.
    let submit = |h: &mut Harness, data_buffers: u32| {
        let header = h.header(VIRTIO_BLK_T_IN, 0);
        let status = h.status_byte();
        // One sector in all (2-byte buffers, the last one taking the rest), so only the
        // buffer count can be wrong.
        let data = h.arena.alloc(512);
        let mut descs = vec![Desc::readable(header, 16)];
        descs.extend((0..data_buffers - 1).map(|i| Desc::writable(data + 2 * u64::from(i), 2)));
        let rest = 2 * u64::from(data_buffers - 1);
        descs.push(Desc::writable(data + rest, 512 - rest as u32));
        descs.push(Desc::writable(status, 1));
        let table = h.arena.alloc(16 * descs.len() as u64);
        for (i, desc) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = desc.flags & VRING_DESC_F_WRITE as u16
                | if last { 0 } else { VRING_DESC_F_NEXT as u16 };
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&desc.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&desc.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
            h.mem
                .write_slice(&raw, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        let indirect = Desc {
            addr: table,
            len: 16 * descs.len() as u32,
            flags: VRING_DESC_F_INDIRECT as u16,
            next: 0,
        };
        outcome(h, &[indirect], status)
    };
    check("SEG_MAX data buffers", Outcome::Status(OK), |h| {
        submit(h, SEG_MAX)
    });
    check("SEG_MAX + 1 data buffers", Outcome::Status(IOERR), |h| {
        submit(h, SEG_MAX + 1)
    });
}
