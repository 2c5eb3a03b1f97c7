//! Inter-VM shared memory as a PCI function, after QEMU's
//! `ivshmem-doorbell` (QEMU's `docs/specs/ivshmem-spec.rst`): several VMs
//! on one host see one region of host memory, and each can interrupt the
//! others through a doorbell register.
//!
//! # Layout
//!
//! PCI ID 1af4:1110, revision 1, class 05 00 00 (RAM), subsystem
//! 1af4:1100, INTx pin A, an MSI-X capability at 0x40.
//!
//! | BAR | kind | contents |
//! |---|---|---|
//! | 0 | 32-bit memory, 256 bytes | the registers below |
//! | 1 | 32-bit memory, 4 KiB | the MSI-X table at 0, its PBA at 0x800 ([`VECTORS`] vectors) |
//! | 2 | 64-bit prefetchable memory, the region's size | the shared region |
//!
//! | BAR 0 offset | register | |
//! |---|---|---|
//! | 0x00 | IntrMask | bit 0 enables INTx for IntrStatus bit 0 |
//! | 0x04 | IntrStatus | bit 0: a doorbell arrived (INTx mode); cleared when read |
//! | 0x08 | IVPosition | this VM's peer number, read-only |
//! | 0x0C | Doorbell | write `peer << 16 \| vector` to interrupt `peer` on `vector`; reads 0 |
//!
//! Registers are 32 bits wide; other sizes and offsets read 0 and ignore
//! writes, as QEMU's do.
//!
//! # The region
//!
//! The region is a device block of the VM's memory map (host memory the
//! host allocated once and gave to every peer's VM), mapped at BAR 2
//! whenever the BAR decodes (memory space enabled and the BAR inside the
//! PCI window): the guest reads and writes it as RAM, without exits. When
//! the guest moves the BAR or turns decoding off, the old range goes back
//! to MMIO with no device behind it (all-ones, writes dropped). The BAR's
//! size is exactly the region's, so nothing beyond the region is reachable
//! through it. A peer given the region **read-only** ([`Access::ReadOnly`])
//! has it mapped without write permission: its reads see the region, and a
//! write is dropped, as a write to ROM is (the page faults, the VMM's
//! instruction emulator carries the write out to nothing, and the guest
//! goes on); DMA of its other devices may not write there either, since
//! the DMA guard takes only RAM.
//!
//! # Doorbells
//!
//! Peers share [`Doorbells`]. A doorbell write to a connected peer with a
//! vector below [`VECTORS`] marks that vector pending in the peer's
//! mailbox; a write to an unknown peer or vector is ignored (and counted).
//! The peer's function takes its mailbox when it is polled (every
//! [`POLL_NS`], on its own VM's time): with MSI-X enabled each pending
//! vector is signalled (held in the PBA while masked); otherwise, once the
//! guest set IntrMask bit 0, IntrStatus bit 0 is set and INTx raised while
//! both are set and the command register allows INTx. A doorbell rung
//! before the peer set up either waits in its mailbox until it does, as an
//! eventfd waits for a late reader: nothing rung is lost.

use crate::pci::msix::{MsiTarget, Msix};
use crate::pci::{
    Bar, BarKind, ConfigSpace, InterruptPin, PciFunction, PciIds, PciRegion, RegionId, REG_STATUS,
};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};
use spin::Mutex;
use vmm_core::device::save_restore::{self, SaveRestore, StateError};
use vmm_core::device::{DeviceContext, VmRequest};
use vmm_core::irq::IrqLine;
use vmm_core::memory::{Backing, BlockId};

/// QEMU's (Red Hat's) PCI vendor ID.
pub const IVSHMEM_VENDOR: u16 = 0x1af4;
/// The ivshmem device ID.
pub const IVSHMEM_DEVICE: u16 = 0x1110;
/// Size of the register BAR.
pub const REGISTERS_SIZE: u64 = 256;
/// MSI-X vectors (and doorbell vectors) per function.
pub const VECTORS: u16 = 4;
/// How often a function looks at its mailbox.
pub const POLL_NS: u64 = 1_000_000;
/// The smallest region: one page.
pub const MIN_REGION: u64 = 4096;
/// The largest region: 256 MiB. The PC's 32-bit PCI window
/// (0xE0000000-0xFEBFFFFF) must hold the BAR with the other functions'
/// (firmware places a 64-bit BAR there too while it fits), and the bus
/// decodes memory BARs only inside it.
pub const MAX_REGION: u64 = 256 << 20;

