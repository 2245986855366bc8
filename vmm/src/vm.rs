//! A microVM: created from a validated configuration, then started, paused, resumed and
//! stopped.

use std::io::Read;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zygote_devices::legacy::{
    DebugExit, Serial, COM1_IRQ, COM1_PORT, COM1_PORT_LEN, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN,
    I8042, I8042_PORT, I8042_PORT_LEN,
};
use zygote_devices::{Bus, BusRange, VmRequestSink};

use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::boot;
use crate::config::VmConfig;
use crate::control::{VmControl, VmState};
use crate::error::{Error, KvmError};
use crate::exit::ExitReason;
use crate::memory::GuestRam;
use crate::vcpu::{self, Vcpu};

/// A created VM whose vCPUs have not started yet.
pub struct Vm {
    core: VmCore,
    vcpus: Vec<Vcpu>,
    serial_input: Option<Box<dyn Read + Send>>,
}

/// What a VM keeps for its whole life, started or not.
struct VmCore {
    // Field order is drop order: the VM fd goes before the memory it maps.
    _vm_fd: VmFd,
    ram: GuestRam,
    buses: vcpu::run::Buses,
    serial: Arc<Mutex<Serial>>,
    control: Arc<VmControl>,
    _kvm: Kvm,
}

impl Vm {
    /// Creates the VM described by `config`: KVM VM, memory, devices, vCPUs, loaded kernel.
    pub fn create(config: VmConfig) -> Result<Self, Error> {
        let VmConfig {
            vcpus,
            memory_bytes,
            mut kernel,
            cmdline,
            mut initrd,
            serial_output,
            serial_input,
        } = config;
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let ram = GuestRam::new(memory_bytes)?;
        let vm_fd = create_vm_fd(&kvm, &ram)?;
        let control = Arc::new(VmControl::new(usize::from(vcpus)));
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(KvmError::EventFd)?;
        vm_fd
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(KvmError::Irqfd)?;
        let serial = Arc::new(Mutex::new(Serial::new(
            serial_irq,
            serial_output.into_writer(),
        )));
        let buses = legacy_buses(&serial, control.clone())?;
        let entry = boot::load(
            ram.memory(),
            memory_bytes,
            &mut kernel,
            &cmdline,
            initrd.as_mut(),
        )?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)?;
        let vcpus = (0..vcpus)
            .map(|index| Vcpu::new(&vm_fd, &supported, index, vcpus))
            .collect::<Result<Vec<_>, _>>()?;
        vcpus[0].set_boot_state(ram.memory(), entry)?;
        Ok(Self {
            core: VmCore {
                _vm_fd: vm_fd,
                ram,
                buses,
                serial,
                control,
                _kvm: kvm,
            },
            vcpus,
            serial_input,
        })
    }

    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.core.ram.memory()
    }

    /// Starts the vCPU threads.
    pub fn start(self) -> Result<RunningVm, Error> {
        vcpu::install_kick_handler().map_err(vcpu::VcpuError::KickHandler)?;
        let Self {
            core,
            vcpus,
            serial_input,
        } = self;
        let mut running = RunningVm {
            threads: Vec::with_capacity(vcpus.len()),
            core,
        };
        for vcpu in vcpus {
            let thread = vcpu::spawn(
                vcpu,
                running.core.buses.clone(),
                running.core.control.clone(),
            );
            match thread {
                Ok(thread) => running.threads.push(thread),
                Err(e) => {
                    running.stop();
                    return Err(e.into());
                }
            }
        }
        if let Some(input) = serial_input {
            spawn_serial_input(input, Arc::downgrade(&running.core.serial));
        }
        Ok(running)
    }
}

