//! Live fork: a running VM becomes two, sharing every page neither has written.
//!
//! The whole path, top to bottom ([`RunningVm::fork`]):
//! 1. Pause the parent: vCPUs park on whole instructions, the device threads park.
//! 2. Capture its state as plain data (vCPUs, irqchip, PIT, clock, devices).
//! 3. Freeze its memory into a view (`zygote_cow`): the first fork freezes the memfd the parent
//!    wrote directly and moves the parent onto a private mapping of it (new slots, devices
//!    moved); later forks freeze only the pages it wrote since (a new layer) and re-point the
//!    parent's copies of them at the layer. Nothing ever writes a frozen page again.
//! 4. Resume the parent: its pause ends here.
//! 5. Map the view for the child, write its identity (generation), and restore the captured
//!    state into a new KVM VM over it, with the child's own backends; start its vCPUs.
//!
//! See cow/DESIGN.md for the measured costs and why this design.

use std::sync::Arc;
use std::time::{Duration, Instant};

use zygote_cow::{dirty_runs, CowMapping, Layer, PageRun, View, PAGE_SIZE};
use zygote_devices::virtio::block::Block;

use super::{RestoreConfig, RestoreExtras, RunningVm, SerialSource, Vm, VmPool};
use crate::arch::identity;
use crate::console::SerialOutput;
use crate::devices::{NetConfig, VsockConfig};
use crate::error::Error;
use crate::memory::GuestRam;
use crate::state::{CaptureError, DeviceResources, MachineState};

/// What a child gets from its host instead of sharing its parent's.
#[derive(Default)]
pub struct ForkConfig {
    /// Where the child's console goes (its own sink).
    pub serial_output: SerialOutput,
    /// The child's serial input, if any.
    pub serial_input: Option<Box<dyn SerialSource>>,
    /// One backend per parent NIC, in order. `mac: None` derives a locally administered MAC
    /// from the child's identity, so no two clones share one.
    pub nets: Vec<NetConfig>,
    /// The child's vsock CID and Unix socket. `None` derives them: a CID no VM of the
    /// parent's family (ancestors and descendants at any depth) got derived before, and
    /// `<uds_path of the family's first VM to fork>.fork<CID>`. Connections never carry
    /// over: the child's guest sees a transport reset.
    pub vsock: Option<VsockConfig>,
    /// A warm pool to take the child's KVM VM from; without one (or when it is empty) the
    /// child's VM is created on the fork path.
    pub pool: Option<Arc<VmPool>>,
}

/// A fork's result: the running child, and how long the parent was paused for it.
pub struct Fork {
    /// The child, running.
    pub child: RunningVm,
    /// From the parent's vCPUs stopping to their running again.
    pub parent_pause: Duration,
}

