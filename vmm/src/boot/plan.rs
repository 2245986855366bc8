//! The guest memory plan: every region Zygote writes into guest memory before a vCPU runs,
//! named, as `[start, end)`, checked against RAM and against each other before any byte of
//! any of them is written.
//!
//! The rule: nothing is written into guest memory at boot except through a plan. A new kind
//! of region (a snapshot's saved pages, a fork's state) is one [`RegionName`] variant and one
//! [`MemoryPlan::add`] call; the checks then cover it against everything else.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::arch::layout::RamRegion;

/// What a planned region is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionName {
    /// A `PT_LOAD` segment of the kernel, by its index in the program header table; the
    /// region is its `p_memsz`.
    KernelSegment(usize),
    /// The Linux zero page (`struct boot_params`).
    ZeroPage,
    /// The kernel command line with its NUL.
    Cmdline,
    /// The boot GDT.
    BootGdt,
    /// The (empty) boot IDT.
    BootIdt,
    /// One page of the boot identity page tables (PML4, PDPT or PD).
    PageTables,
    /// The stack the boot vCPU enters the kernel with (nothing is written to it).
    BootStack,
    /// The MP floating pointer and configuration table.
    MpTable,
    /// The initial ramdisk.
    Initrd,
    /// The VM identity page (`crate::arch::identity`). Only reserved here: its contents are
    /// random and the fork path rewrites them, so `arch::identity::write` fills it.
    VmIdentity,
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionName::KernelSegment(index) => write!(f, "kernel segment {index}"),
            RegionName::ZeroPage => f.write_str("the zero page"),
            RegionName::Cmdline => f.write_str("the command line"),
            RegionName::BootGdt => f.write_str("the boot GDT"),
            RegionName::BootIdt => f.write_str("the boot IDT"),
            RegionName::PageTables => f.write_str("the boot page tables"),
            RegionName::BootStack => f.write_str("the boot stack"),
            RegionName::MpTable => f.write_str("the MP table"),
            RegionName::Initrd => f.write_str("the initrd"),
            RegionName::VmIdentity => f.write_str("the VM identity page"),
        }
    }
}

/// A named guest-physical range `[start, end)`; never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// What it is.
    pub name: RegionName,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Region {
    fn overlaps(&self, other: &Region) -> bool {
        self.start < other.end && other.start < self.end
    }

    fn inside(&self, ram: &RamRegion) -> bool {
        self.start >= ram.start.0 && self.end - ram.start.0 <= ram.len
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{:#x}, {:#x})", self.name, self.start, self.end)
    }
}

/// Errors from checking or writing a plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Two regions share bytes: writing one would overwrite the other.
    #[error("{region} overlaps {other}")]
    Overlap {
        /// The region that starts first (or the first added, when both start together).
        region: Region,
        /// The region it runs into.
        other: Region,
    },
    /// A region is not inside one of guest RAM's ranges (it runs past the end of memory or
    /// into the MMIO gap).
    #[error("{region} is not inside guest RAM")]
    OutsideRam {
        /// The region.
        region: Region,
    },
    /// A region's end does not fit in 64 bits.
    #[error("{name} at {start:#x} with {len:#x} bytes runs past the end of the address space")]
    Overflow {
        /// What the region is.
        name: RegionName,
        /// Its start.
        start: u64,
        /// Its length.
        len: u64,
    },
    /// The file a region's bytes come from could not be positioned.
    #[error("cannot seek to the bytes of {region}: {source}")]
    Seek {
        /// The region.
        region: Region,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A region's bytes could not be written to guest memory.
    #[error("cannot write {region}: {source}")]
    Write {
        /// The region.
        region: Region,
        /// Underlying error.
        source: vm_memory::GuestMemoryError,
    },
}

/// Which file a region's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The kernel image.
    Kernel,
    /// The initrd.
    Initrd,
}

/// What is written into a region: at most its length, from its start; the rest is left as
/// it is.
#[derive(Debug)]
pub enum Contents {
    /// These bytes.
    Bytes(Vec<u8>),
    /// `len` bytes of a file from `offset`.
    File {
        /// The file.
        source: Source,
        /// Offset in the file.
        offset: u64,
        /// Bytes to copy.
        len: u64,
    },
    /// Nothing: the region is only reserved.
    Nothing,
}

