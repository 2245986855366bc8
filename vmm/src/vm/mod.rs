//! A microVM: created from a validated configuration or from saved state, then started,
//! paused, resumed and stopped.

mod family;
mod fork;
mod machine;
mod pool;
pub(crate) mod quiesce;
mod running;
mod serial_input;
mod setup;
mod teardown;

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use crate::arch::identity;
use crate::boot;
use crate::config::VmConfig;
use crate::console::{OutputDrain, SerialOutput};
use crate::context::KvmContext;
use crate::control::VmControl;
use crate::devices::{attach_all, CreatedFiles, DeviceHandles};
use crate::error::Error;
use crate::exit::ExitReason;
use crate::idle::Doorbell;
use crate::memory::GuestRam;
use crate::state::{self, DeviceResources, MachineState, RestoreError};
use crate::vcpu::{self, run::SharedVcpu, Vcpu};
use crate::virtio::{EventLoop, VirtioDevices};
use zygote_devices::legacy::Serial;

pub use fork::{Fork, ForkConfig, ForkError};
pub use pool::VmPool;
pub use running::RunningVm;
use serial_input::InputPump;
pub use serial_input::SerialSource;
use teardown::KvmVm;

/// A created VM whose vCPUs have not started yet.
pub struct Vm {
    // Field order is drop order: vCPUs go before the VM they belong to.
    vcpus: Vec<SharedVcpu>,
    serial_input: Option<Box<dyn SerialSource>>,
    virtio: VirtioDevices,
    core: VmCore,
}

/// What a VM keeps for its whole life, started or not.
struct VmCore {
    buses: vcpu::run::Buses,
    serial: Arc<Mutex<Serial>>,
    /// Wakes idle vCPUs; serial input rings it.
    doorbell: Arc<Doorbell>,
    control: Arc<VmControl>,
    devices: DeviceHandles,
    /// Serves the virtio devices once the VM runs; stopped before the VM is torn down.
    event_loop: Option<EventLoop>,
    /// The thread writing console output to a host writer, if the output goes to one.
    console_drain: Option<OutputDrain>,
    /// The thread feeding serial input, if there is a source; stopped with the VM.
    serial_input: Option<InputPump>,
    /// Parks the event loop and the serial pump while the VM is paused.
    gate: quiesce::Gate,
    /// Serializes pause, resume and capture between callers.
    lifecycle: Mutex<()>,
    /// Tracks the pages written since the last snapshot, for diff snapshots.
    dirty: Mutex<Option<(zygote_cow::WriteTracker, zygote_snapshot::SnapshotId)>>,
    /// How many children this VM has forked (MACs derived for them).
    forks: std::sync::atomic::AtomicU64,
    /// Shared with every VM forked from it or its ancestors: CIDs and sockets derived.
    family: Arc<family::Family>,
    context: Arc<KvmContext>,
    kvm: KvmVm,
}

/// What a restore from a file or a fork adds to [`Vm::restore`].
#[derive(Default)]
pub(crate) struct RestoreExtras {
    /// Compare the saved CPUID with what this host gives (a state from elsewhere), refusing
    /// it with [`RestoreError::CpuidMismatch`] if it needs a feature the host lacks.
    pub(crate) check_cpuid: bool,
    /// A pre-created VM whose slots already point at the RAM (a pool's).
    pub(crate) shell: Option<pool::Shell>,
    /// The child's disks, forked from the parent's, in order.
    pub(crate) forked_blocks: Vec<zygote_devices::virtio::block::Block>,
    /// Each saved disk's overlay, from a snapshot.
    pub(crate) overlays: Vec<Option<zygote_devices::virtio::block::OverlayState>>,
}

/// What a restored VM gets from its host instead of from the saved state.
#[derive(Default)]
pub struct RestoreConfig {
    /// The process's KVM context; a new one is opened when `None`.
    pub context: Option<Arc<KvmContext>>,
    /// Where the restored guest's console goes.
    pub serial_output: SerialOutput,
    /// A source of serial input for the restored guest.
    pub serial_input: Option<Box<dyn SerialSource>>,
    /// Disks, NICs and the vsock socket for the restored devices.
    pub devices: DeviceResources,
}

impl Vm {
    /// Creates the VM described by `config`: KVM VM, memory, devices, vCPUs, loaded kernel.
    pub fn create(config: VmConfig) -> Result<Self, Error> {
        let VmConfig {
            context,
            vcpus: vcpu_count,
            memory_bytes,
            mut kernel,
            cmdline,
            mut initrd,
            serial_output,
            serial_input,
            devices,
        } = config;
        let context = match context {
            Some(context) => context,
            None => KvmContext::new()?,
        };
        let ram = GuestRam::new(memory_bytes)?;
        let mut machine = machine::Machine::new(context, ram, serial_output, None)?;
        let memory = machine.kvm.ram().memory().clone();
        // Overlay files created here are removed again if any later step fails.
        let mut created = CreatedFiles::default();
        let handles = attach_all(
            devices,
            machine.kvm.vm_fd(),
            &mut machine.mmio,
            &memory,
            &mut machine.virtio,
            &mut created,
        )?;
        let cmdline = boot::cmdline::with_additions(&cmdline, machine.virtio.cmdline_entries());
        let entry = boot::load(
            &memory,
            memory_bytes,
            vcpu_count,
            &mut kernel,
            &cmdline,
            initrd.as_mut(),
        )?;
        identity::write(&memory, &identity::first()?)?;
        let supported = machine.context.supported_cpuid();
        let vcpus = (0..vcpu_count)
            .map(|index| Vcpu::new(machine.kvm.vm_fd(), supported, index, vcpu_count))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(boot_vcpu) = vcpus.first() {
            boot_vcpu.set_boot_state(entry)?;
        }
        let vm = machine.finish(vcpus, handles, serial_input)?;
        created.keep();
        Ok(vm)
    }

