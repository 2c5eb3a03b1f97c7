//! Clones of a running PC: its RAM frozen and shared copy-on-write
//! (`vmm_core::cow`), each clone a fresh PC with the parent's device and
//! vCPU state and an identity of its own.
//!
//! The host forks a PC with [`Pc::share_ram`] (the parent's RAM becomes
//! read-only to everyone, the parent included, until each writes a page),
//! [`Pc::build_clone`] for each clone (built from the same description,
//! its own media, consoles and network card, its RAM the shared block),
//! [`Pc::fork_from_vcpus`] (devices, other RAM blocks, every vCPU's state
//! with its halt state), and
//! [`Pc::set_clone_index`] (the value the guest reads to know which clone
//! it is). A PC restored from a snapshot file takes the same CMOS bytes and
//! its devices' identity with [`Pc::set_clone_identity`].

use super::{Pc, PcDescription, PcError, HIGH_RAM_BASE, IDE_PCI, VIRTIO_NET_PCI};
use crate::ide::Piix3Ide;
use crate::pci::PciBus;
use crate::rtc::Rtc;
use crate::virtio::VirtioPci;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::num::NonZeroU8;
use vmm_core::cow::SharedRam;
use vmm_core::device::StateError;
use vmm_core::host::Host;
use vmm_core::memory::{Backing, BlockId, GuestMemory, MemoryError, RegionInfo};
use vmm_core::vcpu::{ArchState, VcpuState};

/// The CMOS byte a clone finds its index in (ports 0x70/0x71; unused by
/// SeaBIOS and QEMU's CMOS layout).
pub const CLONE_INDEX_CMOS: u8 = 0x60;
/// The CMOS byte that says "this PC is a clone" (1; 0 otherwise).
pub const CLONE_FLAG_CMOS: u8 = 0x61;

/// A PC's RAM frozen for its clones ([`Pc::share_ram`]); cheap to clone.
#[derive(Clone)]
pub struct PcRam {
    low: SharedRam,
    high: Option<SharedRam>,
}

impl PcRam {
    /// Add the shared blocks to `memory` as a PC's RAM: `below` bytes at 0
    /// and `above` at 4 GiB (which must be the shared blocks' lengths).
    pub(super) fn add_to(
        &self,
        memory: &mut GuestMemory,
        host: &Arc<dyn Host>,
        below: u64,
        above: u64,
    ) -> Result<(BlockId, Option<BlockId>), PcError> {
        let high_len = self.high.as_ref().map_or(0, |h| h.len() as u64);
        if self.low.len() as u64 != below || high_len != above {
            return Err(PcError::RamSize {
                bytes: below + above,
                min: self.low.len() as u64 + high_len,
                max: self.low.len() as u64 + high_len,
            });
        }
        let low = memory.add_ram_shared(0, &self.low, host.clone())?;
        let high = match &self.high {
            Some(h) => Some(memory.add_ram_shared(HIGH_RAM_BASE, h, host.clone())?),
            None => None,
        };
        Ok((low, high))
    }

    /// Bytes of RAM shared.
    pub fn len(&self) -> u64 {
        self.low.len() as u64 + self.high.as_ref().map_or(0, |h| h.len() as u64)
    }

    /// Whether no RAM is shared.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A fingerprint of the shared RAM's bytes
    /// ([`SharedRam::fingerprint`]): the same before and after the clones
    /// ran says none of their writes reached it.
    pub fn fingerprint(&self) -> u64 {
        let low = self.low.fingerprint();
        match &self.high {
            Some(h) => low.rotate_left(1) ^ h.fingerprint(),
            None => low,
        }
    }

    /// How many PCs map it now.
    pub fn sharers(&self) -> usize {
        self.low.sharers() - 1
    }
}

/// Why a clone could not take its parent's state.
#[derive(Debug)]
pub enum ForkError {
    /// The clone, or the vCPUs given, do not have the parent's vCPU
    /// count.
    VcpuCount {
        /// The parent's vCPUs.
        parent: usize,
        /// The clone's vCPUs (or the vCPUs given, where they differ).
        clone: usize,
    },
    /// A device or the vCPU refused the parent's state.
    State(StateError),
    /// The clone's memory blocks differ from the parent's (built from
    /// another description).
    BlockMismatch {
        /// The first block that differs.
        block: u32,
    },
    /// After the devices were restored the clone's memory map differs from
    /// the parent's at this address.
    MapMismatch {
        /// The first region start that differs.
        at: u64,
    },
    /// The parent's RAM could not be shared, or a block copied.
    Memory(MemoryError),
}