/// Regions to write, not yet checked.
#[derive(Debug, Default)]
pub struct MemoryPlan {
    regions: Vec<(Region, Contents)>,
}

/// A plan whose regions are inside RAM and disjoint; only this can be written.
#[derive(Debug)]
pub struct CheckedPlan {
    regions: Vec<(Region, Contents)>,
}

impl MemoryPlan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Plans `len` bytes at `start` named `name`, into which `contents` (at most `len` bytes)
    /// will be written. An empty region takes no memory and is not kept.
    pub fn add(
        &mut self,
        name: RegionName,
        start: GuestAddress,
        len: u64,
        contents: Contents,
    ) -> Result<(), PlanError> {
        let start = start.0;
        let end = start
            .checked_add(len)
            .ok_or(PlanError::Overflow { name, start, len })?;
        debug_assert!(
            contents.len() <= len,
            "{name}: contents longer than the region"
        );
        if len > 0 {
            self.regions.push((Region { name, start, end }, contents));
        }
        Ok(())
    }

    /// Plans `bytes` at `start`: a region exactly their size.
    pub fn add_bytes(
        &mut self,
        name: RegionName,
        start: GuestAddress,
        bytes: Vec<u8>,
    ) -> Result<(), PlanError> {
        self.add(name, start, bytes.len() as u64, Contents::Bytes(bytes))
    }

    /// The planned regions, in the order they were added.
    pub fn regions(&self) -> impl Iterator<Item = Region> + '_ {
        self.regions.iter().map(|(region, _)| *region)
    }

    /// Checks that every region lies inside one of `ram`'s ranges and that no two regions
    /// share a byte.
    pub fn check(mut self, ram: &[RamRegion]) -> Result<CheckedPlan, PlanError> {
        for (region, _) in &self.regions {
            if !ram.iter().any(|range| region.inside(range)) {
                return Err(PlanError::OutsideRam { region: *region });
            }
        }
        // Sorted by start (stable: ties keep the order they were added in), any overlap shows
        // between neighbours: if regions i < j overlap, so do i and i + 1.
        self.regions.sort_by_key(|(region, _)| region.start);
        for pair in self.regions.windows(2) {
            let (region, other) = (pair[0].0, pair[1].0);
            if region.overlaps(&other) {
                return Err(PlanError::Overlap { region, other });
            }
        }
        Ok(CheckedPlan {
            regions: self.regions,
        })
    }
}

impl Contents {
    fn len(&self) -> u64 {
        match self {
            Contents::Bytes(bytes) => bytes.len() as u64,
            Contents::File { len, .. } => *len,
            Contents::Nothing => 0,
        }
    }
}

impl CheckedPlan {
    /// Writes every region's contents into `mem`, reading file contents from `kernel` and
    /// `initrd`. A region whose source file was not given gets nothing written.
    pub fn write<K: Read + Seek + ReadVolatile>(
        self,
        mem: &GuestMemoryMmap,
        kernel: &mut K,
        mut initrd: Option<&mut File>,
    ) -> Result<(), PlanError> {
        for (region, contents) in self.regions {
            let addr = GuestAddress(region.start);
            let written = match contents {
                Contents::Bytes(bytes) => mem.write_slice(&bytes, addr),
                Contents::File {
                    source,
                    offset,
                    len,
                } => match (source, initrd.as_deref_mut()) {
                    (Source::Kernel, _) => copy(mem, addr, kernel, offset, len, region)?,
                    (Source::Initrd, Some(file)) => copy(mem, addr, file, offset, len, region)?,
                    (Source::Initrd, None) => Ok(()),
                },
                Contents::Nothing => Ok(()),
            };
            written.map_err(|source| PlanError::Write { region, source })?;
        }
        Ok(())
    }
}

