//! The vsock device behind the real transport, driven by the mock driver: a host connection
//! through the Unix socket, data both ways, and hostile tx chains.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Address, Bytes, GuestAddress};

use super::muxer::CONTROL_QUEUE_LEN;
use super::packet::{Header, Op, HEADER_LEN};
use super::test_support::{guest_header, temp_socket, GUEST};
use super::{Vsock, VsockConfig};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{
    counting_interrupt, guest_memory, init_device, notify, Arena, CountingInterrupt, Desc,
    MockQueue,
};
use crate::virtio::{Memory, VirtioDevice, VIRTIO_F_VERSION_1};

struct Rig {
    mem: Memory,
    dev: MmioTransport<Vsock>,
    rx: MockQueue,
    tx: MockQueue,
    ev: MockQueue,
    arena: Arena,
}

fn rig(name: &str) -> (Rig, std::path::PathBuf) {
    rig_with_tx_size(name, 16)
}

/// A rig whose tx queue has `tx_size` entries (at most 256).
fn rig_with_tx_size(name: &str, tx_size: u16) -> (Rig, std::path::PathBuf) {
    let path = temp_socket(&format!("dev-{name}"));
    let mem = guest_memory();
    let vsock = Vsock::new(&VsockConfig {
        guest_cid: GUEST,
        uds_path: path.clone(),
    })
    .unwrap();
    let mut dev = MmioTransport::new(vsock, mem.clone(), counting_interrupt()).unwrap();
    let rx = MockQueue::new(&mem, GuestAddress(0x1000), 16);
    let tx = MockQueue::new(&mem, GuestAddress(0x4000), tx_size);
    let ev = MockQueue::new(&mem, GuestAddress(0x8000), 16);
    let status = init_device(&mut dev, VIRTIO_F_VERSION_1, &[&rx, &tx, &ev]);
    assert_ne!(status & 4, 0, "DRIVER_OK");
    (
        Rig {
            mem,
            dev,
            rx,
            tx,
            ev,
            arena: Arena::default(),
        },
        path,
    )
}

impl Rig {
    /// Posts one rx buffer of `len` bytes; returns its address.
    fn post_rx(&mut self, len: u32) -> u64 {
        let addr = self.arena.alloc(u64::from(len));
        self.rx.add_chain(&self.mem, &[Desc::writable(addr, len)]);
        notify(&mut self.dev, 0);
        addr
    }

