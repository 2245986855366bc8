//! A hostile driver: malformed chains are counted as errors, never panic, and the device
//! keeps serving the well-formed chains that follow.

use super::*;
use crate::virtio::testing::{BudgetedRefills, Refiller, MEM_SIZE};

/// Transmits `descs`, then a good frame, and checks that only the good frame arrives and the
/// bad chain was completed and counted.
fn bad_tx_then_good(fx: &mut Fixture, descs: &[Desc]) {
    let before = fx.stats.snapshot();
    let bad = fx.transmit_chain(descs);
    assert_eq!(
        fx.tx.next_used(&fx.mem),
        Some((bad.into(), 0)),
        "bad chain completed"
    );
    assert_eq!(fx.stats.snapshot().tx_errors, before.tx_errors + 1);
    let good = frame(60, 9);
    let head = fx.transmit(&good);
    assert_eq!(fx.tx.next_used(&fx.mem), Some((head.into(), 0)));
    assert_eq!(fx.host_recv().as_deref(), Some(&good[..]));
    assert_eq!(fx.host_recv(), None, "the bad chain sent nothing");
    assert_eq!(fx.stats.snapshot().tx_frames, before.tx_frames + 1);
    assert!(!fx.transport.interrupt().needs_reset());
}

#[test]
fn a_tx_header_shorter_than_12_bytes_is_an_error() {
    let mut fx = Fixture::new();
    let addr = fx.arena.alloc(8);
    bad_tx_then_good(&mut fx, &[Desc::readable(addr, 8)]);
}

#[test]
fn a_tx_chain_with_only_a_header_is_an_error() {
    let mut fx = Fixture::new();
    let addr = fx.arena.alloc(12);
    bad_tx_then_good(&mut fx, &[Desc::readable(addr, 12)]);
}

#[test]
fn a_writable_descriptor_in_a_tx_chain_is_an_error() {
    let mut fx = Fixture::new();
    let (hdr, data) = fx.place_tx(&frame(60, 1));
    bad_tx_then_good(
        &mut fx,
        &[Desc::readable(hdr, 12), Desc::writable(data, 60)],
    );
}

#[test]
fn a_tx_buffer_outside_guest_memory_is_an_error() {
    let mut fx = Fixture::new();
    let (hdr, _) = fx.place_tx(&frame(60, 1));
    bad_tx_then_good(
        &mut fx,
        &[Desc::readable(hdr, 12), Desc::readable(MEM_SIZE - 16, 60)],
    );
    bad_tx_then_good(&mut fx, &[Desc::readable(u64::MAX - 4, 100)]);
}

#[test]
fn a_tx_frame_over_the_limit_is_an_error() {
    let mut fx = Fixture::new();
    let addr = fx.arena.alloc((NET_HDR_LEN + MAX_FRAME_LEN + 1) as u64);
    let len = (NET_HDR_LEN + MAX_FRAME_LEN + 1) as u32;
    bad_tx_then_good(&mut fx, &[Desc::readable(addr, len)]);
    bad_tx_then_good(&mut fx, &[Desc::readable(0, u32::MAX)]);
}

#[test]
fn a_tx_descriptor_loop_is_an_error() {
    let mut fx = Fixture::new();
    let (hdr, _) = fx.place_tx(&frame(60, 1));
    // Descriptor 15 points at itself; the chain never ends.
    fx.tx
        .write_desc(&fx.mem, 15, Desc::readable(hdr, 12).then(15));
    let before = fx.stats.snapshot().tx_errors;
    fx.tx.publish(&fx.mem, 15);
    notify(&mut fx.transport, TX_QUEUE.into());
    assert_eq!(fx.tx.next_used(&fx.mem), Some((15, 0)));
    assert_eq!(fx.stats.snapshot().tx_errors, before + 1);
    let good = frame(60, 2);
    fx.transmit(&good);
    assert_eq!(fx.host_recv().as_deref(), Some(&good[..]));
}

#[test]
fn a_lying_avail_index_marks_the_device_as_needing_reset() {
    let mut fx = Fixture::new();
    fx.tx.set_avail_idx(&fx.mem, 1000);
    notify(&mut fx.transport, TX_QUEUE.into());
    assert!(fx.transport.interrupt().needs_reset());
    assert_eq!(fx.host_recv(), None);
}

/// Posts the bad receive chain `descs`, then a good one, and checks that a host frame skips
/// the bad chain (returned empty, counted) and lands in the good one.
fn bad_rx_then_good(fx: &mut Fixture, descs: &[Desc]) {
    let bad = fx.rx.add_chain(&fx.mem, descs);
    let (good, addr) = fx.post_rx(256);
    let sent = frame(64, 3);
    fx.host.send(&sent).unwrap();
    fx.net().process_backend();
    assert_eq!(fx.rx.next_used(&fx.mem), Some((bad.into(), 0)));
    assert_eq!(fx.rx.next_used(&fx.mem), Some((good.into(), 76)));
    assert_eq!(fx.read_rx(addr, 76).1, sent);
    let stats = fx.stats.snapshot();
    assert_eq!((stats.rx_errors, stats.rx_frames), (1, 1));
}