/// IntrMask.
pub const REG_INTR_MASK: u64 = 0x00;
/// IntrStatus.
pub const REG_INTR_STATUS: u64 = 0x04;
/// IVPosition.
pub const REG_IV_POSITION: u64 = 0x08;
/// Doorbell.
pub const REG_DOORBELL: u64 = 0x0c;

/// The register BAR.
const BAR_REGISTERS: u8 = 0;
/// The MSI-X BAR.
const BAR_MSIX: u8 = 1;
/// The shared-memory BAR (64-bit: BARs 2 and 3).
const BAR_SHARED: u8 = 2;
/// Size of the MSI-X BAR.
const MSIX_BAR_SIZE: u64 = 4096;
/// The PBA's offset in the MSI-X BAR.
const PBA_OFFSET: u64 = 0x800;
/// Where the MSI-X capability sits in configuration space.
const CAP_MSIX: u8 = 0x40;

/// How a peer may access the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// Reads and writes.
    ReadWrite,
    /// Reads only; writes are dropped.
    ReadOnly,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::ReadWrite => "rw",
            Access::ReadOnly => "ro",
        })
    }
}

/// Why a function could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IvshmemError {
    /// The region is not a power of two from [`MIN_REGION`] to
    /// [`MAX_REGION`] bytes (a BAR's size must be a power of two).
    RegionSize(u64),
    /// Another function already joined the doorbells as this peer.
    PeerTaken(u16),
}

impl fmt::Display for IvshmemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IvshmemError::RegionSize(n) => write!(
                f,
                "shared region of {n} bytes: must be a power of two from {MIN_REGION} to {MAX_REGION}"
            ),
            IvshmemError::PeerTaken(p) => write!(f, "shared region: peer {p} is already connected"),
        }
    }
}

impl core::error::Error for IvshmemError {}

#[derive(Debug, Default)]
struct Mailbox {
    peer: u16,
    /// Bit v: vector v rung and not taken yet.
    pending: u32,
}

#[derive(Debug, Default)]
struct DoorbellsInner {
    mailboxes: Vec<Mailbox>,
    rung: u64,
    ignored: u64,
}

/// Counters of a set of [`Doorbells`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoorbellStats {
    /// Doorbell writes that reached a peer's mailbox.
    pub rung: u64,
    /// Doorbell writes to an unknown peer or vector.
    pub ignored: u64,
}

/// The doorbells of the peers that share one region: a mailbox per peer.
/// Clone it to hand it to each peer's function.
#[derive(Clone, Debug, Default)]
pub struct Doorbells {
    inner: Arc<Mutex<DoorbellsInner>>,
}

impl Doorbells {
    /// Doorbells without peers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Open a mailbox for `peer`.
    fn connect(&self, peer: u16) -> Result<(), IvshmemError> {
        let mut i = self.inner.lock();
        if i.mailboxes.iter().any(|m| m.peer == peer) {
            return Err(IvshmemError::PeerTaken(peer));
        }
        i.mailboxes.push(Mailbox { peer, pending: 0 });
        Ok(())
    }

    /// Ring `vector` at `peer`; false (and counted) if there is no such
    /// peer or vector.
    pub fn ring(&self, peer: u16, vector: u16) -> bool {
        let mut i = self.inner.lock();
        let known = vector < VECTORS && i.mailboxes.iter().any(|m| m.peer == peer);
        if !known {
            i.ignored += 1;
            return false;
        }
        i.rung += 1;
        if let Some(m) = i.mailboxes.iter_mut().find(|m| m.peer == peer) {
            m.pending |= 1 << vector;
        }
        true
    }

    /// Take what was rung at `peer`: bit v for vector v.
    fn take(&self, peer: u16) -> u32 {
        let mut i = self.inner.lock();
        i.mailboxes
            .iter_mut()
            .find(|m| m.peer == peer)
            .map_or(0, |m| core::mem::take(&mut m.pending))
    }

    /// Whether anything is waiting for `peer`.
    fn waiting(&self, peer: u16) -> bool {
        let i = self.inner.lock();
        i.mailboxes.iter().any(|m| m.peer == peer && m.pending != 0)
    }

    /// The counters.
    pub fn stats(&self) -> DoorbellStats {
        let i = self.inner.lock();
        DoorbellStats {
            rung: i.rung,
            ignored: i.ignored,
        }
    }
}

/// What a peer's function is built from.
#[derive(Clone, Debug)]
pub struct IvshmemConfig {
    /// The region: a device block of this VM's memory map.
    pub block: BlockId,
    /// Its size in bytes (a power of two, see [`IvshmemError::RegionSize`]).
    pub size: u64,
    /// How this VM may access it.
    pub access: Access,
    /// This VM's peer number (IVPosition).
    pub peer: u16,
    /// The doorbells every peer of the region shares.
    pub doorbells: Doorbells,
}