    /// Waits for the device to fill an rx buffer at `addr`; returns header and payload.
    fn recv(&mut self, addr: u64) -> (Header, Vec<u8>) {
        for _ in 0..400 {
            if let Some((_, len)) = self.rx.next_used(&self.mem) {
                let mut bytes = vec![0u8; len as usize];
                self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
                let header = Header::from_bytes(bytes[..HEADER_LEN].try_into().unwrap());
                return (header, bytes[HEADER_LEN..].to_vec());
            }
            self.dev.device_mut().process_backend();
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no rx packet");
    }

    /// Makes a header-only packet available on the tx queue without notifying; returns its
    /// head.
    fn queue_tx(&mut self, header: &Header) -> u16 {
        let h = self.arena.alloc(HEADER_LEN as u64);
        self.mem
            .write_slice(&header.to_bytes(), GuestAddress(h))
            .unwrap();
        self.tx
            .add_chain(&self.mem, &[Desc::readable(h, HEADER_LEN as u32)])
    }

    /// Sends a packet from the guest: header and payload in separate descriptors.
    fn send(&mut self, header: &Header, payload: &[u8]) {
        let h = self.arena.alloc(HEADER_LEN as u64);
        self.mem
            .write_slice(&header.to_bytes(), GuestAddress(h))
            .unwrap();
        let mut descs = vec![Desc::readable(h, HEADER_LEN as u32)];
        if !payload.is_empty() {
            let p = self.arena.alloc(payload.len() as u64);
            self.mem.write_slice(payload, GuestAddress(p)).unwrap();
            descs.push(Desc::readable(p, payload.len() as u32));
        }
        self.send_chain(&descs);
    }

    fn send_chain(&mut self, descs: &[Desc]) {
        self.tx.add_chain(&self.mem, descs);
        notify(&mut self.dev, 1);
        assert!(self.tx.next_used(&self.mem).is_some(), "tx chain completed");
    }
}

/// Connects from the host, accepts in the guest, and returns the host stream and host port.
fn connect(rig: &mut Rig, path: &std::path::Path, port: u32) -> (UnixStream, u32) {
    let mut host = UnixStream::connect(path).unwrap();
    host.write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    let buf = rig.post_rx(4096);
    let (request, _) = rig.recv(buf);
    assert_eq!(request.op(), Some(Op::Request));
    assert_eq!(request.dst_port, port);
    let local = request.src_port;
    rig.send(&guest_header(Op::Response, port, local, 0), &[]);
    let mut line = vec![0u8; format!("OK {local}\n").len()];
    host.read_exact(&mut line).unwrap();
    assert_eq!(line, format!("OK {local}\n").as_bytes());
    (host, local)
}

#[test]
fn config_space_holds_the_guest_cid() {
    let (mut rig, _) = rig("config");
    let mut cid = [0u8; 8];
    crate::BusDevice::read(&mut rig.dev, 0x100, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST);
}

#[test]
fn host_connection_carries_data_both_ways() {
    let (mut rig, path) = rig("data");
    let (mut host, local) = connect(&mut rig, &path, 1024);
    assert_eq!(rig.dev.device().connection_count(), 1, "after handshake");
    rig.send(&guest_header(Op::Rw, 1024, local, 4), b"ping");
    assert_eq!(rig.dev.device().connection_count(), 1, "after ping");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    host.write_all(b"pong").unwrap();
    let buf = rig.post_rx(4096);
    let (h, payload) = rig.recv(buf);
    assert_eq!(h.op(), Some(Op::Rw));
    assert_eq!(payload, b"pong");
}

#[test]
fn hostile_tx_chains_are_consumed_and_the_device_keeps_working() {
    let (mut rig, path) = rig("hostile");
    let (_first, local) = connect(&mut rig, &path, 7);
    // A header that claims more payload than the chain holds: the stream lost data, so the
    // connection is reset (the host sees it close) and the guest gets an RST.
    rig.send(&guest_header(Op::Rw, 7, local, 1000), b"short");
    let rst = rig.post_rx(4096);
    assert_eq!(rig.recv(rst).0.op(), Some(Op::Rst));
    assert_eq!(rig.dev.device().connection_count(), 0);
    let (mut host, local) = connect(&mut rig, &path, 7);
    // A descriptor outside guest memory.
    rig.send_chain(&[Desc::readable(0xffff_ffff_0000, 44)]);
    // A header split short of 44 bytes.
    let h = rig.arena.alloc(16);
    rig.send_chain(&[Desc::readable(h, 16)]);
    // A device-writable descriptor in a tx chain.
    let w = rig.arena.alloc(64);
    rig.send_chain(&[Desc::writable(w, 64)]);
    // A descriptor loop: 0 -> 1 -> 0.
    let a = rig.arena.alloc(44);
    rig.tx.add_chain(
        &rig.mem,
        &[Desc::readable(a, 44).then(1), Desc::readable(a, 44).then(0)],
    );
    notify(&mut rig.dev, 1);
    let _ = rig.tx.next_used(&rig.mem);
    // A good packet still goes through.
    rig.send(&guest_header(Op::Rw, 7, local, 2), b"ok");
    let mut got = [0u8; 2];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ok");
}

#[test]
fn an_rx_buffer_too_small_for_a_header_is_returned_empty() {
    let (mut rig, path) = rig("small-rx");
    let mut host = UnixStream::connect(&path).unwrap();
    host.write_all(b"CONNECT 5\n").unwrap();
    let addr = rig.arena.alloc(8);
    rig.rx.add_chain(&rig.mem, &[Desc::writable(addr, 8)]);
    for _ in 0..100 {
        rig.dev.device_mut().process_backend();
        if let Some((_, len)) = rig.rx.next_used(&rig.mem) {
            assert_eq!(len, 0);
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the small buffer was not returned");
}

#[test]
fn a_guest_that_posts_no_rx_buffers_is_throttled_not_the_host() {
    let (mut rig, _) = rig("throttle");
    // Data for a connection that does not exist: every packet is answered with RST, and the
    // guest reads none of the answers.
    let stray = guest_header(Op::Rw, 1, 9, 0);
    for _ in 0..CONTROL_QUEUE_LEN / 16 {
        for _ in 0..16 {
            rig.queue_tx(&stray);
        }
        notify(&mut rig.dev, 1);
        for _ in 0..16 {
            assert!(rig.tx.next_used(&rig.mem).is_some(), "taken");
        }
    }
    // The answers fill the control queue: further packets stay in the tx queue.
    for _ in 0..16 {
        rig.queue_tx(&stray);
    }
    notify(&mut rig.dev, 1);
    assert_eq!(rig.tx.next_used(&rig.mem), None, "the guest is throttled");
    assert!(!rig.dev.has_pending_work());
    // Rx buffers drain the answers, and the packets that waited are taken and answered too.
    let mut buffers = HashMap::new();
    let mut rsts = 0;
    let mut waiting_taken = 0;
    for _ in 0..CONTROL_QUEUE_LEN / 16 + 1 {
        for _ in 0..16 {
            let addr = rig.arena.alloc(64);
            buffers.insert(
                rig.rx.add_chain(&rig.mem, &[Desc::writable(addr, 64)]),
                addr,
            );
        }
        notify(&mut rig.dev, 0);
        while let Some((head, len)) = rig.rx.next_used(&rig.mem) {
            assert_eq!(len, HEADER_LEN as u32);
            let mut bytes = [0u8; HEADER_LEN];
            let addr = buffers[&(head as u16)];
            rig.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            assert_eq!(Header::from_bytes(&bytes).op(), Some(Op::Rst));
            rsts += 1;
        }
        while rig.tx.next_used(&rig.mem).is_some() {
            waiting_taken += 1;
        }
    }
    assert_eq!(waiting_taken, 16);
    assert_eq!(rsts, CONTROL_QUEUE_LEN + 16);
    assert!(!rig.dev.interrupt().needs_reset());
}

#[test]
fn one_tx_notify_takes_at_most_a_queue_of_packets_while_the_driver_refills() {
    let (mut rig, _) = rig_with_tx_size("refill", 256);
    // An RST for no connection: taken and dropped, no answer.
    let head = rig.queue_tx(&guest_header(Op::Rst, 1, 9, 0));
    let refiller = rig.tx.refiller(&rig.mem, head);
    refiller.fill();
    // A driver on another vCPU keeps the ring full while the device works. (Whether it
    // refills during the pass depends on scheduling; the bound holds either way.)
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(false));
    let driver = {
        let (stop, running) = (stop.clone(), running.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                refiller.fill();
                running.store(true, Ordering::SeqCst);
            }
        })
    };
    while !running.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    notify(&mut rig.dev, 1);
    stop.store(true, Ordering::SeqCst);
    driver.join().unwrap();
    // The chains available from the start are taken, and no more, however fast the driver
    // refills.
    assert_eq!(rig.tx.used_idx(&rig.mem), rig.tx.size, "one queue's worth");
    // What the driver refilled is taken on its next notification, or as pending work.
    notify(&mut rig.dev, 1);
    let mut rounds = 0;
    while rig.dev.has_pending_work() {
        rig.dev.process_pending_work();
        rounds += 1;
        assert!(rounds < 4, "pending work never ends");
    }
    let avail: u16 = rig
        .mem
        .read_obj(rig.tx.avail_ring.unchecked_add(2))
        .unwrap();
    assert_eq!(
        rig.tx.used_idx(&rig.mem),
        avail,
        "everything made available was taken"
    );
    assert!(!rig.dev.interrupt().needs_reset());
}

