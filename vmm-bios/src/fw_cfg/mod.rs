//! The QEMU firmware configuration interface (fw_cfg) on x86 I/O ports, as
//! SeaBIOS drives it.
//!
//! - Port 0x510 (16-bit write): select an item; the read offset restarts at
//!   zero.
//! - Port 0x511 (byte reads): the selected item's bytes, one per read;
//!   zeros past its end (and for an unknown key). Writes are ignored.
//! - Ports 0x514-0x51b (DMA, when enabled): reads give the signature
//!   "QEMU CFG"; a 32-bit write to 0x514 sets the high half of a descriptor
//!   address, one to 0x518 the low half and starts the transfer (see
//!   [`dma`]).
//!
//! SeaBIOS detects the interface by reading "QEMU" from item 0, reads the
//! ID (bit 1: use DMA), then the file directory, and loads files by name.

pub mod dma;
mod store;

pub use store::{keys, FwCfgBuilder, FwCfgError, MAX_FILE_NAME};

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use dma::{
    DmaDescriptor, FwCfgDmaModel, FwCfgDmaState, CTL_ERROR, CTL_READ, CTL_SELECT, CTL_SKIP,
    CTL_WRITE,
};
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::{self, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo};
use vmm_core::dma::{CheckedStateMachine, DmaDirection, DmaRange};

/// The selector port.
pub const PORT_SELECTOR: u16 = 0x510;
/// The data port.
pub const PORT_DATA: u16 = 0x511;
/// The DMA address register (high half at +0, low half at +4).
pub const PORT_DMA: u16 = 0x514;
/// Ports from [`PORT_SELECTOR`] the traditional interface claims.
pub const SELECTOR_DATA_PORTS: u16 = 2;
/// Ports from [`PORT_DMA`] the DMA interface claims.
pub const DMA_PORTS: u16 = 8;

/// What reading the DMA address ports returns.
const DMA_SIGNATURE: &[u8; 8] = b"QEMU CFG";

/// A fw_cfg device.
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    dma_enabled: bool,
    selected: u16,
    offset: u64,
    dma_high: u32,
    dma: CheckedStateMachine<FwCfgDmaModel>,
    dma_transfers: u64,
}

impl FwCfg {
    /// A device serving what `builder` holds.
    pub fn new(builder: FwCfgBuilder) -> Self {
        let (items, dma_enabled) = builder.build_items();
        Self {
            items,
            dma_enabled,
            selected: keys::SIGNATURE,
            offset: 0,
            dma_high: 0,
            dma: CheckedStateMachine::new(FwCfgDmaModel, FwCfgDmaState::Idle),
            dma_transfers: 0,
        }
    }

    /// The port ranges to claim, as `(first, count)`.
    pub fn port_ranges(&self) -> Vec<(u16, u16)> {
        let mut v = alloc::vec![(PORT_SELECTOR, SELECTOR_DATA_PORTS)];
        if self.dma_enabled {
            v.push((PORT_DMA, DMA_PORTS));
        }
        v
    }

    /// The bytes of item `key`, if it exists.
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items.get(&key).map(|v| v.as_slice())
    }

    /// DMA transfers started so far.
    pub fn dma_transfers(&self) -> u64 {
        self.dma_transfers
    }

    /// DMA transitions the checker denied so far.
    pub fn dma_denials(&self) -> u64 {
        self.dma.denials()
    }

    fn select(&mut self, key: u16) {
        self.selected = key & !keys::WRITE_FLAG;
        self.offset = 0;
    }

    fn current(&self) -> &[u8] {
        self.items.get(&self.selected).map_or(&[], |v| v.as_slice())
    }

    fn read_data_byte(&mut self) -> u8 {
        let b = usize::try_from(self.offset)
            .ok()
            .and_then(|o| self.current().get(o).copied())
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
    }

    /// Run the DMA descriptor at `desc_gpa`.
    fn run_dma(&mut self, ctx: &mut DeviceContext<'_>, desc_gpa: u64) {
        self.dma_transfers += 1;
        let mut raw = [0u8; 16];
        if let Err(e) = ctx.dma.inspect(desc_gpa, &mut raw) {
            // Nowhere to report the error: the descriptor is not RAM.
            log::warn!("fw_cfg: DMA descriptor at {desc_gpa:#x} refused: {e}");
            return;
        }
        let d = DmaDescriptor::from_bytes(&raw);
        if d.control & CTL_SELECT != 0 {
            self.select((d.control >> 16) as u16);
        }
        let status = DmaRange {
            gpa: desc_gpa,
            len: 4,
            dir: DmaDirection::ToGuest,
        };
        let ok = if d.control & CTL_READ != 0 {
            self.dma_read(ctx, &d, status)
        } else if d.control & CTL_WRITE != 0 {
            false
        } else {
            if d.control & CTL_SKIP != 0 {
                self.offset = self.offset.saturating_add(u64::from(d.length));
            }
            self.dma
                .request(FwCfgDmaState::Completing, &[status], &ctx.dma)
                .is_ok()
        };
        if ok {
            if let Some(grant) = self.dma.grant() {
                let _ = ctx.dma.write(grant, desc_gpa, &0u32.to_be_bytes());
            }
        } else if self
            .dma
            .request(FwCfgDmaState::Failing, &[status], &ctx.dma)
            .is_ok()
        {
            if let Some(grant) = self.dma.grant() {
                let _ = ctx.dma.write(grant, desc_gpa, &CTL_ERROR.to_be_bytes());
            }
        }
        let _ = self.dma.request(FwCfgDmaState::Idle, &[], &ctx.dma);
    }

    /// A DMA read of `d.length` bytes of the selected item; false on error.
    fn dma_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        d: &DmaDescriptor,
        status: DmaRange,
    ) -> bool {
        let len = u64::from(d.length);
        let mut plan = alloc::vec![status];
        if len > 0 {
            plan.insert(
                0,
                DmaRange {
                    gpa: d.address,
                    len,
                    dir: DmaDirection::ToGuest,
                },
            );
        }
        if self
            .dma
            .request(FwCfgDmaState::Transferring, &plan, &ctx.dma)
            .is_err()
        {
            return false;
        }
        let Some(grant) = self.dma.grant() else {
            return false;
        };
        let data = self
            .items
            .get(&self.selected)
            .map_or(&[][..], |v| v.as_slice());
        let mut chunk = [0u8; 4096];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            let buf = &mut chunk[..n];
            buf.fill(0);
            let from = self.offset.saturating_add(done);
            if let Ok(from) = usize::try_from(from) {
                if let Some(src) = data.get(from..) {
                    let m = src.len().min(n);
                    buf[..m].copy_from_slice(&src[..m]);
                }
            }
            // In range: the plan covering `d.address + len` was approved.
            if ctx.dma.write(grant, d.address + done, buf).is_err() {
                return false;
            }
            done += n as u64;
        }
        self.offset = self.offset.saturating_add(len);
        true
    }
}