/// The ivshmem PCI function of one peer.
pub struct Ivshmem {
    config: ConfigSpace,
    shared: IvshmemConfig,
    intr_mask: u32,
    intr_status: u32,
    intx: Arc<dyn IrqLine>,
    intx_level: bool,
    msix: Msix,
    /// Where BAR 2 is mapped as the region now: (base, len).
    mapped: Option<(u64, u64)>,
}

impl fmt::Debug for Ivshmem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ivshmem")
            .field("peer", &self.shared.peer)
            .field("size", &self.shared.size)
            .field("access", &self.shared.access)
            .field("mapped", &self.mapped)
            .finish()
    }
}

/// Saved state of an [`Ivshmem`], version [`IVSHMEM_STATE_VERSION`]. The
/// region's bytes are the host's, not the function's, and are not saved.
#[derive(Serialize, Deserialize)]
struct IvshmemState {
    config: Vec<u8>,
    intr_mask: u32,
    intr_status: u32,
    msix_table: Vec<[u32; 4]>,
    msix_pending: Vec<bool>,
}

/// Format version of an [`Ivshmem`]'s saved state.
pub const IVSHMEM_STATE_VERSION: u32 = 1;

impl Ivshmem {
    /// The function of peer `shared.peer`, with INTx on `intx` and MSIs to
    /// `msi`; it joins `shared.doorbells`.
    pub fn new(
        shared: IvshmemConfig,
        intx: Arc<dyn IrqLine>,
        msi: Arc<dyn MsiTarget>,
    ) -> Result<Self, IvshmemError> {
        let size = shared.size;
        if !size.is_power_of_two() || !(MIN_REGION..=MAX_REGION).contains(&size) {
            return Err(IvshmemError::RegionSize(size));
        }
        let mut config = ConfigSpace::new(PciIds {
            vendor: IVSHMEM_VENDOR,
            device: IVSHMEM_DEVICE,
            revision: 1,
            class: (0x05, 0x00, 0x00),
            subsystem: (IVSHMEM_VENDOR, 0x1100),
        });
        let mmio = |size| Bar {
            kind: BarKind::Memory32 {
                prefetchable: false,
            },
            size,
        };
        // Sizes are powers of two in range and the indices exist.
        let _ = config.set_bar(usize::from(BAR_REGISTERS), mmio(REGISTERS_SIZE));
        let _ = config.set_bar(usize::from(BAR_MSIX), mmio(MSIX_BAR_SIZE));
        let _ = config.set_bar(
            usize::from(BAR_SHARED),
            Bar {
                kind: BarKind::Memory64 { prefetchable: true },
                size,
            },
        );
        config.set_interrupt_pin(Some(InterruptPin::A));
        config.set_u16(REG_STATUS, 0x10);
        config.set_u8(0x34, CAP_MSIX);
        let mut msix = Msix::new(VECTORS, msi);
        msix.install(&mut config, CAP_MSIX, 0, BAR_MSIX, 0, PBA_OFFSET as u32);
        config.snapshot_power_on();
        shared.doorbells.connect(shared.peer)?;
        Ok(Self {
            config,
            shared,
            intr_mask: 0,
            intr_status: 0,
            intx,
            intx_level: false,
            msix,
            mapped: None,
        })
    }

    /// This VM's peer number.
    pub fn peer(&self) -> u16 {
        self.shared.peer
    }

    /// How this VM may access the region.
    pub fn access(&self) -> Access {
        self.shared.access
    }

    /// Where the region is mapped in this VM now: (base, len).
    pub fn mapped(&self) -> Option<(u64, u64)> {
        self.mapped
    }

    /// The MSI-X state.
    pub fn msix(&self) -> &Msix {
        &self.msix
    }

    fn update_intx(&mut self) {
        let level = self
            .config
            .intx_level(self.intr_status & self.intr_mask & 1 != 0);
        if level != self.intx_level {
            self.intx_level = level;
            self.intx.set_level(level);
        }
    }

    /// Deliver what was rung at this peer, if the guest set up a way to
    /// hear it.
    fn take_doorbells(&mut self) {
        let peer = self.shared.peer;
        if self.msix.enabled() {
            let rung = self.shared.doorbells.take(peer);
            for v in 0..VECTORS {
                if rung & (1 << v) != 0 {
                    self.msix.notify(v);
                }
            }
        } else if self.intr_mask & 1 != 0 && self.shared.doorbells.take(peer) != 0 {
            self.intr_status |= 1;
            self.update_intx();
        }
    }

