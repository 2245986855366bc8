//! virtio-net through the mmio transport and the mock driver, with the packet backend.

mod hostile;
mod tap;

use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{
    counting_interrupt, guest_memory, init_device, notify, read_reg, regs, Arena,
    CountingInterrupt, Desc, MockQueue,
};
use crate::virtio::{Memory, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::BusDevice;

const FEATURES: u64 = VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS;

/// A driven device: guest memory, both queues, the transport and the host's endpoint.
struct Fixture {
    mem: Memory,
    transport: MmioTransport<Net>,
    rx: MockQueue,
    tx: MockQueue,
    arena: Arena,
    host: PacketEndpoint,
    line: Arc<CountingInterrupt>,
    stats: NetStats,
}

impl Fixture {
    fn new() -> Self {
        let (backend, host) = PacketBackend::pair().unwrap();
        let net = Net::new(NetConfig::default(), Box::new(backend)).unwrap();
        Self::with_device(net, host)
    }

    fn with_device(net: Net, host: PacketEndpoint) -> Self {
        let mem = guest_memory();
        let stats = net.stats();
        let line = counting_interrupt();
        let mut transport = MmioTransport::new(net, mem.clone(), line.clone()).unwrap();
        let rx = MockQueue::new(&mem, GuestAddress(0x1000), 16);
        let tx = MockQueue::new(&mem, GuestAddress(0x4000), 16);
        let status = init_device(&mut transport, FEATURES, &[&rx, &tx]);
        assert_ne!(status & regs::DRIVER_OK, 0, "device refused DRIVER_OK");
        Self {
            mem,
            transport,
            rx,
            tx,
            arena: Arena::default(),
            host,
            line,
            stats,
        }
    }

    /// Puts `frame` behind a zeroed header in guest memory: (header address, frame address).
    fn place_tx(&mut self, frame: &[u8]) -> (u64, u64) {
        let hdr = self.arena.alloc(NET_HDR_LEN as u64);
        self.mem
            .write_slice(&[0; NET_HDR_LEN], GuestAddress(hdr))
            .unwrap();
        let data = self.arena.alloc(frame.len() as u64);
        self.mem.write_slice(frame, GuestAddress(data)).unwrap();
        (hdr, data)
    }

    /// Transmits `frame` as a header descriptor and a frame descriptor.
    fn transmit(&mut self, frame: &[u8]) -> u16 {
        let (hdr, data) = self.place_tx(frame);
        let descs = [
            Desc::readable(hdr, NET_HDR_LEN as u32),
            Desc::readable(data, frame.len() as u32),
        ];
        self.transmit_chain(&descs)
    }

    fn transmit_chain(&mut self, descs: &[Desc]) -> u16 {
        let head = self.tx.add_chain(&self.mem, descs);
        notify(&mut self.transport, TX_QUEUE.into());
        head
    }

    /// Posts one receive buffer of `len` bytes, split into a 6-byte piece and the rest so
    /// the header straddles two descriptors; returns (head, address of the first piece).
    fn post_rx(&mut self, len: u32) -> (u16, u64) {
        let addr = self.arena.alloc(len.into());
        let descs = [Desc::writable(addr, 6), Desc::writable(addr + 6, len - 6)];
        let head = self.rx.add_chain(&self.mem, &descs);
        notify(&mut self.transport, RX_QUEUE.into());
        (head, addr)
    }

    fn host_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let len = self
            .host
            .recv(&mut buf, Duration::from_millis(200))
            .unwrap()?;
        buf.truncate(len);
        Some(buf)
    }

    fn net(&mut self) -> &mut Net {
        self.transport.device_mut()
    }

    /// Header and frame the device wrote at `addr`.
    fn read_rx(&self, addr: u64, len: u32) -> ([u8; NET_HDR_LEN], Vec<u8>) {
        let mut buf = vec![0u8; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        let frame = buf.split_off(NET_HDR_LEN);
        (buf.try_into().unwrap(), frame)
    }
}

/// An Ethernet frame of `len` bytes, broadcast, with a recognisable payload.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&DEFAULT_MAC);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

#[test]
fn a_guest_frame_reaches_the_host() {
    let mut fx = Fixture::new();
    let sent = frame(60, 1);
    let head = fx.transmit(&sent);
    assert_eq!(fx.host_recv().as_deref(), Some(&sent[..]));
    assert_eq!(fx.tx.next_used(&fx.mem), Some((head.into(), 0)));
    assert_eq!(fx.line.count(), 1);
    let stats = fx.stats.snapshot();
    assert_eq!(
        (stats.tx_frames, stats.tx_bytes, stats.tx_errors),
        (1, 60, 0)
    );
}

#[test]
fn a_frame_in_one_descriptor_with_its_header_is_sent_too() {
    let mut fx = Fixture::new();
    let sent = frame(1514, 2);
    let mut bytes = vec![0u8; NET_HDR_LEN];
    bytes.extend_from_slice(&sent);
    let addr = fx.arena.alloc(bytes.len() as u64);
    fx.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
    fx.transmit_chain(&[Desc::readable(addr, bytes.len() as u32)]);
    assert_eq!(fx.host_recv().as_deref(), Some(&sent[..]));
}

#[test]
fn a_host_frame_reaches_the_guest() {
    let mut fx = Fixture::new();
    let (head, addr) = fx.post_rx(2048);
    assert_eq!(fx.line.count(), 0, "nothing to deliver yet");
    let sent = frame(100, 3);
    fx.host.send(&sent).unwrap();
    fx.net().process_backend();
    let used_len = (NET_HDR_LEN + sent.len()) as u32;
    assert_eq!(fx.rx.next_used(&fx.mem), Some((head.into(), used_len)));
    let (header, got) = fx.read_rx(addr, used_len);
    assert_eq!(
        header,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        "num_buffers = 1"
    );
    assert_eq!(got, sent);
    assert_eq!(fx.line.count(), 1);
    let stats = fx.stats.snapshot();
    assert_eq!(
        (stats.rx_frames, stats.rx_bytes, stats.rx_errors),
        (1, 100, 0)
    );
}

#[test]
fn frames_wait_until_the_guest_posts_buffers() {
    let mut fx = Fixture::new();
    let frames: Vec<_> = (0..3).map(|i| frame(64 + i, i as u8)).collect();
    for f in &frames {
        fx.host.send(f).unwrap();
    }
    fx.net().process_backend();
    assert_eq!(fx.rx.next_used(&fx.mem), None);
    assert!(
        fx.net().save().pending_frame.is_some(),
        "one frame waits in the device"
    );

    let (_, first) = fx.post_rx(256);
    assert_eq!(fx.rx.next_used(&fx.mem).map(|u| u.1), Some(12 + 64));
    assert_eq!(fx.read_rx(first, 12 + 64).1, frames[0]);
    assert_eq!(fx.rx.next_used(&fx.mem), None);

    let (_, second) = fx.post_rx(256);
    let (_, third) = fx.post_rx(256);
    assert_eq!(fx.read_rx(second, 12 + 65).1, frames[1]);
    assert_eq!(fx.read_rx(third, 12 + 66).1, frames[2]);
    let stats = fx.stats.snapshot();
    assert_eq!((stats.rx_frames, stats.rx_dropped), (3, 0), "nothing lost");
}

#[test]
fn a_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_reused() {
    let mut fx = Fixture::new();
    let (head, addr) = fx.post_rx(100);
    fx.host.send(&frame(200, 4)).unwrap();
    fx.net().process_backend();
    assert_eq!(fx.rx.next_used(&fx.mem), None, "the chain stays posted");
    assert_eq!(fx.stats.snapshot().rx_errors, 1);

    let small = frame(50, 5);
    fx.host.send(&small).unwrap();
    fx.net().process_backend();
    assert_eq!(fx.rx.next_used(&fx.mem), Some((head.into(), 62)));
    assert_eq!(fx.read_rx(addr, 62).1, small);
    assert_eq!(fx.stats.snapshot().rx_frames, 1);
}

#[test]
fn the_mac_and_link_status_are_in_config_space() {
    let mac = [0x02, 1, 2, 3, 4, 5];
    let (backend, host) = PacketBackend::pair().unwrap();
    let net = Net::new(NetConfig { mac }, Box::new(backend)).unwrap();
    let mut fx = Fixture::with_device(net, host);
    let dev: &mut dyn BusDevice = &mut fx.transport;
    assert_eq!(read_reg(dev, regs::DEVICE_ID), 1);
    let mut config = [0u8; 8];
    for (i, byte) in config.iter_mut().enumerate() {
        let mut b = [0u8; 1];
        dev.read(regs::CONFIG + i as u64, &mut b);
        *byte = b[0];
    }
    assert_eq!(config[..6], mac);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "link up");
    dev.write(regs::CONFIG, &[0xff]);
    assert_eq!(
        fx.transport.device().mac(),
        mac,
        "config writes are ignored"
    );
}