    /// Makes a VM from a captured state over `ram` (which must hold the guest memory that
    /// goes with the state), with host resources from `config`. The VM is not started.
    ///
    /// # Errors
    /// [`Error::Restore`] names what in the state was refused; nothing is left running.
    pub fn restore(
        state: &MachineState,
        ram: GuestRam,
        config: RestoreConfig,
    ) -> Result<Self, Error> {
        Self::restore_into(state, ram, config, RestoreExtras::default())
    }

    /// [`Vm::restore`] with what a snapshot file or a fork adds (see [`RestoreExtras`]).
    pub(crate) fn restore_into(
        state: &MachineState,
        ram: GuestRam,
        config: RestoreConfig,
        extras: RestoreExtras,
    ) -> Result<Self, Error> {
        let RestoreExtras {
            check_cpuid,
            shell,
            forked_blocks,
            overlays,
        } = extras;
        if ram.size() != state.memory_bytes {
            return Err(RestoreError::Invalid("the memory size differs from the saved one").into());
        }
        if state.vcpus.is_empty() || state.vcpus.len() > usize::from(crate::MAX_VCPUS) {
            return Err(RestoreError::Invalid("vCPU count out of range").into());
        }
        let context = match config.context {
            Some(context) => context,
            None => KvmContext::new()?,
        };
        let (mut machine, mut made) = match shell {
            Some(mut shell) => {
                let vcpus = std::mem::take(&mut shell.vcpus);
                let vm_fd = shell
                    .vm_fd
                    .take()
                    .ok_or(RestoreError::Invalid("a pooled VM was used twice"))?;
                let machine = machine::Machine::over(
                    context,
                    vm_fd,
                    ram,
                    config.serial_output,
                    Some(&state.devices.serial),
                )?;
                (machine, vcpus.into_iter())
            }
            None => {
                let machine = machine::Machine::new(
                    context,
                    ram,
                    config.serial_output,
                    Some(&state.devices.serial),
                )?;
                (machine, Vec::new().into_iter())
            }
        };
        state
            .vm
            .restore(machine.kvm.vm_fd())
            .map_err(RestoreError::from)?;
        // vCPUs (and their LAPICs) before the devices: a device that reactivates raises its
        // interrupt (a vsock TRANSPORT_RESET, chains it finishes), and that interrupt must
        // reach a LAPIC whose state is already restored, not one KVM_SET_LAPIC overwrites.
        let mut vcpus = Vec::with_capacity(state.vcpus.len());
        for (index, saved) in state.vcpus.iter().enumerate() {
            if usize::from(saved.index) != index {
                return Err(RestoreError::Invalid("vCPUs are not saved in index order").into());
            }
            let vcpu = match made.next() {
                Some(vcpu) => vcpu,
                None => Vcpu::create(machine.kvm.vm_fd(), saved.index)?,
            };
            if check_cpuid {
                let count = state.vcpus.len() as u8;
                machine::check_cpuid(&machine.context, &vcpu.fd, saved, count)?;
            }
            saved.restore(&vcpu.fd).map_err(RestoreError::from)?;
            vcpus.push(vcpu);
        }
        let memory = machine.kvm.ram().memory().clone();
        let mut created = CreatedFiles::default();
        let disks = state::Disks {
            created: &mut created,
            forked: forked_blocks,
            overlays: &overlays,
        };
        let mut place = state::Placement {
            vm: machine.kvm.vm_fd(),
            mmio: &mut machine.mmio,
            memory: &memory,
            virtio: &mut machine.virtio,
        };
        let handles = state::restore_virtio(&state.devices, config.devices, disks, &mut place)
            .map_err(RestoreError::from)?;
        let vm = machine.finish(vcpus, handles, config.serial_input)?;
        created.keep();
        Ok(vm)
    }

    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.core.kvm.ram().memory()
    }

    /// Handles on the VM's devices (net counters, the vsock socket path).
    pub fn devices(&self) -> &DeviceHandles {
        &self.core.devices
    }

    /// The VM's run-state, shared with whatever must be able to stop it.
    pub(crate) fn control(&self) -> Arc<VmControl> {
        self.core.control.clone()
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
        core.event_loop = virtio.start(&core.gate, move |error| {
            control.finish(ExitReason::HostError(Arc::new(error)));
        })?;
        let mut running = RunningVm {
            threads: Vec::with_capacity(vcpus.len()),
            vcpus: vcpus.clone(),
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
            let core = &mut running.core;
            let gate = core.gate.waiter().map_err(Error::SerialInputThread)?;
            let pump = InputPump::spawn(input, core.serial.clone(), gate, core.doorbell.clone());
            core.serial_input = Some(pump.map_err(Error::SerialInputThread)?);
        }
        Ok(running)
    }
}
