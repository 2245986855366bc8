//! Port I/O exits, element by element.
//!
//! KVM hands a string instruction (`rep ins`/`rep outs`, byte, word or dword) over as one
//! `KVM_EXIT_IO` with `count` elements of `size` bytes packed in its data area (Linux's
//! `Documentation/virt/kvm/api.rst`, `kvm_run.io`). To the device it is `count` accesses of
//! `size` bytes to the same port, in order, exactly as `count` single `in`s or `out`s would
//! be; never one access of `size * count` bytes, which no port is wide enough to take.
//!
//! MMIO needs no such care: KVM never batches MMIO. Each `KVM_EXIT_MMIO` is one access of at
//! most 8 bytes (`kvm_run.mmio.len`); a string instruction on MMIO exits once per element.

use zygote_devices::Bus;

/// Reads `data.len() / size` elements of `size` bytes from `port`, one access each, into
/// `data` in order. An element no device answers reads as all ones (an ISA bus floats high).
/// A `size` of 0 or one that does not divide `data` is treated as one access of all of it.
pub fn read(bus: &Bus, port: u16, size: usize, data: &mut [u8]) {
    for element in data.chunks_mut(element_size(size, data.len())) {
        if bus.read(u64::from(port), element).is_err() {
            element.fill(0xff);
        }
    }
}

/// Writes `data` to `port` as `data.len() / size` accesses of `size` bytes, in order. Writes
/// no device takes are dropped, as on real hardware.
pub fn write(bus: &Bus, port: u16, size: usize, data: &[u8]) {
    for element in data.chunks(element_size(size, data.len())) {
        let _ = bus.write(u64::from(port), element);
    }
}

/// KVM's element size (1, 2 or 4), guarded against a zero or a size that does not divide the
/// data, which KVM never sends.
fn element_size(size: usize, len: usize) -> usize {
    if size == 0 || !len.is_multiple_of(size) {
        len.max(1)
    } else {
        size
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use zygote_devices::{BusDevice, BusRange};

    use super::*;

    /// Records every access (offset, bytes) and answers reads with a running counter.
    #[derive(Default)]
    struct Recorder {
        reads: Vec<(u64, usize)>,
        writes: Vec<(u64, Vec<u8>)>,
        next: u8,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.reads.push((offset, data.len()));
            for byte in data.iter_mut() {
                self.next += 1;
                *byte = self.next;
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    /// A bus with a recorder on 8 ports from 0x3f8.
    fn bus() -> (Bus, Arc<Mutex<Recorder>>) {
        let mut bus = Bus::new();
        let device = Arc::new(Mutex::new(Recorder::default()));
        let range = BusRange {
            base: 0x3f8,
            len: 8,
        };
        bus.insert(device.clone(), range).unwrap();
        (bus, device)
    }

    #[test]
    fn rep_ins_reads_every_element_from_the_same_port() {
        for size in [1usize, 2, 4] {
            for count in [2usize, 4, 17] {
                let (bus, device) = bus();
                let mut data = vec![0u8; size * count];
                read(&bus, 0x3f8, size, &mut data);
                let expected: Vec<u8> = (1..=(size * count) as u8).collect();
                assert_eq!(data, expected, "size {size} count {count}");
                let reads = device.lock().unwrap().reads.clone();
                assert_eq!(reads, vec![(0, size); count], "size {size} count {count}");
            }
        }
    }

    #[test]
    fn rep_outs_writes_every_element_to_the_same_port() {
        for size in [1usize, 2, 4] {
            for count in [2usize, 5, 64] {
                let (bus, device) = bus();
                let data: Vec<u8> = (0..size * count).map(|i| i as u8).collect();
                write(&bus, 0x3f9, size, &data);
                let writes = device.lock().unwrap().writes.clone();
                let expected: Vec<_> = data.chunks(size).map(|e| (1, e.to_vec())).collect();
                assert_eq!(writes, expected, "size {size} count {count}");
            }
        }
    }

    #[test]
    fn an_element_at_the_last_port_of_a_range_stays_on_that_port() {
        // 4 elements of 2 bytes at the last port but one: each fits, the whole would not.
        let (bus, device) = bus();
        let mut data = [0u8; 8];
        read(&bus, 0x3fe, 2, &mut data);
        assert_eq!(device.lock().unwrap().reads, vec![(6, 2); 4]);
        assert_eq!(data, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn elements_no_device_answers_read_as_ones_and_writes_are_dropped() {
        let (bus, device) = bus();
        let mut data = [0u8; 6];
        read(&bus, 0x80, 2, &mut data);
        assert_eq!(data, [0xff; 6]);
        // A dword at the last port crosses the range: all ones, element by element.
        let mut data = [0u8; 8];
        read(&bus, 0x3ff, 4, &mut data);
        assert_eq!(data, [0xff; 8]);
        write(&bus, 0x80, 1, &[1, 2, 3]);
        let device = device.lock().unwrap();
        assert!(device.reads.is_empty() && device.writes.is_empty());
    }

    #[test]
    fn a_single_access_is_one_element() {
        let (bus, device) = bus();
        let mut data = [0u8; 4];
        read(&bus, 0x3f8, 4, &mut data);
        write(&bus, 0x3f8, 4, &[9, 8, 7, 6]);
        let device = device.lock().unwrap();
        assert_eq!(device.reads, vec![(0, 4)]);
        assert_eq!(device.writes, vec![(0, vec![9, 8, 7, 6])]);
    }
}
