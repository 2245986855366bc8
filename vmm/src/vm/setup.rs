//! Pieces of VM creation: the KVM VM itself, the legacy device buses, the serial input pump.

use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use zygote_devices::legacy::{
    DebugExit, Serial, COM1_PORT, COM1_PORT_LEN, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN, I8042,
    I8042_PORT, I8042_PORT_LEN,
};
use zygote_devices::{Bus, BusRange, VmRequestSink};

use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::control::VmControl;
use crate::error::{Error, KvmError};
use crate::memory::GuestRam;
use crate::vcpu;

/// Creates the KVM VM with `ram` registered and the in-kernel irqchip and PIT.
///
/// Order matters for speed: registering memory slots before `KVM_CREATE_IRQCHIP` takes about
/// 65 µs for 128 MiB here, after it about 7.8 ms (`cargo run --release -p zygote-benches
/// --example memslot_order`).
pub(super) fn create_vm_fd(kvm: &Kvm, ram: &GuestRam) -> Result<VmFd, Error> {
    create_vm_fd_with(kvm, |vm_fd| Ok(ram.register(vm_fd)?))
}

/// [`create_vm_fd`], with the memory slots registered by `slots`.
pub(super) fn create_vm_fd_with(
    kvm: &Kvm,
    slots: impl FnOnce(&VmFd) -> Result<(), Error>,
) -> Result<VmFd, Error> {
    let vm_fd = kvm.create_vm().map_err(KvmError::CreateVm)?;
    vm_fd
        .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(KvmError::IdentityMap)?;
    vm_fd
        .set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(KvmError::TssAddress)?;
    slots(&vm_fd)?;
    vm_fd.create_irq_chip().map_err(KvmError::Irqchip)?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(KvmError::Pit)?;
    Ok(vm_fd)
}

/// The PIO bus with the legacy devices, and `mmio` (already holding the virtio devices).
pub(super) fn buses(
    serial: &Arc<Mutex<Serial>>,
    control: Arc<VmControl>,
    mmio: Bus,
) -> Result<vcpu::run::Buses, Error> {
    let sink: Arc<dyn VmRequestSink> = control;
    let mut pio = Bus::new();
    let range = |base, len| BusRange { base, len };
    pio.insert(serial.clone(), range(COM1_PORT, COM1_PORT_LEN))?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(sink.clone()))),
        range(I8042_PORT, I8042_PORT_LEN),
    )?;
    pio.insert(
        Arc::new(Mutex::new(DebugExit::new(sink))),
        range(DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN),
    )?;
    Ok(vcpu::run::Buses {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
    })
}
