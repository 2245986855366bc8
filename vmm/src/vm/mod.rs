//! A microVM: created from a validated configuration, then started, paused, resumed and
//! stopped.

mod running;
mod serial_input;
mod setup;
mod teardown;

use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zygote_devices::legacy::{Serial, COM1_IRQ};

use zygote_devices::Bus;

use crate::boot;
use crate::config::VmConfig;
use crate::console::OutputDrain;
use crate::control::VmControl;
use crate::devices::{attach_all, DeviceHandles};
use crate::error::{Error, KvmError};
use crate::exit::ExitReason;
use crate::memory::GuestRam;
use crate::vcpu::{self, Vcpu};
use crate::virtio::{EventLoop, VirtioDevices};

pub use running::RunningVm;
use serial_input::InputPump;
pub use serial_input::SerialSource;
use teardown::KvmVm;

/// A created VM whose vCPUs have not started yet.
pub struct Vm {
    // Field order is drop order: vCPUs go before the VM they belong to.
    vcpus: Vec<Vcpu>,
    serial_input: Option<Box<dyn SerialSource>>,
    virtio: VirtioDevices,
    core: VmCore,
}

/// What a VM keeps for its whole life, started or not.
struct VmCore {
    buses: vcpu::run::Buses,
    serial: Arc<Mutex<Serial>>,
    control: Arc<VmControl>,
    devices: DeviceHandles,
    /// Serves the virtio devices once the VM runs; stopped before the VM is torn down.
    event_loop: Option<EventLoop>,
    /// The thread writing console output to a host writer, if the output goes to one.
    console_drain: Option<OutputDrain>,
    /// The thread feeding serial input, if there is a source; stopped with the VM.
    serial_input: Option<InputPump>,
    kvm: KvmVm,
}

impl Vm {
    /// Creates the VM described by `config`: KVM VM, memory, devices, vCPUs, loaded kernel.
    pub fn create(config: VmConfig) -> Result<Self, Error> {
        let VmConfig {
            vcpus: vcpu_count,
            memory_bytes,
            mut kernel,
            cmdline,
            mut initrd,
            serial_output,
            serial_input,
            devices,
        } = config;
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let ram = GuestRam::new(memory_bytes)?;
        let vm_fd = setup::create_vm_fd(&kvm, &ram)?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)?;
        let kvm = KvmVm::new(kvm, vm_fd, ram);
        let control = Arc::new(VmControl::new(usize::from(vcpu_count)));
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(KvmError::EventFd)?;
        kvm.vm_fd()
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(KvmError::Irqfd)?;
        let (serial_writer, console_drain) =
            serial_output.into_writer().map_err(Error::ConsoleThread)?;
        let serial = Serial::new(serial_irq, serial_writer);
        let serial = Arc::new(Mutex::new(serial));
        let memory = kvm.ram().memory();
        let mut mmio = Bus::new();
        let mut virtio = VirtioDevices::default();
        let handles = attach_all(devices, kvm.vm_fd(), &mut mmio, memory, &mut virtio)?;
        let buses = setup::buses(&serial, control.clone(), mmio)?;
        let cmdline = boot::cmdline::with_additions(&cmdline, virtio.cmdline_entries());
        let entry = boot::load(
            memory,
            memory_bytes,
            vcpu_count,
            &mut kernel,
            &cmdline,
            initrd.as_mut(),
        )?;
        let vcpus = (0..vcpu_count)
            .map(|index| Vcpu::new(kvm.vm_fd(), &supported, index, vcpu_count))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(boot_vcpu) = vcpus.first() {
            boot_vcpu.set_boot_state(entry)?;
        }
        Ok(Self {
            vcpus,
            serial_input,
            virtio,
            core: VmCore {
                buses,
                serial,
                control,
                devices: handles,
                event_loop: None,
                console_drain,
                serial_input: None,
                kvm,
            },
        })
    }

    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.core.kvm.ram().memory()
    }

    /// Handles on the VM's devices (net counters, the vsock socket path).
    pub fn devices(&self) -> &DeviceHandles {
        &self.core.devices
    }

    /// Starts the vCPU threads.
    pub fn start(self) -> Result<RunningVm, Error> {
        vcpu::install_kick_handler().map_err(vcpu::VcpuError::KickHandler)?;
        let Self {
            mut core,
            vcpus,
            serial_input,
            virtio,
        } = self;
        let control = core.control.clone();
        core.event_loop = virtio.start(move |error| {
            control.finish(ExitReason::HostError(Arc::new(error)));
        })?;
        let mut running = RunningVm {
            threads: Vec::with_capacity(vcpus.len()),
            core,
        };
        for vcpu in vcpus {
            let core = &running.core;
            match vcpu::spawn(vcpu, core.buses.clone(), core.control.clone()) {
                Ok(thread) => running.threads.push(thread),
                Err(e) => {
                    running.stop();
                    return Err(e.into());
                }
            }
        }
        if let Some(input) = serial_input {
            let pump = InputPump::spawn(input, running.core.serial.clone());
            running.core.serial_input = Some(pump.map_err(Error::SerialInputThread)?);
        }
        Ok(running)
    }
}
