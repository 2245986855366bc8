//! The VM-level state KVM holds for an in-kernel irqchip: the two 8259 PICs, the I/O APIC,
//! the PIT and the kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;

/// The in-kernel irqchip, PIT and clock of a VM. Plain data.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VmArchState {
    /// `KVM_GET_IRQCHIP` of the master PIC.
    pub pic_master: kvm_irqchip,
    /// `KVM_GET_IRQCHIP` of the slave PIC.
    pub pic_slave: kvm_irqchip,
    /// `KVM_GET_IRQCHIP` of the I/O APIC.
    pub ioapic: kvm_irqchip,
    /// `KVM_GET_PIT2`.
    pub pit: kvm_pit_state2,
    /// `KVM_GET_CLOCK`.
    pub clock: kvm_clock_data,
}

/// A VM state ioctl that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed: {source}")]
pub struct VmStateError {
    /// The ioctl.
    pub op: &'static str,
    /// What KVM said.
    #[source]
    pub source: kvm_ioctls::Error,
}

fn ioctl(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { op, source }
}

fn chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, VmStateError> {
    let mut irqchip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut irqchip)
        .map_err(ioctl("KVM_GET_IRQCHIP"))?;
    Ok(irqchip)
}

impl VmArchState {
    /// Reads the state of a VM whose vCPUs are parked.
    pub fn save(vm: &VmFd) -> Result<Self, VmStateError> {
        Ok(Self {
            pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
            pit: vm.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?,
            clock: vm.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?,
        })
    }

    /// Writes the state into a new VM that has its irqchip and PIT, before its vCPUs exist.
    pub fn restore(&self, vm: &VmFd) -> Result<(), VmStateError> {
        vm.set_pit2(&self.pit).map_err(ioctl("KVM_SET_PIT2"))?;
        // KVM_SET_CLOCK takes only the clock value; the flags KVM_GET_CLOCK reports describe
        // how it was read, and KVM refuses them back.
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(ioctl("KVM_SET_CLOCK"))?;
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(chip).map_err(ioctl("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }
}