#[test]
fn a_readable_descriptor_in_an_rx_chain_is_an_error() {
    let mut fx = Fixture::new();
    let addr = fx.arena.alloc(256);
    bad_rx_then_good(&mut fx, &[Desc::readable(addr, 256)]);
}

#[test]
fn an_rx_buffer_outside_guest_memory_is_an_error() {
    let mut fx = Fixture::new();
    bad_rx_then_good(&mut fx, &[Desc::writable(MEM_SIZE - 8, 256)]);
}

#[test]
fn an_rx_chain_too_small_for_even_the_header_keeps_the_device_working() {
    let mut fx = Fixture::new();
    let addr = fx.arena.alloc(4);
    let bad = fx.rx.add_chain(&fx.mem, &[Desc::writable(addr, 4)]);
    notify(&mut fx.transport, RX_QUEUE.into());
    for seed in 0..3 {
        fx.host.send(&frame(64, seed)).unwrap();
    }
    fx.net().process_backend();
    assert_eq!(fx.stats.snapshot().rx_errors, 3, "every frame is dropped");
    assert_eq!(fx.rx.next_used(&fx.mem), None);
    let _ = bad;
}

/// A backend standing for a driver on another vCPU refilling a ring while the device works:
/// each of its first `refills` frames sent or received makes the chain available once more,
/// and `frames` frames wait to be received.
struct RefillingBackend {
    refills: BudgetedRefills,
    frames: u32,
    fd: vmm_sys_util::eventfd::EventFd,
}

impl NetBackend for RefillingBackend {
    fn send(&mut self, _frame: &[u8]) -> std::io::Result<()> {
        self.refills.refill();
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Recv> {
        if self.frames == 0 {
            return Ok(Recv::Empty);
        }
        self.frames -= 1;
        self.refills.refill();
        let f = frame(60, 1);
        buf[..f.len()].copy_from_slice(&f);
        Ok(Recv::Frame(f.len()))
    }

    fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }
}

/// A fixture whose backend refills a ring `refills` times and has `frames` frames to receive;
/// the returned cell takes the [`Refiller`] once the chain to repeat is known.
fn refilling_fixture(
    refills: u32,
    frames: u32,
) -> (Fixture, Arc<std::sync::Mutex<Option<Refiller>>>) {
    let (refills, driver) = BudgetedRefills::new(refills);
    let backend = RefillingBackend {
        refills,
        frames,
        fd: vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
    };
    let (_, host) = PacketBackend::pair().unwrap();
    let net = Net::new(NetConfig::default(), Box::new(backend)).unwrap();
    (Fixture::with_device(net, host), driver)
}

/// Runs the device's pending work until there is none; returns how many rounds it took.
fn drain_pending_work(fx: &mut Fixture) -> u32 {
    let mut rounds = 0;
    while fx.transport.has_pending_work() {
        fx.transport.process_pending_work();
        rounds += 1;
        assert!(rounds < 10, "pending work never ends");
    }
    rounds
}

#[test]
fn one_tx_notify_sends_at_most_a_queue_of_frames_while_the_driver_refills() {
    let refills = 3 * 16;
    let (mut fx, driver) = refilling_fixture(refills, 0);
    let (hdr, data) = fx.place_tx(&frame(60, 3));
    let descs = [Desc::readable(hdr, 12), Desc::readable(data, 60)];
    let head = fx.tx.add_chain(&fx.mem, &descs);
    *driver.lock().unwrap() = Some(fx.tx.refiller(&fx.mem, head));
    notify(&mut fx.transport, TX_QUEUE.into());
    assert_eq!(fx.tx.used_idx(&fx.mem), 16, "one queue's worth");
    assert!(fx.transport.has_pending_work());
    assert_eq!(drain_pending_work(&mut fx), 3);
    assert_eq!(u32::from(fx.tx.used_idx(&fx.mem)), refills + 1);
    assert_eq!(fx.stats.snapshot().tx_frames, u64::from(refills + 1));
}

#[test]
fn one_rx_pass_fills_at_most_a_queue_of_buffers_while_the_driver_refills() {
    let refills = 3 * 16;
    let (mut fx, driver) = refilling_fixture(refills, refills + 1);
    let addr = fx.arena.alloc(128);
    let head = fx.rx.add_chain(&fx.mem, &[Desc::writable(addr, 128)]);
    *driver.lock().unwrap() = Some(fx.rx.refiller(&fx.mem, head));
    notify(&mut fx.transport, RX_QUEUE.into());
    assert_eq!(fx.rx.used_idx(&fx.mem), 16, "one queue's worth");
    assert!(fx.transport.has_pending_work());
    assert_eq!(drain_pending_work(&mut fx), 3);
    assert_eq!(u32::from(fx.rx.used_idx(&fx.mem)), refills + 1);
    assert_eq!(fx.stats.snapshot().rx_frames, u64::from(refills + 1));
}
