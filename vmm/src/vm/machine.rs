//! The part of making a VM that a cold boot and a restore share: the KVM VM over its memory,
//! the irqchip and PIT, the UART, the buses; then, with vCPUs and devices, the [`Vm`].

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zygote_devices::legacy::{Serial, SerialState, COM1_IRQ};
use zygote_devices::Bus;

use super::{quiesce, setup, KvmVm, SerialSource, Vm, VmCore};
use crate::console::{OutputDrain, SerialOutput};
use crate::context::KvmContext;
use crate::control::VmControl;
use crate::devices::DeviceHandles;
use crate::error::{Error, KvmError};
use crate::idle::Doorbell;
use crate::memory::GuestRam;
use crate::state::RestoreError;
use crate::vcpu::Vcpu;
use crate::virtio::VirtioDevices;

/// A KVM VM with memory, irqchip, PIT and UART, waiting for its devices and vCPUs.
pub(super) struct Machine {
    pub(super) context: Arc<KvmContext>,
    pub(super) kvm: KvmVm,
    pub(super) mmio: Bus,
    pub(super) virtio: VirtioDevices,
    /// Wakes the VM's idle vCPUs; its devices ring it.
    doorbell: Arc<Doorbell>,
    serial: Arc<Mutex<Serial>>,
    console_drain: Option<OutputDrain>,
}

impl Machine {
    /// Creates the KVM VM over `ram` (slots registered before the irqchip, see `setup`) and
    /// the UART, fresh or from `serial_state`.
    pub(super) fn new(
        context: Arc<KvmContext>,
        ram: GuestRam,
        serial_output: SerialOutput,
        serial_state: Option<&SerialState>,
    ) -> Result<Self, Error> {
        let vm_fd = setup::create_vm_fd(context.kvm(), &ram)?;
        Self::over(context, vm_fd, ram, serial_output, serial_state)
    }

    /// A machine on a VM made ahead of time (a pool's), whose slots already point at `ram`.
    pub(super) fn over(
        context: Arc<KvmContext>,
        vm_fd: kvm_ioctls::VmFd,
        ram: GuestRam,
        serial_output: SerialOutput,
        serial_state: Option<&SerialState>,
    ) -> Result<Self, Error> {
        let kvm = KvmVm::new(vm_fd, ram);
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(KvmError::EventFd)?;
        kvm.vm_fd()
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(KvmError::Irqfd)?;
        let (writer, console_drain) = serial_output.into_writer().map_err(Error::ConsoleThread)?;
        let serial = match serial_state {
            None => Serial::new(serial_irq, writer),
            Some(state) => {
                Serial::restore(state, serial_irq, writer).map_err(RestoreError::from)?
            }
        };
        let doorbell = Arc::new(Doorbell::default());
        Ok(Self {
            context,
            kvm,
            mmio: Bus::new(),
            virtio: VirtioDevices::new(doorbell.clone()),
            doorbell,
            serial: Arc::new(Mutex::new(serial)),
            console_drain,
        })
    }

    /// The VM, with its vCPUs and devices.
    pub(super) fn finish(
        self,
        vcpus: Vec<Vcpu>,
        devices: DeviceHandles,
        serial_input: Option<Box<dyn SerialSource>>,
    ) -> Result<Vm, Error> {
        let control = Arc::new(VmControl::new(vcpus.len(), self.doorbell.clone()));
        let buses = setup::buses(&self.serial, control.clone(), self.mmio)?;
        Ok(Vm {
            vcpus: vcpus
                .into_iter()
                .map(|vcpu| Arc::new(Mutex::new(vcpu)))
                .collect(),
            serial_input,
            virtio: self.virtio,
            core: VmCore {
                buses,
                serial: self.serial,
                doorbell: self.doorbell,
                control,
                devices,
                event_loop: None,
                console_drain: self.console_drain,
                serial_input: None,
                gate: quiesce::Gate::new(),
                lifecycle: Mutex::new(()),
                dirty: Mutex::new(None),
                forks: std::sync::atomic::AtomicU64::new(0),
                family: Arc::default(),
                context: self.context,
                kvm: self.kvm,
            },
        })
    }
}

/// The CPUID leaves whose feature bits a restore compares: (leaf, subleaf, registers).
const FEATURE_LEAVES: [(u32, u32); 3] = [(0x1, 0), (0x7, 0), (0x8000_0001, 0)];

/// Refuses a saved vCPU whose CPUID has feature bits this host does not give a new vCPU.
///
/// What the host gives is read back from `fd` (a fresh vCPU) after setting the filtered
/// supported set: some hosts put back bits a VMM clears (../shared/ENVIRONMENT.md), so
/// `KVM_GET_SUPPORTED_CPUID` alone is not what a guest sees.
pub(super) fn check_cpuid(
    context: &KvmContext,
    fd: &kvm_ioctls::VcpuFd,
    saved: &crate::state::VcpuState,
    count: u8,
) -> Result<(), RestoreError> {
    let offered = crate::arch::cpuid::filter(context.supported_cpuid(), saved.index, count, None);
    let ioctl = |source| crate::state::VcpuStateError::Ioctl {
        op: "KVM_SET_CPUID2",
        index: saved.index,
        source,
    };
    fd.set_cpuid2(&offered).map_err(ioctl)?;
    let host = fd
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl)?;
    for (leaf, subleaf) in FEATURE_LEAVES {
        let find = |entries: &[kvm_bindings::kvm_cpuid_entry2]| {
            entries
                .iter()
                .find(|e| e.function == leaf && e.index == subleaf)
                .copied()
        };
        let Some(want) = find(&saved.cpuid) else {
            continue;
        };
        let have = find(host.as_slice()).unwrap_or_default();
        // Leaf 1 EBX is topology (APIC ID, counts), not features.
        let registers = [
            ("ebx", want.ebx, have.ebx, leaf != 0x1),
            ("ecx", want.ecx, have.ecx, true),
            ("edx", want.edx, have.edx, true),
        ];
        for (register, w, h, features) in registers {
            let missing = w & !h;
            if features && missing != 0 {
                return Err(RestoreError::CpuidMismatch {
                    vcpu: saved.index,
                    leaf,
                    register,
                    missing,
                });
            }
        }
    }
    Ok(())
}