#[test]
fn an_unusable_tx_ring_marks_the_device_as_needing_reset() {
    let (mut rig, _) = rig("bad-avail");
    rig.tx.set_avail_idx(&rig.mem, rig.tx.size + 1);
    notify(&mut rig.dev, 1);
    assert!(rig.dev.interrupt().needs_reset());
    assert_eq!(rig.tx.used_idx(&rig.mem), 0);
}

/// The rig's device saved and restored the way a snapshot does, its queues (and the buffers
/// posted on them) as they were; returns the rig around the restored device and its line.
fn restore(rig: Rig, path: &std::path::Path) -> (Rig, Arc<CountingInterrupt>) {
    let transport = rig.dev.save();
    let device = rig.dev.device().save();
    assert_eq!(device.config.uds_path, path);
    drop(rig.dev);
    let line = counting_interrupt();
    let vsock = Vsock::restore(&device).unwrap();
    let dev = MmioTransport::restore(vsock, rig.mem.clone(), line.clone(), &transport).unwrap();
    assert!(dev.is_activated());
    let rig = Rig {
        mem: rig.mem,
        dev,
        rx: rig.rx,
        tx: rig.tx,
        ev: rig.ev,
        arena: rig.arena,
    };
    (rig, line)
}

impl Rig {
    /// Posts an event buffer of `len` bytes, preset to all ones so a written id shows, without
    /// notifying; returns its address.
    fn post_event_buffer(&mut self, len: u32) -> u64 {
        let addr = self.arena.alloc(u64::from(len));
        self.mem
            .write_slice(&vec![0xff; len as usize], GuestAddress(addr))
            .unwrap();
        self.ev.add_chain(&self.mem, &[Desc::writable(addr, len)]);
        addr
    }