/// Copies `len` bytes of `file` from `offset` to `addr`; the outer result is the seek's.
fn copy<F: Read + Seek + ReadVolatile>(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    file: &mut F,
    offset: u64,
    len: u64,
    region: Region,
) -> Result<Result<(), vm_memory::GuestMemoryError>, PlanError> {
    file.seek(SeekFrom::Start(offset))
        .map_err(|source| PlanError::Seek { region, source })?;
    // `len` is at most the region's length, which lies inside guest RAM: it fits a usize.
    let count = usize::try_from(len).unwrap_or(usize::MAX);
    Ok(mem.read_exact_volatile_from(addr, file, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::ram_regions;

    fn plan(regions: &[(RegionName, u64, u64)]) -> MemoryPlan {
        let mut plan = MemoryPlan::new();
        for &(name, start, len) in regions {
            plan.add(name, GuestAddress(start), len, Contents::Nothing)
                .unwrap();
        }
        plan
    }

    #[test]
    fn disjoint_regions_inside_ram_pass() {
        let regions = [
            (RegionName::ZeroPage, 0x7000, 0x1000),
            (RegionName::BootStack, 0x8000, 0x1000),
            (RegionName::KernelSegment(0), 0x10_0000, 0x1000),
            (RegionName::Initrd, 0x7f_f000, 0x1000),
        ];
        plan(&regions).check(&ram_regions(8 << 20)).unwrap();
    }

    #[test]
    fn an_overlap_names_both_regions() {
        let regions = [
            (RegionName::ZeroPage, 0x7000, 0x1000),
            (RegionName::KernelSegment(3), 0x7fff, 2),
        ];
        let err = plan(&regions).check(&ram_regions(8 << 20)).unwrap_err();
        assert!(
            matches!(
                err,
                PlanError::Overlap {
                    region: Region {
                        name: RegionName::ZeroPage,
                        start: 0x7000,
                        end: 0x8000
                    },
                    other: Region {
                        name: RegionName::KernelSegment(3),
                        start: 0x7fff,
                        end: 0x8001
                    },
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the zero page [0x7000, 0x8000) overlaps kernel segment 3 [0x7fff, 0x8001)"
        );
    }

    #[test]
    fn an_overlap_with_a_region_further_back_is_found() {
        // The big region overlaps the last one, not only its neighbour.
        let regions = [
            (RegionName::KernelSegment(0), 0x10_0000, 0x10_0000),
            (RegionName::KernelSegment(1), 0x10_1000, 0x1000),
            (RegionName::Initrd, 0x1f_f000, 0x1000),
        ];
        let err = plan(&regions).check(&ram_regions(8 << 20)).unwrap_err();
        assert!(matches!(err, PlanError::Overlap { .. }), "{err:?}");
    }

    #[test]
    fn touching_regions_do_not_overlap() {
        let regions = [
            (RegionName::BootGdt, 0x500, 0x28),
            (RegionName::BootIdt, 0x528, 8),
        ];
        plan(&regions).check(&ram_regions(8 << 20)).unwrap();
    }

    #[test]
    fn regions_past_ram_or_in_the_mmio_gap_are_refused() {
        let past_end = [(RegionName::Initrd, (8 << 20) - 0x800, 0x1000)];
        let err = plan(&past_end).check(&ram_regions(8 << 20)).unwrap_err();
        assert!(matches!(err, PlanError::OutsideRam { .. }), "{err:?}");
        let gap = [(RegionName::KernelSegment(0), 0xd000_0000, 0x1000)];
        let err = plan(&gap).check(&ram_regions(6 << 30)).unwrap_err();
        assert!(matches!(err, PlanError::OutsideRam { .. }), "{err:?}");
        let across = [(RegionName::KernelSegment(0), 0xbfff_f000, 0x2000)];
        let err = plan(&across).check(&ram_regions(6 << 30)).unwrap_err();
        assert!(matches!(err, PlanError::OutsideRam { .. }), "{err:?}");
        let high = [(RegionName::KernelSegment(0), 0x1_0000_0000, 0x1000)];
        plan(&high).check(&ram_regions(6 << 30)).unwrap();
    }

    #[test]
    fn a_region_past_the_address_space_is_refused() {
        let err = MemoryPlan::new()
            .add(
                RegionName::KernelSegment(0),
                GuestAddress(u64::MAX),
                2,
                Contents::Nothing,
            )
            .unwrap_err();
        assert!(matches!(err, PlanError::Overflow { .. }), "{err:?}");
    }

    #[test]
    fn empty_regions_are_not_kept() {
        let plan = plan(&[(RegionName::KernelSegment(0), 0x7000, 0)]);
        assert_eq!(plan.regions().count(), 0);
    }
}
