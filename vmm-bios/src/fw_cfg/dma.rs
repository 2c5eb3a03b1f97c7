//! The fw_cfg DMA interface as a checked state machine.
//!
//! The guest writes the guest-physical address of a 16-byte descriptor
//! (big-endian: `control: u32, length: u32, address: u64`) to ports
//! 0x514 (high half) and 0x518 (low half; this write starts the transfer).
//! Control bits: 0x01 error, 0x02 read, 0x04 skip, 0x08 select (selector in
//! bits 31..16), 0x10 write. The device does the operation and writes the
//! control word back: zero on success, 0x01 on error. The transfer is
//! synchronous: it is done when the port write returns.
//!
//! Every guest memory touch goes through the DMA guard: the descriptor is
//! inspected (it must be RAM of this VM), and the data and status writes
//! happen only inside a grant from an approved transition of
//! [`FwCfgDmaModel`]. A transfer whose target is not entirely RAM is denied
//! before a byte moves and reports 0x01. Writes to items are not supported
//! (as in QEMU for every item this device serves) and report 0x01.

use vmm_core::dma::{DmaGuard, DmaRange, StateModel};

/// Control bit: the transfer failed.
pub const CTL_ERROR: u32 = 0x01;
/// Control bit: read the selected item into guest memory.
pub const CTL_READ: u32 = 0x02;
/// Control bit: skip bytes of the selected item.
pub const CTL_SKIP: u32 = 0x04;
/// Control bit: select the item in bits 31..16 first.
pub const CTL_SELECT: u32 = 0x08;
/// Control bit: write guest memory into the item (refused).
pub const CTL_WRITE: u32 = 0x10;

/// The states of the DMA engine as the guest drives it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FwCfgDmaState {
    /// No transfer in progress.
    Idle,
    /// Copying item bytes to guest memory, then writing the status.
    Transferring,
    /// Writing a success status only (select, skip, empty transfer).
    Completing,
    /// Writing an error status.
    Failing,
}

/// The state model and checking function of the fw_cfg DMA engine.
#[derive(Clone, Copy, Debug, Default)]
pub struct FwCfgDmaModel;

impl StateModel for FwCfgDmaModel {
    type State = FwCfgDmaState;

    fn name(&self) -> &str {
        "fw_cfg-dma"
    }

    fn declared(&self, from: FwCfgDmaState, to: FwCfgDmaState) -> bool {
        use FwCfgDmaState::*;
        matches!(
            (from, to),
            (Idle, Transferring)
                | (Idle, Completing)
                | (Idle, Failing)
                | (Transferring, Failing)
                | (Transferring, Idle)
                | (Completing, Idle)
                | (Failing, Idle)
        )
    }

    fn is_reusable(&self, state: FwCfgDmaState) -> bool {
        state == FwCfgDmaState::Idle
    }

    fn check(
        &mut self,
        _from: FwCfgDmaState,
        to: FwCfgDmaState,
        plan: &[DmaRange],
        _guard: &DmaGuard<'_>,
    ) -> Result<(), &'static str> {
        // Leaving for Idle moves nothing; every other state must plan the
        // status word at least.
        if to != FwCfgDmaState::Idle && plan.is_empty() {
            return Err("a transfer must plan its status write");
        }
        Ok(())
    }
}

/// A DMA descriptor as read from guest memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DmaDescriptor {
    /// Control bits and selector.
    pub control: u32,
    /// Bytes to transfer.
    pub length: u32,
    /// Guest-physical address of the data.
    pub address: u64,
}

impl DmaDescriptor {
    /// Decode the 16 big-endian bytes of a descriptor.
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        let [c0, c1, c2, c3, l0, l1, l2, l3, a0, a1, a2, a3, a4, a5, a6, a7] = *b;
        Self {
            control: u32::from_be_bytes([c0, c1, c2, c3]),
            length: u32::from_be_bytes([l0, l1, l2, l3]),
            address: u64::from_be_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        }
    }

    /// Encode as the guest lays it out.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.control.to_be_bytes());
        b[4..8].copy_from_slice(&self.length.to_be_bytes());
        b[8..16].copy_from_slice(&self.address.to_be_bytes());
        b
    }
}