    /// The event the device returned in the buffer at `addr`: (length written, id).
    fn event(&mut self, addr: u64) -> Option<(u32, u32)> {
        let (_, len) = self.ev.next_used(&self.mem)?;
        Some((len, self.mem.read_obj(GuestAddress(addr)).unwrap()))
    }
}

#[test]
fn a_restored_device_sends_transport_reset_on_its_event_queue() {
    let (mut rig, path) = rig("transport-reset");
    // 8-byte event buffers, like the guest agent's (Linux posts 4-byte ones).
    let addr = rig.post_event_buffer(8);
    notify(&mut rig.dev, 2);
    assert_eq!(rig.event(addr), None, "a live device sends no event");
    let (mut rig, line) = restore(rig, &path);
    // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: `struct virtio_vsock_event { le32 id }`, id 0.
    assert_eq!(rig.event(addr), Some((4, 0)));
    let rest: u32 = rig.mem.read_obj(GuestAddress(addr + 4)).unwrap();
    assert_eq!(rest, u32::MAX, "only the 4-byte event is written");
    assert_eq!(line.count(), 1, "the driver is interrupted");
    assert_eq!(rig.dev.device().connection_count(), 0);
}

/// A host connection made right after a restore must not reach the driver before the
/// TRANSPORT_RESET does its work, or the reset wipes the new connection: the device holds the
/// receive queue until the driver has handled the event (posted the buffer again, notified).
#[test]
fn a_host_connection_after_a_restore_waits_until_the_driver_handled_the_reset() {
    let (mut rig, path) = rig("transport-reset-hold");
    let addr = rig.post_event_buffer(8);
    notify(&mut rig.dev, 2);
    let (mut rig, _line) = restore(rig, &path);
    assert_eq!(rig.event(addr), Some((4, 0)));
    let mut host = UnixStream::connect(&path).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    let buf = rig.arena.alloc(4096);
    rig.rx.add_chain(&rig.mem, &[Desc::writable(buf, 4096)]);
    notify(&mut rig.dev, 0);
    for _ in 0..20 {
        rig.dev.device_mut().process_backend();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        rig.rx.next_used(&rig.mem).is_none(),
        "the REQUEST reached the driver before it handled the reset"
    );
    // The driver handles the event and posts its buffer again.
    rig.post_event_buffer(8);
    notify(&mut rig.dev, 2);
    let (request, _) = rig.recv(buf);
    assert_eq!(request.op(), Some(Op::Request));
    assert_eq!(request.dst_port, 9);
}