impl fmt::Display for ForkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForkError::VcpuCount { parent, clone } => write!(
                f,
                "clone: the parent has {parent} vCPUs and the clone {clone}"
            ),
            ForkError::State(e) => write!(f, "clone: {e}"),
            ForkError::BlockMismatch { block } => {
                write!(f, "clone: memory block {block} differs from the parent's")
            }
            ForkError::MapMismatch { at } => write!(
                f,
                "clone: the memory map differs from the parent's at {at:#x}"
            ),
            ForkError::Memory(e) => write!(f, "clone: {e}"),
        }
    }
}

impl core::error::Error for ForkError {}

impl From<StateError> for ForkError {
    fn from(e: StateError) -> Self {
        ForkError::State(e)
    }
}

impl From<MemoryError> for ForkError {
    fn from(e: MemoryError) -> Self {
        ForkError::Memory(e)
    }
}

/// The regions of `memory` with neighbours that continue each other
/// (same kind, backings running on) merged: two maps that send every
/// address to the same place compare equal however they were cut.
fn coalesced(memory: &GuestMemory) -> Vec<RegionInfo> {
    let runs_on = |b: Backing, a: Backing, len: u64| match (a, b) {
        (
            Backing::Block { block, offset },
            Backing::Block {
                block: next,
                offset: next_offset,
            },
        ) => block == next && offset + len == next_offset,
        (a, b) => a == b,
    };
    let mut out: Vec<RegionInfo> = Vec::new();
    for r in memory.regions() {
        if let Some(last) = out.last_mut() {
            if last.end() == r.start
                && last.kind == r.kind
                && runs_on(r.read, last.read, last.len)
                && runs_on(r.write, last.write, last.len)
            {
                last.len += r.len;
                continue;
            }
        }
        out.push(r);
    }
    out
}

impl Pc {
    /// Freeze this PC's RAM for clones: from now on it, and every clone
    /// built with [`Pc::build_clone`] from the result, reads the same
    /// host pages and copies a page the first time it writes it. The PC
    /// may run on (as one more clone) or stay paused; a host that runs it
    /// with shadow paging empties its shadow trees before it runs again
    /// (the memory map's generation moves, as nested paging rebuilds).
    pub fn share_ram(&mut self) -> Result<PcRam, ForkError> {
        let host = self.vm.host_arc();
        let low = self
            .vm
            .memory_mut()
            .share_block(self.ram_block, host.clone())?;
        let high = match self.high_ram_block {
            Some(b) => Some(self.vm.memory_mut().share_block(b, host)?),
            None => None,
        };
        Ok(PcRam { low, high })
    }

    /// Build a clone: the PC `desc` describes (equal to the parent's
    /// description but for the host sides of its media and consoles), its
    /// RAM `ram` copy-on-write. Then [`Pc::fork_from`] gives it the
    /// parent's state.
    pub fn build_clone(
        host: Arc<dyn Host>,
        desc: PcDescription<'_>,
        ram: &PcRam,
    ) -> Result<Self, PcError> {
        Self::build_with_ram(host, desc, Some(ram))
    }

    /// [`Pc::fork_from_vcpus`] for a PC with one vCPU: `from` is the
    /// parent's, `to` this clone's.
    pub fn fork_from<A: ArchState, B: ArchState>(
        &mut self,
        parent: &mut Pc,
        from: &mut A,
        to: &mut B,
    ) -> Result<(), ForkError> {
        self.fork_from_vcpus(
            parent,
            &mut [from as &mut dyn ArchState],
            &mut [to as &mut dyn ArchState],
        )
    }

