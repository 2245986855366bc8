//! Transport tests: the register file, the status state machine, a hostile driver, and
//! save/restore.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::*;
use crate::virtio::testing::regs::*;
use crate::virtio::testing::*;
use crate::virtio::{ActivateError, Activation, Memory, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::BusDevice;

const FEATURE_X: u64 = 1 << 3;

/// A device with two queues of 16 that records what the transport asks of it.
#[derive(Default)]
struct Dummy {
    active: Option<Vec<Queue>>,
    notified: Vec<u16>,
    resets: usize,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn features(&self) -> u64 {
        FEATURE_X
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if !activation.queues.first().is_some_and(|q| q.ready()) {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.active = Some(activation.queues);
        Ok(())
    }
    fn set_memory(&mut self, _memory: Memory) {
        // The dummy keeps only its queues, not the memory.
    }

    fn reset(&mut self) {
        self.active = None;
        self.resets += 1;
    }
    fn queues(&self) -> &[Queue] {
        self.active.as_deref().unwrap_or(&[])
    }
    fn queue_notify(&mut self, index: u16) {
        self.notified.push(index);
    }
}

fn transport() -> (MmioTransport<Dummy>, Memory) {
    let mem = guest_memory();
    let t = MmioTransport::new(Dummy::default(), mem.clone(), counting_interrupt()).unwrap();
    (t, mem)
}

fn queue(mem: &Memory, n: u64) -> MockQueue {
    MockQueue::new(mem, vm_memory::GuestAddress(0x1_0000 * (n + 1)), 16)
}

const FEATURES: u64 = VIRTIO_F_VERSION_1 | FEATURE_X;
const UP: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;

#[test]
fn identity_registers() {
    let (mut t, _) = transport();
    assert_eq!(read_reg(&mut t, MAGIC), 0x7472_6976);
    assert_eq!(read_reg(&mut t, VERSION), 2);
    assert_eq!(read_reg(&mut t, DEVICE_ID), 42);
    assert_eq!(read_reg(&mut t, DEVICE_FEATURES), FEATURE_X as u32);
    write_reg(&mut t, DEVICE_FEATURES_SEL, 1);
    assert_eq!(read_reg(&mut t, DEVICE_FEATURES), 1);
    write_reg(&mut t, DEVICE_FEATURES_SEL, 2);
    assert_eq!(read_reg(&mut t, DEVICE_FEATURES), 0);
    write_reg(&mut t, QUEUE_SEL, 1);
    assert_eq!(read_reg(&mut t, QUEUE_NUM_MAX), 16);
    write_reg(&mut t, QUEUE_SEL, 2);
    assert_eq!(read_reg(&mut t, QUEUE_NUM_MAX), 0);
    let mut config = [0u8; 2];
    t.read(CONFIG + 6, &mut config);
    assert_eq!(config, [7, 8]);
}

#[test]
fn full_init_activates_and_notifies() {
    let (mut t, mem) = transport();
    let (q0, q1) = (queue(&mem, 0), queue(&mem, 1));
    assert_eq!(init_device(&mut t, FEATURES, &[&q0, &q1]), UP);
    assert!(t.is_activated());
    assert_eq!(t.device().queues().len(), 2);
    notify(&mut t, 1);
    notify(&mut t, 7);
    notify(&mut t, u32::MAX);
    assert_eq!(t.device().notified, vec![1]);
    t.interrupt().signal_used_queue().unwrap();
    assert_eq!(read_reg(&mut t, INTERRUPT_STATUS), 1);
    write_reg(&mut t, INTERRUPT_ACK, 1);
    assert_eq!(read_reg(&mut t, INTERRUPT_STATUS), 0);
    write_reg(&mut t, STATUS, 0);
    assert_eq!(read_reg(&mut t, STATUS), 0);
    assert!(t.device().queues().is_empty());
}

#[test]
fn features_without_version_1_or_not_offered_are_refused() {
    let (mut t, mem) = transport();
    assert_eq!(negotiate(&mut t, FEATURE_X), ACKNOWLEDGE | DRIVER);
    assert_eq!(negotiate(&mut t, FEATURES | 1 << 5), ACKNOWLEDGE | DRIVER);
    // DRIVER_OK without FEATURES_OK is not taken either.
    write_reg(&mut t, STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(read_reg(&mut t, STATUS), ACKNOWLEDGE | DRIVER);
    // Reset and retry.
    let q0 = queue(&mem, 0);
    assert_eq!(init_device(&mut t, FEATURES, &[&q0]), UP);
}

#[test]
fn steps_out_of_order_and_cleared_bits_are_ignored() {
    let (mut t, _) = transport();
    write_reg(&mut t, STATUS, DRIVER);
    assert_eq!(read_reg(&mut t, STATUS), 0);
    write_reg(&mut t, STATUS, ACKNOWLEDGE | DRIVER);
    write_reg(&mut t, STATUS, ACKNOWLEDGE);
    assert_eq!(read_reg(&mut t, STATUS), ACKNOWLEDGE | DRIVER);
    // Feature writes only count between DRIVER and FEATURES_OK.
    assert_eq!(
        negotiate(&mut t, FEATURES),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
    write_reg(&mut t, DRIVER_FEATURES_SEL, 0);
    write_reg(&mut t, DRIVER_FEATURES, 0);
    assert_eq!(t.save().driver_features, FEATURES);
    write_reg(&mut t, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | FAILED);
    assert_eq!(read_reg(&mut t, STATUS) & FAILED, FAILED);
    write_reg(&mut t, STATUS, UP | FAILED);
    assert_eq!(read_reg(&mut t, STATUS) & DRIVER_OK, 0);
}

#[test]
fn bad_queue_sizes_need_reset_and_reset_recovers() {
    for size in [0, 3, 32, 0x1_0000] {
        let (mut t, mem) = transport();
        negotiate(&mut t, FEATURES);
        write_reg(&mut t, QUEUE_SEL, 0);
        write_reg(&mut t, QUEUE_NUM, size);
        assert_ne!(read_reg(&mut t, STATUS) & NEEDS_RESET, 0, "size {size}");
        let q0 = queue(&mem, 0);
        assert_eq!(init_device(&mut t, FEATURES, &[&q0]), UP);
    }
}

#[test]
fn queues_outside_memory_or_misaligned_are_refused() {
    let (mut t, mem) = transport();
    negotiate(&mut t, FEATURES);
    write_reg(&mut t, QUEUE_SEL, 0);
    write_reg(&mut t, QUEUE_DESC_LOW, 0x10);
    write_reg(&mut t, QUEUE_DESC_HIGH, 0x1);
    write_reg(&mut t, QUEUE_READY, 1);
    assert_eq!(read_reg(&mut t, QUEUE_READY), 0);
    assert_ne!(read_reg(&mut t, STATUS) & NEEDS_RESET, 0);
    // Activation fails too, since queue 0 is not ready: the device still needs reset.
    write_reg(
        &mut t,
        STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_eq!(read_reg(&mut t, STATUS) & DRIVER_OK, 0);

    negotiate(&mut t, FEATURES);
    write_reg(&mut t, QUEUE_USED_LOW, 0x1002);
    assert_ne!(read_reg(&mut t, STATUS) & NEEDS_RESET, 0);

    // Rings that end past memory.
    negotiate(&mut t, FEATURES);
    let mut q = queue(&mem, 0);
    q.used_ring = vm_memory::GuestAddress(MEM_SIZE - 8);
    setup_queue(&mut t, 0, &q);
    assert_eq!(read_reg(&mut t, QUEUE_READY), 0);
    assert_ne!(read_reg(&mut t, STATUS) & NEEDS_RESET, 0);
}

#[test]
fn queue_registers_are_ignored_outside_the_setup_phase() {
    let (mut t, mem) = transport();
    write_reg(&mut t, QUEUE_NUM, 8);
    write_reg(&mut t, QUEUE_READY, 1);
    assert_eq!(read_reg(&mut t, QUEUE_READY), 0);
    let q0 = queue(&mem, 0);
    init_device(&mut t, FEATURES, &[&q0]);
    write_reg(&mut t, QUEUE_SEL, 1);
    write_reg(&mut t, QUEUE_READY, 1);
    assert_eq!(read_reg(&mut t, QUEUE_READY), 0);
    assert_eq!(read_reg(&mut t, STATUS), UP);
}

#[test]
fn odd_widths_and_offsets_read_zero_and_never_panic() {
    let (mut t, mem) = transport();
    let mut data = [0xffu8; 2];
    t.read(MAGIC, &mut data);
    assert_eq!(data, [0, 0]);
    let mut word = [0xffu8; 4];
    t.read(MAGIC + 1, &mut word);
    assert_eq!(word, [0; 4]);
    let mut odd = [0xffu8; 3];
    t.read(CONFIG, &mut odd);
    assert_eq!(odd, [0; 3]);
    t.write(STATUS, &[1]);
    assert_eq!(read_reg(&mut t, STATUS), 0);

    // Hammer the whole window with pseudo-random accesses, the device activated or not.
    let q0 = queue(&mem, 0);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..20_000u32 {
        if round % 5000 == 0 {
            init_device(&mut t, FEATURES, &[&q0]);
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let offset = (seed >> 8) % (MMIO_LEN + 16);
        let len = [1usize, 2, 3, 4, 8][(seed % 5) as usize];
        let bytes = (seed >> 32).to_le_bytes();
        if seed & 0x100 == 0 {
            t.write(offset, &bytes[..len]);
        } else {
            t.read(offset, &mut vec![0u8; len]);
        }
    }
}

#[test]
fn state_round_trips_through_save_and_restore() {
    let (mut t, mem) = transport();
    let (q0, q1) = (queue(&mem, 0), queue(&mem, 1));
    init_device(&mut t, FEATURES, &[&q0, &q1]);
    write_reg(&mut t, QUEUE_SEL, 1);
    t.interrupt().signal_used_queue().unwrap();
    t.config_changed();
    let saved = t.save();
    assert_eq!(saved.status, UP);
    assert_eq!(saved.queues.len(), 2);
    assert!(saved.queues.iter().all(|q| q.ready && q.size == 16));

    let restored =
        MmioTransport::restore(Dummy::default(), mem.clone(), counting_interrupt(), &saved)
            .unwrap();
    assert!(restored.is_activated());
    assert_eq!(restored.device().queues().len(), 2);
    assert_eq!(restored.save(), saved);

    // Before activation too.
    let (mut fresh, _) = transport();
    negotiate(&mut fresh, FEATURES);
    let early = fresh.save();
    let back = MmioTransport::restore(Dummy::default(), mem, counting_interrupt(), &early);
    assert_eq!(back.unwrap().save(), early);
}

/// A change that makes a saved state invalid.
type Corruption = Box<dyn Fn(&mut MmioTransportState)>;

#[test]
fn restore_rejects_inconsistent_state() {
    let (mut t, mem) = transport();
    let q0 = queue(&mem, 0);
    init_device(&mut t, FEATURES, &[&q0]);
    let good = t.save();
    let restore = |state: &MmioTransportState| {
        MmioTransport::restore(Dummy::default(), mem.clone(), counting_interrupt(), state)
    };
    let cases: Vec<(&str, Corruption)> = vec![
        ("queue count", Box::new(|s| s.queues.truncate(1))),
        ("max size", Box::new(|s| s.queues[0].max_size = 32)),
        ("size", Box::new(|s| s.queues[0].size = 3)),
        ("alignment", Box::new(|s| s.queues[0].desc_table = 0x1001)),
        (
            "outside memory",
            Box::new(|s| s.queues[0].used_ring = MEM_SIZE),
        ),
        ("status bits", Box::new(|s| s.status |= 0x10)),
        ("status order", Box::new(|s| s.status = DRIVER_OK)),
        ("features", Box::new(|s| s.driver_features |= 1 << 40)),
        ("version 1", Box::new(|s| s.driver_features = FEATURE_X)),
        ("interrupt", Box::new(|s| s.interrupt_status = 4)),
        ("ready early", Box::new(|s| s.status = ACKNOWLEDGE | DRIVER)),
        ("not activatable", Box::new(|s| s.queues[0].ready = false)),
    ];
    for (name, corrupt) in cases {
        let mut state = good.clone();
        corrupt(&mut state);
        assert!(restore(&state).is_err(), "{name} accepted");
    }
    assert!(restore(&good).is_ok());
}

#[test]
fn needs_reset_survives_save_and_is_cleared_by_reset() {
    let (mut t, mem) = transport();
    let q0 = queue(&mem, 0);
    init_device(&mut t, FEATURES, &[&q0]);
    t.interrupt().signal_needs_reset().unwrap();
    let saved = t.save();
    assert_eq!(saved.status, UP | NEEDS_RESET);
    let mut back = MmioTransport::restore(
        Dummy::default(),
        mem,
        Arc::new(CountingInterrupt::default()),
        &saved,
    )
    .unwrap();
    assert_eq!(read_reg(&mut back, STATUS), UP | NEEDS_RESET);
    write_reg(&mut back, STATUS, 0);
    assert_eq!(read_reg(&mut back, STATUS), 0);
    assert_eq!(back.device().resets, 1);
}

#[test]
fn restore_rejects_event_idx_that_was_never_negotiated() {
    let (mut t, mem) = transport();
    let (q0, q1) = (queue(&mem, 0), queue(&mem, 1));
    init_device(&mut t, FEATURES, &[&q0, &q1]);
    let mut state = t.save();
    state.queues[1].event_idx_enabled = true;
    let err = MmioTransport::restore(Dummy::default(), mem, counting_interrupt(), &state);
    assert!(
        matches!(err, Err(RestoreError::EventIdxNotNegotiated(1))),
        "{:?}",
        err.err()
    );
}

#[test]
fn restore_rejects_failed_together_with_driver_ok() {
    let (mut t, mem) = transport();
    let q0 = queue(&mem, 0);
    init_device(&mut t, FEATURES, &[&q0]);
    let mut state = t.save();
    state.status |= FAILED;
    let err = MmioTransport::restore(Dummy::default(), mem.clone(), counting_interrupt(), &state);
    assert!(
        matches!(err, Err(RestoreError::FailedWhileDriverOk(s)) if s == UP | FAILED),
        "{:?}",
        err.err()
    );
    // FAILED before DRIVER_OK is a state a driver can leave a device in, and restores.
    state.status = ACKNOWLEDGE | DRIVER | FEATURES_OK | FAILED;
    assert!(MmioTransport::restore(Dummy::default(), mem, counting_interrupt(), &state).is_ok());
}