/// Why a fork failed. The parent keeps running in every case.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// The parent could not be paused or resumed.
    #[error("fork: {0}")]
    Lifecycle(#[source] Box<Error>),
    /// The parent's state could not be read.
    #[error("fork: {0}")]
    Capture(#[from] CaptureError),
    /// The parent's memory could not be frozen or the child's mapped.
    #[error("fork: {0}")]
    Memory(#[from] zygote_cow::CowError),
    /// The parent's memory slots could not be moved onto its new mapping; it was stopped.
    #[error("fork: cannot move the parent onto its copy-on-write memory: {0}")]
    Remap(#[source] crate::MemoryError),
    /// A disk could not be forked (its backend cannot freeze); the parent's disk is unchanged.
    #[error("fork: {0}")]
    Disk(#[source] zygote_devices::virtio::block::BlockForkError),
    /// The child's configuration does not match the parent's devices.
    #[error("fork: {0}")]
    Config(&'static str),
    /// The child VM could not be made or started.
    #[error("fork: cannot start the child: {0}")]
    Child(#[source] Box<Error>),
}

impl RunningVm {
    /// Forks this running VM: returns a new running VM that continues from this instant with
    /// the same memory, vCPU and device state, while this one continues too. Neither ever sees
    /// the other's later writes (memory or disk); an idle child owns only the pages it writes.
    ///
    /// # Errors
    /// [`ForkError`]; the parent is running again whatever failed (unless its memory could not
    /// be moved, [`ForkError::Remap`], which stops it with a host error).
    pub fn fork(&mut self, config: ForkConfig) -> Result<Fork, ForkError> {
        // 1. Stop the parent.
        self.pause()
            .map_err(|e| ForkError::Lifecycle(Box::new(e)))?;
        let paused_at = Instant::now();
        // 2-3. Capture it and freeze its memory; the parent is still paused.
        let frozen = self.capture().map_err(ForkError::from).and_then(|state| {
            let view = self.freeze_memory()?;
            let disks = self.fork_disks()?;
            Ok((state, view, disks))
        });
        // 4. The parent runs again, whatever happened.
        let resumed = self.resume();
        let parent_pause = paused_at.elapsed();
        let (state, view, disks) = frozen?;
        resumed.map_err(|e| ForkError::Lifecycle(Box::new(e)))?;
        // 5. The child.
        let sequence = self
            .core
            .forks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let child = self.make_child(&state, view, disks, config, sequence)?;
        Ok(Fork {
            child,
            parent_pause,
        })
    }

    /// Freezes the paused parent's memory into a view and moves the parent onto it.
    fn freeze_memory(&mut self) -> Result<Arc<View>, ForkError> {
        // Re-mapping replaces the tracked mappings: the next snapshot must be a full one.
        *self.dirty_tracking() = None;
        let ram = self.core.kvm.ram_mut();
        if let Some(mapping) = ram.cow_mut() {
            return freeze_layer(mapping);
        }
        // The first fork: the memfd the parent wrote directly becomes the base.
        let size = ram.size();
        let memfd = ram
            .memfd()
            .ok_or(ForkError::Config("the VM's memory is not a memfd mapping"))?
            .try_clone()
            .map_err(|e| ForkError::Memory(zygote_cow::CowError::CreateLayer(e)))?;
        let all = PageRun {
            start: 0,
            count: size / PAGE_SIZE,
        };
        let view = View::base(Arc::new(Layer::from_file(memfd, vec![all])), size);
        let ram = GuestRam::from_cow(CowMapping::map(view.clone())?).map_err(ForkError::Remap)?;
        let memory = ram.memory().clone();
        let old = match self.core.kvm.replace_ram(ram) {
            Ok(old) => old,
            Err(e) => {
                self.core
                    .control
                    .finish(crate::ExitReason::HostError(Arc::new(
                        std::io::Error::other(
                            "the parent's memory slots could not be moved for a fork",
                        ),
                    )));
                return Err(ForkError::Remap(e));
            }
        };
        self.core.devices.set_memory(&memory);
        // Unmapping a resident shared mapping costs ~16 ms per GiB here: never on the path.
        let _ = std::thread::Builder::new()
            .name("zygote-unmap".into())
            .spawn(move || drop(old));
        Ok(view)
    }

    /// Forks every disk of the paused parent: each becomes a frozen layer under a new overlay
    /// for the parent and another for the child (`zygote_devices::virtio::block::Block::fork`).
    fn fork_disks(&self) -> Result<Vec<Block>, ForkError> {
        self.core
            .devices
            .blocks
            .iter()
            .map(|transport| {
                let mut transport = transport.lock().unwrap_or_else(|p| p.into_inner());
                transport.device_mut().fork().map_err(ForkError::Disk)
            })
            .collect()
    }

    /// Maps `view` for a child and starts it from `state` with its forked `disks`.
    fn make_child(
        &self,
        state: &MachineState,
        view: Arc<View>,
        disks: Vec<Block>,
        config: ForkConfig,
        sequence: u64,
    ) -> Result<RunningVm, ForkError> {
        let child_error = |e: Error| ForkError::Child(Box::new(e));
        let shell = config
            .pool
            .as_ref()
            .and_then(|pool| pool.take(view.size(), state.vcpus.len()));
        let (mapping, shell) = match shell {
            Some(mut shell) => {
                // SAFETY: the shell's reservation is `view.size()` bytes (the pool checked),
                // owned by the shell; it is handed to the mapping here and never unmapped by
                // the shell (its address is cleared).
                let mapping = unsafe { CowMapping::map_fixed(view, shell.addr) }?;
                shell.addr = std::ptr::null_mut();
                (mapping, Some(shell))
            }
            None => (CowMapping::map(view)?, None),
        };
        let ram = GuestRam::from_cow(mapping).map_err(|e| child_error(e.into()))?;
        // The child learns it is a clone: the next generation and its own id, written before
        // it runs (one page of its own).
        let parent = identity::read(ram.memory()).unwrap_or_default();
        identity::next(&parent)
            .and_then(|child| identity::write(ram.memory(), &child))
            .map_err(|e| child_error(e.into()))?;
        let devices = self.child_devices(state, config.nets, config.vsock, sequence)?;
        let restore = RestoreConfig {
            context: Some(self.core.context.clone()),
            serial_output: config.serial_output,
            serial_input: config.serial_input,
            devices,
        };
        let extras = RestoreExtras {
            shell,
            forked_blocks: disks,
            ..Default::default()
        };
        let mut vm = Vm::restore_into(state, ram, restore, extras).map_err(child_error)?;
        vm.core.forks.store(0, std::sync::atomic::Ordering::Relaxed);
        vm.core.family = self.core.family.clone();
        vm.start().map_err(child_error)
    }

    /// The child's device resources: its own NIC backends and MACs, its own vsock socket.
    fn child_devices(
        &self,
        state: &MachineState,
        nets: Vec<NetConfig>,
        vsock: Option<VsockConfig>,
        sequence: u64,
    ) -> Result<DeviceResources, ForkError> {
        if nets.len() != state.devices.nets.len() {
            return Err(ForkError::Config(
                "give the child one NIC backend per parent NIC",
            ));
        }
        let nets = nets
            .into_iter()
            .enumerate()
            .map(|(index, mut net)| {
                if net.mac.is_none() {
                    net.mac = Some(derived_mac(&state.devices.nets[index].device.mac, sequence));
                }
                net
            })
            .collect();
        let vsock = match (&state.devices.vsock, vsock) {
            (None, _) => None,
            (Some(_), Some(config)) => Some(config),
            (Some(saved), None) => Some(self.core.family.derive_vsock(&saved.device.config)),
        };
        Ok(DeviceResources {
            blocks: Vec::new(),
            nets,
            vsock,
        })
    }
}

/// Freezes what a forked VM wrote since its view was made into a new layer and re-points the
/// VM's copies of those pages at it (so the pages are held once). Past
/// `zygote_cow::View::needs_squash`, every layered page is frozen into one layer instead.
fn freeze_layer(mapping: &mut CowMapping) -> Result<Arc<View>, ForkError> {
    let dirty = dirty_runs(mapping.addr() as u64, mapping.size())?;
    if dirty.is_empty() {
        return Ok(mapping.view().clone());
    }
    // SAFETY: the mapping is readable, and the VM is paused: nothing writes it meanwhile.
    let layer = unsafe { Layer::freeze(mapping.addr(), mapping.size(), dirty.clone()) }?;
    let view = mapping.view().with_layer(layer);
    let top = view.layers().len() - 1;
    mapping.adopt(view.clone(), top, &dirty)?;
    Ok(view)
}

/// A locally administered, unicast MAC for clone `sequence` of a NIC whose MAC is `parent`.
fn derived_mac(parent: &[u8; 6], sequence: u64) -> [u8; 6] {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in parent.iter().chain(&sequence.to_le_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    let h = hash.to_le_bytes();
    [0x02 | (parent[0] & 0xfc), h[0], h[1], h[2], h[3], h[4]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_macs_are_local_unicast_and_distinct() {
        let parent = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let a = derived_mac(&parent, 1);
        let b = derived_mac(&parent, 2);
        assert_ne!(a, b);
        assert_ne!(a, parent);
        for mac in [a, b] {
            assert_eq!(mac[0] & 0x01, 0, "unicast");
            assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        }
    }
}