    fn register_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 {
            return;
        }
        let value = match offset {
            REG_INTR_MASK => self.intr_mask,
            REG_INTR_STATUS => {
                let v = self.intr_status;
                self.intr_status = 0;
                self.update_intx();
                v
            }
            REG_IV_POSITION => u32::from(self.shared.peer),
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn register_write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            REG_INTR_MASK => {
                self.intr_mask = value & 1;
                self.update_intx();
                self.take_doorbells();
            }
            REG_INTR_STATUS => {
                self.intr_status = value & 1;
                self.update_intx();
            }
            REG_DOORBELL => {
                let peer = (value >> 16) as u16;
                let vector = value as u16;
                if !self.shared.doorbells.ring(peer, vector) {
                    log::debug!(
                        "ivshmem peer {}: doorbell to peer {peer} vector {vector} ignored",
                        self.shared.peer
                    );
                }
            }
            _ => {}
        }
    }

    /// Put the region's mapping back to MMIO (BAR moved, decoding off, or
    /// before a restore).
    fn unmap(&mut self, ctx: &mut DeviceContext<'_>) {
        if let Some((gpa, len)) = self.mapped.take() {
            ctx.request(VmRequest::MapMemory {
                gpa,
                len,
                read: Backing::Mmio,
                write: Backing::Mmio,
            });
        }
    }
}

impl PciFunction for Ivshmem {
    fn name(&self) -> &str {
        "ivshmem"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_write(&mut self, _ctx: &mut DeviceContext<'_>, offset: u8, data: &[u8]) {
        self.config.write(offset, data);
        self.msix.config_written(&self.config);
        self.update_intx();
        self.take_doorbells();
    }

    fn regions_changed(&mut self, ctx: &mut DeviceContext<'_>, regions: &[PciRegion]) {
        let want = regions
            .iter()
            .find(|r| r.id == RegionId::Bar(BAR_SHARED))
            .map(|r| (r.base, r.len.min(self.shared.size)));
        if want == self.mapped {
            return;
        }
        self.unmap(ctx);
        if let Some((gpa, len)) = want {
            let at = Backing::Block {
                block: self.shared.block,
                offset: 0,
            };
            let write = match self.shared.access {
                Access::ReadWrite => at,
                Access::ReadOnly => Backing::Nothing,
            };
            ctx.request(VmRequest::MapMemory {
                gpa,
                len,
                read: at,
                write,
            });
            self.mapped = Some((gpa, len));
        }
    }

    fn mmio_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &mut [u8],
    ) {
        match region {
            RegionId::Bar(BAR_REGISTERS) => self.register_read(offset, data),
            RegionId::Bar(BAR_MSIX) if offset < PBA_OFFSET => self.msix.table_read(offset, data),
            RegionId::Bar(BAR_MSIX) => self.msix.pba_read(offset - PBA_OFFSET, data),
            // The region itself is memory; a read that reaches the
            // function (only while a remap is in flight) sees all-ones.
            _ => data.fill(0xff),
        }
    }

    fn mmio_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &[u8],
    ) {
        match region {
            RegionId::Bar(BAR_REGISTERS) => self.register_write(offset, data),
            RegionId::Bar(BAR_MSIX) if offset < PBA_OFFSET => {
                self.msix.table_write(offset, data);
                // An unmasked vector may have pending doorbells.
                self.take_doorbells();
            }
            _ => {}
        }
    }

    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64> {
        if self.shared.doorbells.waiting(self.shared.peer) {
            self.take_doorbells();
        }
        Some(ctx.now_ns().saturating_add(POLL_NS))
    }

    fn reset(&mut self) {
        self.config.reset();
        self.msix.reset();
        self.intr_mask = 0;
        self.intr_status = 0;
        self.update_intx();
    }

    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
}

impl SaveRestore for Ivshmem {
    fn state_version(&self) -> u32 {
        IVSHMEM_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        let (msix_table, msix_pending) = self.msix.save();
        save_restore::encode(&IvshmemState {
            config: self.config.save_bytes(),
            intr_mask: self.intr_mask,
            intr_status: self.intr_status,
            msix_table,
            msix_pending,
        })
    }

    /// The mapping is made again when the bus re-establishes this
    /// function's claims.
    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: IvshmemState = save_restore::decode_version(version, IVSHMEM_STATE_VERSION, bytes)?;
        let mut config = self.config.clone();
        config.restore_bytes(&s.config)?;
        self.msix.restore(&s.msix_table, &s.msix_pending)?;
        self.unmap(ctx);
        self.config = config;
        self.msix.config_written(&self.config);
        self.intr_mask = s.intr_mask & 1;
        self.intr_status = s.intr_status & 1;
        self.update_intx();
        Ok(())
    }
}
