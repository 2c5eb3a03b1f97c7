//! The adapter's saved state: every register, the latches and what the
//! shadow holds (video memory is guest memory and travels with it),
//! checked whole before anything changes.

use super::memory::Latches;
use super::regs::{Registers, AR_COUNT, CRTC_COUNT, DAC_BYTES, GR_COUNT, SEQ_COUNT};
use super::vbe::{Vbe, REGISTER_COUNT};
use super::{Shadow, Vga};
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::check;
use vmm_core::device::StateError;

/// Format version of [`VgaState`].
pub const VGA_STATE_VERSION: u32 = 2;

/// What [`Vga::save`] keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgaState {
    misc: u8,
    seq_index: u8,
    seq: Vec<u8>,
    gr_index: u8,
    gr: Vec<u8>,
    ar_index: u8,
    ar_data_next: bool,
    ar: Vec<u8>,
    crtc_index: u8,
    crtc: Vec<u8>,
    dac: Vec<u8>,
    dac_read_index: u8,
    dac_write_index: u8,
    dac_component: u8,
    dac_reading: bool,
    dac_latch: [u8; 3],
    pel_mask: u8,
    feature: u8,
    retrace: bool,
    vbe_index: u16,
    vbe: Vec<u16>,
    latches: [u8; 4],
    text_shadow: bool,
    /// The plane the shadow holds (version 2).
    plane_shadow: Option<u8>,
}

fn array<const N: usize>(v: &[u8], field: &'static str) -> Result<[u8; N], StateError> {
    v.try_into().map_err(|_| StateError::Invalid { field })
}

impl VgaState {
    pub(super) fn from_vga(v: &Vga) -> Self {
        let r = &v.regs;
        Self {
            misc: r.misc,
            seq_index: r.seq_index,
            seq: r.seq.to_vec(),
            gr_index: r.gr_index,
            gr: r.gr.to_vec(),
            ar_index: r.ar_index,
            ar_data_next: r.ar_data_next,
            ar: r.ar.to_vec(),
            crtc_index: r.crtc_index,
            crtc: r.crtc.to_vec(),
            dac: r.dac.to_vec(),
            dac_read_index: r.dac_read_index,
            dac_write_index: r.dac_write_index,
            dac_component: r.dac_component,
            dac_reading: r.dac_reading,
            dac_latch: r.dac_latch,
            pel_mask: r.pel_mask,
            feature: r.feature,
            retrace: r.retrace,
            vbe_index: v.vbe.index,
            vbe: v.vbe.regs.to_vec(),
            latches: v.latches.0,
            text_shadow: v.shadow == Some(Shadow::Text),
            plane_shadow: match v.shadow {
                Some(Shadow::Plane(p)) => Some(p),
                _ => None,
            },
        }
    }

    pub(super) fn to_vga(&self, vram_size: usize) -> Result<Vga, StateError> {
        check(usize::from(self.seq_index) < SEQ_COUNT, "vga seq index")?;
        check(usize::from(self.gr_index) < 16, "vga gr index")?;
        check(self.ar_index < 0x40, "vga ar index")?;
        check(self.dac_component < 3, "vga dac component")?;
        check(
            self.plane_shadow.is_none_or(|p| p < 4 && !self.text_shadow),
            "vga plane shadow",
        )?;
        let regs = Registers {
            misc: self.misc,
            seq_index: self.seq_index,
            seq: array::<SEQ_COUNT>(&self.seq, "vga seq")?,
            gr_index: self.gr_index,
            gr: array::<GR_COUNT>(&self.gr, "vga gr")?,
            ar_index: self.ar_index,
            ar_data_next: self.ar_data_next,
            ar: array::<AR_COUNT>(&self.ar, "vga ar")?,
            crtc_index: self.crtc_index,
            crtc: array::<CRTC_COUNT>(&self.crtc, "vga crtc")?,
            dac: array::<DAC_BYTES>(&self.dac, "vga dac")?,
            dac_read_index: self.dac_read_index,
            dac_write_index: self.dac_write_index,
            dac_component: self.dac_component,
            dac_reading: self.dac_reading,
            dac_latch: self.dac_latch,
            pel_mask: self.pel_mask,
            feature: self.feature,
            retrace: self.retrace,
        };
        let vbe_regs: [u16; REGISTER_COUNT] = self
            .vbe
            .as_slice()
            .try_into()
            .map_err(|_| StateError::Invalid { field: "vbe" })?;
        let vbe = Vbe::restored(vram_size, self.vbe_index, vbe_regs)
            .ok_or(StateError::Invalid { field: "vbe" })?;
        Ok(Vga {
            regs,
            vbe,
            latches: Latches(self.latches),
            vram_size,
            shadow: match (self.text_shadow, self.plane_shadow) {
                (true, _) => Some(Shadow::Text),
                (false, Some(p)) => Some(Shadow::Plane(p)),
                (false, None) => None,
            },
        })
    }
}