/// Creates the KVM VM with `ram` registered and the in-kernel irqchip and PIT.
///
/// Order matters for speed: registering memory slots before `KVM_CREATE_IRQCHIP` takes about
/// 65 µs for 128 MiB here, after it about 7.8 ms (`cargo run --release -p zygote-benches
/// --example memslot_order`).
fn create_vm_fd(kvm: &Kvm, ram: &GuestRam) -> Result<VmFd, Error> {
    let vm_fd = kvm.create_vm().map_err(KvmError::CreateVm)?;
    vm_fd
        .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(KvmError::IdentityMap)?;
    vm_fd
        .set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(KvmError::TssAddress)?;
    ram.register(&vm_fd)?;
    vm_fd.create_irq_chip().map_err(KvmError::Irqchip)?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(KvmError::Pit)?;
    Ok(vm_fd)
}

fn legacy_buses(
    serial: &Arc<Mutex<Serial>>,
    control: Arc<VmControl>,
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
        mmio: Arc::new(Bus::new()),
    })
}

/// Feeds `input` to the UART until it ends or the VM goes away.
fn spawn_serial_input(mut input: Box<dyn Read + Send>, serial: Weak<Mutex<Serial>>) {
    let pump = move || {
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = input.read(&mut buf) {
            let mut sent = 0;
            while sent < n {
                let Some(serial) = serial.upgrade() else {
                    return;
                };
                let taken = serial
                    .lock()
                    .map(|mut s| s.enqueue_input(&buf[sent..n]).unwrap_or(0))
                    .unwrap_or(0);
                sent += taken;
                if taken == 0 {
                    // The guest has not drained its receive FIFO yet.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    };
    // The pump holds no strong reference to the VM; if it cannot be started the guest simply
    // gets no input, which the caller sees on the console.
    let _ = std::thread::Builder::new()
        .name("zygote-serial-in".into())
        .spawn(pump);
}

/// A VM whose vCPUs are running (or paused). Dropping it shuts the VM down.
pub struct RunningVm {
    core: VmCore,
    threads: Vec<JoinHandle<()>>,
}

impl RunningVm {
    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.core.ram.memory()
    }

    /// Whether the VM is running, paused or stopped.
    pub fn state(&self) -> VmState {
        self.core.control.state()
    }

    /// Parks every vCPU outside `KVM_RUN`. Returns once all are parked.
    pub fn pause(&self) -> Result<(), Error> {
        self.core
            .control
            .pause()
            .map_err(|state| Error::InvalidState { op: "pause", state })
    }

    /// Lets a paused VM run again.
    pub fn resume(&self) -> Result<(), Error> {
        self.core
            .control
            .resume()
            .map_err(|state| Error::InvalidState {
                op: "resume",
                state,
            })
    }

    /// The exit reason if the VM has stopped, without waiting.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.core.control.exit_reason()
    }

    /// The exit reason if the VM has stopped, waiting at most `timeout` for it.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        self.core.control.wait_exit(Some(timeout))
    }

    /// Waits for the VM to stop, joins its vCPU threads and returns why it stopped.
    pub fn wait(&mut self) -> Result<ExitReason, Error> {
        let reason = self.core.control.wait_exit(None);
        self.join()?;
        reason.ok_or(Error::VcpuThreadPanicked)
    }

    /// Stops the VM if it is still running and returns why it stopped: [`ExitReason::Shutdown`]
    /// unless the guest had already stopped it.
    pub fn shutdown(&mut self) -> Result<ExitReason, Error> {
        self.stop();
        self.wait()
    }

    fn stop(&mut self) {
        self.core.control.finish(ExitReason::Shutdown);
    }

    fn join(&mut self) -> Result<(), Error> {
        let mut panicked = false;
        for thread in self.threads.drain(..) {
            panicked |= thread.join().is_err();
        }
        if panicked {
            // Make sure a waiter still gets an answer.
            self.core.control.finish(ExitReason::Shutdown);
            return Err(Error::VcpuThreadPanicked);
        }
        if let Ok(mut serial) = self.core.serial.lock() {
            let _ = serial.flush();
        }
        Ok(())
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.stop();
        let _ = self.join();
    }
}