    /// Take the state of `parent` (paused, its RAM shared with this clone
    /// by [`Pc::share_ram`]): the contents of its other RAM blocks (shadow
    /// RAM under the BIOS, video memory), every device's state (the local
    /// APICs with theirs: pending interrupts and IPIs, an AP waiting for
    /// its start-up IPI), and every vCPU's: `from[i]`, the parent's vCPU
    /// `i`, goes to `to[i]`, this clone's, with its MSR file and the exit
    /// loop's halt and reset state (a halted AP stays halted). The clone
    /// must have been built with the parent's vCPU count. On an error
    /// throw this clone away.
    pub fn fork_from_vcpus(
        &mut self,
        parent: &mut Pc,
        from: &mut [&mut dyn ArchState],
        to: &mut [&mut dyn ArchState],
    ) -> Result<(), ForkError> {
        let cpus = parent.msrs.len();
        for count in [self.msrs.len(), from.len(), to.len()] {
            if count != cpus {
                return Err(ForkError::VcpuCount {
                    parent: cpus,
                    clone: count,
                });
            }
        }
        let theirs: Vec<_> = parent.vm.memory().blocks().collect();
        let ours: Vec<_> = self.vm.memory().blocks().collect();
        if theirs.len() != ours.len() {
            return Err(ForkError::BlockMismatch {
                block: theirs.len().min(ours.len()) as u32,
            });
        }
        for (t, o) in theirs.iter().zip(&ours) {
            if t.kind != o.kind || t.len != o.len || t.device != o.device {
                return Err(ForkError::BlockMismatch { block: t.id.0 });
            }
        }
        // RAM of its own in the parent (shadow RAM, video memory) is copied;
        // ROM was loaded by the build; shared RAM is shared.
        for b in &theirs {
            if let Some(src) = parent.vm.memory().block_bytes_all(b.id) {
                if b.kind != vmm_core::memory::BlockKind::Ram {
                    continue;
                }
                if let Some(dst) = self.vm.memory_mut().block_bytes_all_mut(b.id) {
                    dst.copy_from_slice(src);
                }
            }
        }
        let saved = parent.vm.save_devices()?;
        self.vm.restore_devices(&saved)?;
        let mine = coalesced(self.vm.memory());
        let theirs = coalesced(parent.vm.memory());
        if mine != theirs {
            let at = mine
                .iter()
                .zip(&theirs)
                .find(|(a, b)| a != b)
                .map_or(0, |(a, _)| a.start);
            return Err(ForkError::MapMismatch { at });
        }
        for (i, (from, to)) in from.iter_mut().zip(to.iter_mut()).enumerate() {
            let state = VcpuState::capture(&mut **from, &parent.msrs[i])?;
            state.apply(&mut **to, &mut self.msrs[i])?;
            let exit = parent.vm.vcpu_exit_state(i).unwrap_or_default();
            self.vm.set_vcpu_exit_state(i, exit);
        }
        Ok(())
    }

    /// Give this clone its identity: CMOS byte [`CLONE_INDEX_CMOS`] holds
    /// `index` and [`CLONE_FLAG_CMOS`] 1, where the guest reads them
    /// (ports 0x70/0x71).
    pub fn set_clone_index(&mut self, index: u8) {
        let rtc = self.chipset.rtc;
        if let Some(rtc) = self.vm.devices_mut().device_mut::<Rtc>(rtc) {
            rtc.set_cmos(CLONE_INDEX_CMOS, index);
            rtc.set_cmos(CLONE_FLAG_CMOS, 1);
        }
    }

    /// Give this PC, just restored from its parent's snapshot or state,
    /// the whole identity of clone `index`: the CMOS bytes of
    /// [`Pc::set_clone_index`], a MAC address of its own for every network
    /// card and a serial number of its own for every drive (IDE and
    /// virtio-blk), derived from the ones it has
    /// ([`crate::clone_identity`]). Call it after the devices' state is
    /// restored and before the vCPUs run: the guest reads the new ones
    /// from the configuration space or IDENTIFY from then on, and a driver
    /// that read them before keeps what it read.
    pub fn set_clone_identity(&mut self, index: NonZeroU8) {
        self.set_clone_index(index.get());
        let Some(bus) = self
            .vm
            .devices_mut()
            .device_mut::<PciBus>(self.chipset.pci_bus)
        else {
            return;
        };
        if let Some(ide) = bus.function_mut::<Piix3Ide>(IDE_PCI.0, IDE_PCI.1) {
            ide.controller_mut().become_clone(index);
        }
        for slot in 0..32 {
            if let Some(virtio) = bus.function_mut::<VirtioPci>(slot, 0) {
                virtio.device_mut().become_clone(index);
            }
        }
    }

    /// The MAC address of the PC's virtio-net card, if it has one.
    pub fn net_mac(&self) -> Option<[u8; 6]> {
        let bus = self.vm.devices().device::<PciBus>(self.chipset.pci_bus)?;
        let virtio = bus.function::<VirtioPci>(VIRTIO_NET_PCI.0, VIRTIO_NET_PCI.1)?;
        let mut mac = [0u8; 6];
        virtio.device().read_config(0, &mut mac);
        Some(mac)
    }

    /// Host bytes this PC holds of its own in RAM shared copy-on-write
    /// (its copied pages and their index), and how many pages it copied.
    pub fn private_memory(&self) -> (u64, u64) {
        self.vm.memory().cow_private()
    }
}