/// Saved state of fw_cfg, version [`FW_CFG_STATE_VERSION`]: the selected
/// item, the read offset in it, and the DMA address register's high half.
/// The items are the restoring machine's (built from its configuration);
/// DMA transfers finish inside the port write that starts them, so there
/// is none in flight.
#[derive(Serialize, Deserialize)]
struct FwCfgState {
    selected: u16,
    offset: u64,
    dma_high: u32,
}

/// Format version of [`FwCfg`]'s saved state.
pub const FW_CFG_STATE_VERSION: u32 = 1;

impl SaveRestore for FwCfg {
    fn state_version(&self) -> u32 {
        FW_CFG_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&FwCfgState {
            selected: self.selected,
            offset: self.offset,
            dma_high: self.dma_high,
        })
    }

    fn restore_state(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: FwCfgState = save_restore::decode_version(version, FW_CFG_STATE_VERSION, bytes)?;
        save_restore::check(s.selected & keys::WRITE_FLAG == 0, "fw_cfg selector")?;
        self.selected = s.selected;
        self.offset = s.offset;
        self.dma_high = s.dma_high;
        self.dma.reset_to(FwCfgDmaState::Idle);
        Ok(())
    }
}

impl Device for FwCfg {
    fn name(&self) -> &str {
        "fw_cfg"
    }

    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }

    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }

    fn reset(&mut self) {
        self.select(keys::SIGNATURE);
        self.dma_high = 0;
        self.dma.reset_to(FwCfgDmaState::Idle);
    }
}

/// A fw_cfg register, by its claim and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Register {
    /// The selector (offset 0 of the selector/data claim).
    Selector,
    /// The data byte (offset 1).
    Data,
    /// The DMA interface, at this offset of its claim: the address's high
    /// half at 0, its low half at 4 (a write there starts the transfer).
    Dma(u16),
}

impl Register {
    /// The register an access at `at` starts on, if any.
    fn at(at: PortAddress) -> Option<Self> {
        match (at.range_first(), at.offset()) {
            (PORT_SELECTOR, 0) => Some(Self::Selector),
            (PORT_SELECTOR, 1) => Some(Self::Data),
            (PORT_DMA, offset) if offset < DMA_PORTS => Some(Self::Dma(offset)),
            _ => None,
        }
    }
}

impl PortIo for FwCfg {
    fn port_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        match Register::at(port) {
            Some(Register::Data) => {
                for b in data.iter_mut() {
                    *b = self.read_data_byte();
                }
            }
            Some(Register::Dma(offset)) if self.dma_enabled => {
                let start = usize::from(offset);
                for (i, b) in data.iter_mut().enumerate() {
                    *b = DMA_SIGNATURE.get(start + i).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        match (Register::at(port), data.len()) {
            (Some(Register::Selector), 1) => self.select(u16::from(data[0])),
            (Some(Register::Selector), _) if data.len() >= 2 => {
                self.select(u16::from_le_bytes([data[0], data[1]]))
            }
            // The guest stores the big-endian address with `outl`: the port
            // sees its bytes in memory order.
            (Some(Register::Dma(0)), 4) if self.dma_enabled => {
                self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            }
            (Some(Register::Dma(4)), 4) if self.dma_enabled => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let gpa = (u64::from(self.dma_high) << 32) | u64::from(low);
                self.dma_high = 0;
                self.run_dma(ctx, gpa);
            }
            // Data-port writes and odd-sized DMA accesses are ignored.
            _ => {}
        }
        IoOutcome::Done
    }
}