/// The same when the driver posts its event buffer again without notifying (Linux with
/// VIRTIO_RING_F_EVENT_IDX suppresses the kick): the device looks again on its own.
#[test]
fn a_held_host_connection_goes_through_when_the_driver_reposts_without_notifying() {
    let (mut rig, path) = rig("transport-reset-silent");
    let addr = rig.post_event_buffer(8);
    notify(&mut rig.dev, 2);
    let (mut rig, _line) = restore(rig, &path);
    assert_eq!(rig.event(addr), Some((4, 0)));
    let mut host = UnixStream::connect(&path).unwrap();
    host.write_all(b"CONNECT 11\n").unwrap();
    let buf = rig.arena.alloc(4096);
    rig.rx.add_chain(&rig.mem, &[Desc::writable(buf, 4096)]);
    notify(&mut rig.dev, 0);
    for _ in 0..5 {
        rig.dev.device_mut().process_backend();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        rig.rx.next_used(&rig.mem).is_none(),
        "held until the reset is handled"
    );
    // Re-posted, no notification: the device's own timer wakes its event loop (its backend
    // fd becomes readable) and the re-check delivers the REQUEST.
    rig.post_event_buffer(8);
    let fd = rig.dev.device().backend_fd().unwrap();
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 100) };
    assert_eq!(ready, 1, "the device never woke itself to look again");
    let (request, _) = rig.recv(buf);
    assert_eq!(request.op(), Some(Op::Request));
    assert_eq!(request.dst_port, 11);
}

#[test]
fn a_restored_device_without_event_buffers_sends_the_reset_when_one_is_posted() {
    let (rig, path) = rig("transport-reset-late");
    let (mut rig, line) = restore(rig, &path);
    assert_eq!(line.count(), 0, "no buffer, no event yet");
    let addr = rig.post_event_buffer(4);
    notify(&mut rig.dev, 2);
    assert_eq!(rig.event(addr), Some((4, 0)));
    assert_eq!(line.count(), 1);
    // Only once.
    let addr = rig.post_event_buffer(4);
    notify(&mut rig.dev, 2);
    assert_eq!(rig.event(addr), None);
}

/// The event queue is only written after a restore, so the hostile guest on a real VM cannot
/// reach this path: bad event chains (a loop, outside memory, in the MMIO gap, zero length,
/// too short, device-readable) each come back empty, and the event goes to the first buffer
/// that can hold it (a huge one, written in its first 4 bytes only).
#[test]
fn hostile_event_chains_come_back_empty_and_the_event_takes_the_first_usable_one() {
    let (rig, path) = rig("transport-reset-hostile");
    let (mut rig, line) = restore(rig, &path);
    let a = rig.arena.alloc(8);
    rig.mem.write_slice(&[0xff; 8], GuestAddress(a)).unwrap();
    // Descriptor 0 points at itself: the first chain is a loop.
    let looped = rig.ev.add_chain(&rig.mem, &[Desc::writable(a, 8).then(0)]);
    assert_eq!(looped, 0);
    let bad = [
        Desc::writable(crate::virtio::testing::MEM_SIZE + 0x1000, 8),
        Desc::writable(0xd000_0000, 8),
        Desc::writable(a, 0),
        Desc::writable(a, 2),
        Desc::readable(a, 8),
    ];
    let heads: Vec<u16> = bad
        .iter()
        .map(|&desc| rig.ev.add_chain(&rig.mem, &[desc]))
        .collect();
    let huge = rig.arena.alloc(8);
    rig.mem.write_slice(&[0xff; 8], GuestAddress(huge)).unwrap();
    let huge_head = rig
        .ev
        .add_chain(&rig.mem, &[Desc::writable(huge, 0xffff_f000)]);
    let good = rig.post_event_buffer(8);
    notify(&mut rig.dev, 2);
    assert_eq!(rig.ev.next_used(&rig.mem), Some((0, 0)));
    for head in heads {
        assert_eq!(rig.ev.next_used(&rig.mem), Some((head.into(), 0)));
    }
    assert_eq!(rig.ev.next_used(&rig.mem), Some((huge_head.into(), 4)));
    let event: [u8; 8] = rig.mem.read_obj(GuestAddress(huge)).unwrap();
    assert_eq!(event, [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(rig.event(good), None, "the event went out once");
    assert!(!rig.dev.interrupt().needs_reset());
    assert_eq!(line.count(), 1);
}