#[test]
fn features_and_default_mac() {
    let (backend, _host) = PacketBackend::pair().unwrap();
    let net = Net::new(NetConfig::default(), Box::new(backend)).unwrap();
    assert_eq!(net.features(), FEATURES);
    assert_eq!(net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(net.mac(), DEFAULT_MAC);
    assert_eq!(DEFAULT_MAC[0] & 0b11, 0b10, "locally administered unicast");
}

#[test]
fn a_multicast_mac_is_refused() {
    let (backend, _host) = PacketBackend::pair().unwrap();
    let mac = [0x01, 0, 0x5e, 0, 0, 1];
    let err = Net::new(NetConfig { mac }, Box::new(backend)).err();
    assert_eq!(err, Some(NetError::MulticastMac(mac)));
}

#[test]
fn the_backend_fd_is_dropped_once_the_host_end_closes() {
    let mut fx = Fixture::new();
    assert!(fx.net().backend_fd().is_some());
    let Fixture {
        host,
        mut transport,
        ..
    } = fx;
    drop(host);
    transport.device_mut().process_backend();
    assert_eq!(transport.device().backend_fd(), None);
}

#[test]
fn nothing_is_received_before_activation_and_reset_drops_the_waiting_frame() {
    let (backend, host) = PacketBackend::pair().unwrap();
    let mut net = Net::new(NetConfig::default(), Box::new(backend)).unwrap();
    host.send(&frame(60, 6)).unwrap();
    net.process_backend();
    assert_eq!(
        net.save().pending_frame,
        None,
        "inactive: the frame stays in the backend"
    );

    let mut fx = Fixture::with_device(net, host);
    fx.net().process_backend();
    assert!(fx.net().save().pending_frame.is_some());
    fx.net().reset();
    assert_eq!(fx.net().save().pending_frame, None);
    assert_eq!(fx.stats.snapshot().rx_dropped, 1);
}

#[test]
fn state_round_trips_with_the_waiting_frame() {
    let mut fx = Fixture::new();
    fx.transmit(&frame(60, 7));
    let waiting = frame(80, 8);
    fx.host.send(&waiting).unwrap();
    fx.net().process_backend();
    let state = fx.net().save();
    assert_eq!(state.pending_frame.as_deref(), Some(&waiting[..]));
    assert_eq!(state.stats.tx_frames, 1);

    let (backend, _host) = PacketBackend::pair().unwrap();
    let restored = Net::restore(Box::new(backend), &state).unwrap();
    assert_eq!(restored.save(), state);
    assert_eq!(restored.stats().snapshot(), state.stats);
}

#[test]
fn restore_rejects_bad_state() {
    let bad = [
        NetState {
            mac: [0xff; 6],
            ..NetState::default()
        },
        NetState {
            pending_frame: Some(Vec::new()),
            ..NetState::default()
        },
        NetState {
            pending_frame: Some(vec![0; MAX_FRAME_LEN + 1]),
            ..NetState::default()
        },
    ];
    for state in &bad {
        let (backend, _host) = PacketBackend::pair().unwrap();
        assert!(Net::restore(Box::new(backend), state).is_err(), "{state:?}");
    }
}

#[test]
fn the_trait_hooks_are_the_inherent_ones() {
    let mut fx = Fixture::new();
    let fd = fx.net().backend_fd();
    assert!(fd.is_some());
    assert_eq!(VirtioDevice::backend_fd(fx.transport.device()), fd);
    let (head, _) = fx.post_rx(256);
    fx.host.send(&frame(60, 10)).unwrap();
    VirtioDevice::process_backend(fx.net());
    assert_eq!(fx.rx.next_used(&fx.mem), Some((head.into(), 72)));
}

#[test]
fn a_restored_device_delivers_the_frame_that_was_waiting() {
    let mut fx = Fixture::new();
    let waiting = frame(90, 11);
    fx.host.send(&waiting).unwrap();
    fx.net().process_backend();
    let transport_state = fx.transport.save();
    let net_state = fx.net().save();

    let (backend, host) = PacketBackend::pair().unwrap();
    let net = Net::restore(Box::new(backend), &net_state).unwrap();
    fx.stats = net.stats();
    fx.host = host;
    fx.transport =
        MmioTransport::restore(net, fx.mem.clone(), fx.line.clone(), &transport_state).unwrap();
    let (head, addr) = fx.post_rx(256);
    assert_eq!(fx.rx.next_used(&fx.mem), Some((head.into(), 102)));
    assert_eq!(fx.read_rx(addr, 102).1, waiting);
    assert_eq!(fx.stats.snapshot().rx_frames, 1);
}
