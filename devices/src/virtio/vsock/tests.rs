//! The vsock device behind the real transport, driven by the mock driver: a host connection
//! through the Unix socket, data both ways, and hostile tx chains.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::packet::{Header, Op, HEADER_LEN};
use super::test_support::{guest_header, temp_socket, GUEST};
use super::{Vsock, VsockConfig};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{
    counting_interrupt, guest_memory, init_device, notify, Arena, Desc, MockQueue,
};
use crate::virtio::{Memory, VirtioDevice, VIRTIO_F_VERSION_1};

struct Rig {
    mem: Memory,
    dev: MmioTransport<Vsock>,
    rx: MockQueue,
    tx: MockQueue,
    arena: Arena,
}

fn rig(name: &str) -> (Rig, std::path::PathBuf) {
    let path = temp_socket(&format!("dev-{name}"));
    let mem = guest_memory();
    let vsock = Vsock::new(&VsockConfig {
        guest_cid: GUEST,
        uds_path: path.clone(),
    })
    .unwrap();
    let mut dev = MmioTransport::new(vsock, mem.clone(), counting_interrupt()).unwrap();
    let rx = MockQueue::new(&mem, GuestAddress(0x1000), 16);
    let tx = MockQueue::new(&mem, GuestAddress(0x4000), 16);
    let ev = MockQueue::new(&mem, GuestAddress(0x7000), 16);
    let status = init_device(&mut dev, VIRTIO_F_VERSION_1, &[&rx, &tx, &ev]);
    assert_ne!(status & 4, 0, "DRIVER_OK");
    (
        Rig {
            mem,
            dev,
            rx,
            tx,
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
