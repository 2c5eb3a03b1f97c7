//! Which guest address space a shadow root serves, and the hardware
//! format of its tree.

use super::error::ShadowError;
use super::{ADDR_MASK, PTE_A, PTE_P, PTE_RW, PTE_US};
use crate::paging::{
    ControlRegisters, PagingMode, CR0_WP, CR4_PKE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_NXE,
};

/// The hardware format of a shadow tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowFormat {
    /// PAE: a 4-entry PDPT root, for guests with paging off, 32-bit or PAE
    /// paging. The backend must run the guest with CR4.PAE.
    Pae,
    /// 4-level, for 4-level guests.
    Level4,
}

impl ShadowFormat {
    pub(super) fn top_shift(self) -> u32 {
        match self {
            ShadowFormat::Pae => 30,
            ShadowFormat::Level4 => 39,
        }
    }

    pub(super) fn linear_mask(self) -> u64 {
        match self {
            ShadowFormat::Pae => 0xffff_ffff,
            ShadowFormat::Level4 => 0x0000_ffff_ffff_ffff,
        }
    }

    /// A non-leaf entry; PAE PDPTEs take only P and the address.
    pub(super) fn table_entry(self, phys: u64, top: bool) -> u64 {
        match (self, top) {
            (ShadowFormat::Pae, true) => phys | PTE_P,
            _ => phys | PTE_P | PTE_RW | PTE_US | PTE_A,
        }
    }
}

/// Which guest address space (and way of filling) a shadow root serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootKey {
    /// The paging mode.
    pub mode: PagingMode,
    /// The guest's page-table root (CR3 without flag or PCID bits; zero
    /// with paging off).
    pub cr3: u64,
    /// The control bits that change what a fill produces: CR0.WP,
    /// CR4.PSE/SMEP/SMAP/PKE, EFER.NXE.
    pub role: u64,
}

impl RootKey {
    /// The key for a guest's control registers.
    pub fn of(control: &ControlRegisters) -> RootKey {
        let mode = control.paging_mode();
        let cr3 = match mode {
            PagingMode::Disabled => 0,
            PagingMode::Bits32 => control.cr3 & 0xffff_f000,
            PagingMode::Pae => control.cr3 & 0xffff_ffe0,
            PagingMode::Level4 | PagingMode::Level5 => control.cr3 & ADDR_MASK,
        };
        let role = if mode == PagingMode::Disabled {
            0
        } else {
            (control.cr0 & CR0_WP)
                | (control.cr4 & (CR4_PSE | CR4_SMEP | CR4_SMAP | CR4_PKE))
                | (control.efer & EFER_NXE)
        };
        RootKey { mode, cr3, role }
    }

    /// The shadow format this key needs.
    pub fn format(&self) -> Result<ShadowFormat, ShadowError> {
        match self.mode {
            PagingMode::Level4 => Ok(ShadowFormat::Level4),
            PagingMode::Level5 => Err(ShadowError::UnsupportedMode(self.mode)),
            _ => Ok(ShadowFormat::Pae),
        }
    }
}
