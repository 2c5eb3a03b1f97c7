//! A standard VGA adapter with the Bochs VBE extensions (QEMU's "stdvga"
//! personality): the legacy registers at 0x3b0-0x3df, the 0xa0000-0xbffff
//! window, the dispi interface at 0x1ce/0x1cf, a linear framebuffer and
//! the 4 KiB MMIO register block (VGA ports at 0x400, VBE at 0x500).
//!
//! [`Vga`] is the adapter's logic: registers, VBE and latches, working on
//! video memory the caller passes in. [`stdvga::StdVga`] puts it on the PCI
//! bus with video memory that the guest maps as RAM (the PC machine's
//! display); [`Card`] is the adapter with a buffer of its own, for tests
//! and fuzzing.
//!
//! Everything the guest sends is bounds-checked; nothing here panics, and
//! nothing touches memory outside the video memory slice.
//! [`Vga::render`] gives what a person sees; [`Vga::window_mapping`] says
//! whether the legacy window may be mapped as plain memory.

pub mod memory;
pub mod regs;
pub mod render;
pub mod saved;
pub mod stdvga;
#[cfg(test)]
mod tests;
pub mod vbe;

use alloc::vec::Vec;
pub use memory::TEXT_SHADOW_LEN;
use memory::{
    plane_shadow_fits, plane_to_shadow, planes_to_shadow, shadow_to_plane, shadow_to_planes,
    text_shadow_fits, window_offset, Latches,
};
use regs::Registers;
use render::{Display, DisplayBackend};
use vbe::{Vbe, VbeEffect};

/// Default video memory: 16 MiB.
pub const DEFAULT_VRAM_SIZE: usize = 16 << 20;
/// Guest-physical start of the legacy window.
pub const WINDOW_BASE: u64 = 0xa0000;
/// First legacy register port.
pub const VGA_PORTS_FIRST: u16 = 0x3b0;
/// Number of legacy register ports (0x3b0-0x3df).
pub const VGA_PORTS_COUNT: u16 = 0x30;
/// The VBE index port (the data port follows).
pub const VBE_PORT_INDEX: u16 = 0x1ce;
/// The VBE data port.
pub const VBE_PORT_DATA: u16 = 0x1cf;
/// Size of the MMIO register BAR.
pub const MMIO_BAR_SIZE: u64 = 0x1000;
/// PCI vendor ID.
pub const PCI_VENDOR: u16 = 0x1234;
/// PCI device ID.
pub const PCI_DEVICE: u16 = 0x1111;
/// PCI class code (display, VGA-compatible).
pub const PCI_CLASS: u32 = 0x03_00_00;

/// How the guest's accesses to a memory range may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowMapping {
    /// The range is plain memory: guest offset `o` is video memory byte
    /// `vram_offset + o` for `len` bytes starting at guest-physical
    /// `gpa`. The host may map it directly and track dirty pages.
    Linear {
        /// Guest-physical start.
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// Offset in video memory.
        vram_offset: usize,
    },
    /// Accesses go through latches or plane logic: they must exit.
    Emulated,
}

/// What the shadow after video memory holds for the window, so that the
/// guest can have the window as RAM (see [`Vga::sync_text_shadow`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shadow {
    /// The odd/even text window: planes 0 and 1 are stale.
    Text,
    /// One plane (0-3) of a planar mode that writes only it: that plane
    /// is stale.
    Plane(u8),
}

impl Shadow {
    /// The shadow the registers call for, if any.
    fn wanted(regs: &Registers, vbe: &Vbe) -> Option<Self> {
        if vbe.enabled() {
            None
        } else if text_shadow_fits(regs) {
            Some(Shadow::Text)
        } else {
            plane_shadow_fits(regs).map(|p| Shadow::Plane(p as u8))
        }
    }
}

/// The adapter's state: everything but video memory.
#[derive(Clone, Debug)]
pub struct Vga {
    regs: Registers,
    vbe: Vbe,
    latches: Latches,
    vram_size: usize,
    /// What the shadow after video memory holds now, if the window is
    /// served from it: see [`Vga::sync_text_shadow`].
    shadow: Option<Shadow>,
}

impl Default for Vga {
    fn default() -> Self {
        Self::new(DEFAULT_VRAM_SIZE)
    }
}

/// The video memory size an adapter asked for `vram_size` has: rounded up
/// to a 64 KiB multiple, at least 256 KiB.
pub fn vram_size(vram_size: usize) -> usize {
    vram_size.max(256 << 10).next_multiple_of(65536)
}

impl Vga {
    /// An adapter for [`vram_size`]`(vram_size)` bytes of video memory.
    pub fn new(vram_size: usize) -> Self {
        let size = self::vram_size(vram_size);
        Self {
            regs: Registers::default(),
            vbe: Vbe::new(size),
            latches: Latches::default(),
            vram_size: size,
            shadow: None,
        }
    }

    /// Bytes of device memory an adapter of `vram_size` bytes works on:
    /// video memory, then the text shadow ([`TEXT_SHADOW_LEN`]).
    pub fn memory_size(&self) -> usize {
        self.vram_size + TEXT_SHADOW_LEN
    }

    /// Whether a text mode is served from the text shadow now.
    pub fn text_shadowed(&self) -> bool {
        self.shadow == Some(Shadow::Text)
    }

    /// What the window is served from now: the shadow, and what it holds,
    /// or `None` for the planes.
    pub fn shadow(&self) -> Option<Shadow> {
        self.shadow
    }

    /// Move the window's bytes between the planes and the shadow when the
    /// registers now call for another arrangement: in a plain odd/even
    /// text mode (mode 3 and friends, see [`memory::text_shadow_fits`])
    /// the window is the text shadow, a byte for a byte, and in a planar
    /// mode that reads and plainly writes a single plane (the VGA BIOS's
    /// font loads into plane 2, see [`memory::plane_shadow_fits`]) it is
    /// a copy of that plane; either way the guest can have it as RAM
    /// without exits. Any other mode works on the planes again. Called
    /// after every register write; `vram` is the device memory
    /// ([`Vga::memory_size`] bytes).
    pub fn sync_text_shadow(&mut self, vram: &mut [u8]) {
        let want = Shadow::wanted(&self.regs, &self.vbe);
        if want == self.shadow {
            return;
        }
        match self.shadow {
            Some(Shadow::Text) => shadow_to_planes(vram, self.vram_size),
            Some(Shadow::Plane(p)) => shadow_to_plane(vram, self.vram_size, usize::from(p)),
            None => {}
        }
        match want {
            Some(Shadow::Text) => planes_to_shadow(vram, self.vram_size),
            Some(Shadow::Plane(p)) => plane_to_shadow(vram, self.vram_size, usize::from(p)),
            None => {}
        }
        self.shadow = want;
    }

    /// Bytes of video memory this adapter drives.
    pub fn vram_size(&self) -> usize {
        self.vram_size
    }

    /// The register state.
    pub fn registers(&self) -> &Registers {
        &self.regs
    }

    /// The VBE state.
    pub fn vbe(&self) -> &Vbe {
        &self.vbe
    }

    /// Read a byte from an I/O port (legacy registers or VBE).
    pub fn io_read(&mut self, port: u16) -> u8 {
        match port {
            VBE_PORT_INDEX => self.vbe.index as u8,
            VBE_PORT_DATA => (self.vbe.read_data() >> 8) as u8,
            0x3b0..=0x3df => self.regs.read(port),
            _ => 0xff,
        }
    }

    /// Read a 16-bit I/O port value (VBE ports take 16-bit accesses).
    pub fn io_read16(&mut self, port: u16) -> u16 {
        match port {
            VBE_PORT_INDEX => self.vbe.index,
            VBE_PORT_DATA => self.vbe.read_data(),
            _ => u16::from(self.io_read(port)) | u16::from(self.io_read(port.wrapping_add(1))) << 8,
        }
    }

    /// Write a byte to an I/O port.
    pub fn io_write(&mut self, vram: &mut [u8], port: u16, v: u8) {
        match port {
            VBE_PORT_INDEX => self.vbe.index = u16::from(v),
            VBE_PORT_DATA => self.vbe_write(vram, u16::from(v)),
            0x3b0..=0x3df => self.regs.write(port, v),
            _ => {}
        }
        self.sync_text_shadow(vram);
    }

    /// Write a 16-bit I/O port value; elsewhere than VBE, a word write to
    /// an index port writes index then data.
    pub fn io_write16(&mut self, vram: &mut [u8], port: u16, v: u16) {
        match port {
            VBE_PORT_INDEX => self.vbe.index = v,
            VBE_PORT_DATA => self.vbe_write(vram, v),
            _ => {
                self.io_write(vram, port, v as u8);
                self.io_write(vram, port.wrapping_add(1), (v >> 8) as u8);
            }
        }
    }

    fn vbe_write(&mut self, vram: &mut [u8], v: u16) {
        if self.vbe.write_data(v) == VbeEffect::ClearMemory {
            let end = self.vram_size.min(vram.len());
            vram[..end].fill(0);
        }
        self.sync_text_shadow(vram);
    }

    /// A guest read at `offset` into the legacy window.
    pub fn window_read(&mut self, vram: &[u8], offset: u64) -> u8 {
        if self.vbe.enabled() {
            let at = usize::try_from(offset).ok().filter(|&o| o < 0x10000);
            return at
                .and_then(|o| vram.get(self.vbe.bank_offset() + o))
                .copied()
                .unwrap_or(0xff);
        }
        match window_offset(&self.regs, offset) {
            Some(a) if self.shadow.is_some() => {
                vram.get(self.vram_size + a).copied().unwrap_or(0xff)
            }
            Some(a) => self.latches.read(&self.regs, vram, a),
            None => 0xff,
        }
    }

    /// A guest write at `offset` into the legacy window.
    pub fn window_write(&mut self, vram: &mut [u8], offset: u64, v: u8) {
        if self.vbe.enabled() {
            if let Some(o) = usize::try_from(offset).ok().filter(|&o| o < 0x10000) {
                let at = self.vbe.bank_offset() + o;
                if let Some(b) = vram.get_mut(at) {
                    *b = v;
                }
            }
            return;
        }
        match window_offset(&self.regs, offset) {
            Some(a) if self.shadow.is_some() => {
                if let Some(b) = vram.get_mut(self.vram_size + a) {
                    *b = v;
                }
            }
            Some(a) => self.latches.write(&self.regs, vram, a, v),
            None => {}
        }
    }

    /// A read from the MMIO register BAR: 0x400-0x41f are ports
    /// 0x3c0-0x3df, 0x500-0x515 the VBE registers as 16-bit words.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match offset {
            0x400..=0x41f => {
                for (i, d) in data.iter_mut().enumerate() {
                    let port = 0x3c0 + (offset - 0x400) + i as u64;
                    if port <= 0x3df {
                        *d = self.io_read(port as u16);
                    }
                }
            }
            0x500..=0x515 => {
                let saved = self.vbe.index;
                for (i, d) in data.iter_mut().enumerate() {
                    let at = offset - 0x500 + i as u64;
                    self.vbe.index = (at / 2) as u16;
                    let w = self.vbe.read_data();
                    *d = if at.is_multiple_of(2) {
                        w as u8
                    } else {
                        (w >> 8) as u8
                    };
                }
                self.vbe.index = saved;
            }
            _ => {}
        }
    }

    /// A write to the MMIO register BAR (see [`Vga::mmio_read`]).
    pub fn mmio_write(&mut self, vram: &mut [u8], offset: u64, data: &[u8]) {
        match offset {
            0x400..=0x41f => {
                for (i, &d) in data.iter().enumerate() {
                    let port = 0x3c0 + (offset - 0x400) + i as u64;
                    if port <= 0x3df {
                        self.io_write(vram, port as u16, d);
                    }
                }
            }
            0x500..=0x515 if offset.is_multiple_of(2) && data.len() >= 2 => {
                let saved = self.vbe.index;
                for (i, w) in data.chunks_exact(2).enumerate() {
                    self.vbe.index = ((offset - 0x500) / 2 + i as u64) as u16;
                    self.vbe_write(vram, u16::from_le_bytes([w[0], w[1]]));
                }
                self.vbe.index = saved;
            }
            _ => {}
        }
    }

    /// What the screen shows now, drawn from `vram`.
    pub fn render(&self, vram: &[u8]) -> Display {
        let text = if self.shadow == Some(Shadow::Text) {
            render::TextSource::Shadow(self.vram_size)
        } else {
            render::TextSource::Planes
        };
        render::render(&self.regs, &self.vbe, &self.video_memory(vram), text)
    }

    /// `vram` as the renderer reads it, with the plane in the shadow.
    fn video_memory<'a>(&self, vram: &'a [u8]) -> render::VideoMemory<'a> {
        render::VideoMemory {
            vram,
            plane_shadow: match self.shadow {
                Some(Shadow::Plane(p)) => Some((usize::from(p), self.vram_size)),
                _ => None,
            },
        }
    }

    /// What the screen shows as pixels: a graphics mode's picture, or a
    /// text mode drawn with the guest's font ([`render::text_pixels`]);
    /// `None` while the screen is blank.
    pub fn render_pixels(&self, vram: &[u8]) -> Option<render::Framebuffer> {
        match self.render(vram) {
            Display::Blank => None,
            Display::Graphics(f) => Some(f),
            Display::Text(t) => Some(render::text_pixels(
                &self.regs,
                &self.video_memory(vram),
                &t,
            )),
        }
    }

    /// Render and hand the picture to `backend`.
    pub fn update(&self, vram: &[u8], backend: &mut dyn DisplayBackend) {
        backend.update(&self.render(vram));
    }

    /// Whether the legacy window may be mapped as plain memory for the
    /// current register state: yes in chain-4 (mode 13h), for a VBE bank,
    /// in a plain text mode (the text shadow after video memory) and while
    /// a planar mode plainly writes and reads one plane (that plane's copy
    /// in the same shadow); other planar settings and unusual odd/even
    /// settings go through the latches and plane logic, so their accesses
    /// must exit.
    pub fn window_mapping(&self) -> WindowMapping {
        if self.shadow.is_some() {
            let (start, len) = memory::map_range(&self.regs);
            return WindowMapping::Linear {
                gpa: WINDOW_BASE + start,
                len,
                vram_offset: self.vram_size,
            };
        }
        if self.vbe.enabled() {
            return WindowMapping::Linear {
                gpa: WINDOW_BASE,
                len: 0x10000,
                vram_offset: self.vbe.bank_offset(),
            };
        }
        let r = &self.regs;
        let plain_writes = r.gr[5] & 3 == 0
            && r.gr[1] & 0x0f == 0
            && r.gr[3] == 0
            && r.gr[8] == 0xff
            && r.seq[2] & 0x0f == 0x0f;
        if r.seq[4] & 0x08 != 0 && plain_writes {
            let (start, len) = match (r.gr[6] >> 2) & 3 {
                0 => (0, 0x20000),
                1 => (0, 0x10000),
                2 => (0x10000, 0x8000),
                _ => (0x18000, 0x8000),
            };
            return WindowMapping::Linear {
                gpa: WINDOW_BASE + start,
                len,
                vram_offset: 0,
            };
        }
        WindowMapping::Emulated
    }

    /// Back to the power-on register state (video memory is the caller's
    /// and keeps its contents, as on hardware; where the text lives moves
    /// at the next [`Vga::sync_text_shadow`]).
    pub fn reset(&mut self) {
        let shadow = self.shadow;
        *self = Self::new(self.vram_size);
        self.shadow = shadow;
    }

    /// The state to save: registers, VBE and latches.
    pub fn save(&self) -> saved::VgaState {
        saved::VgaState::from_vga(self)
    }

    /// Take a state from [`Vga::save`] back; refused with nothing changed
    /// if it does not fit this adapter.
    pub fn restore(&mut self, s: &saved::VgaState) -> Result<(), vmm_core::device::StateError> {
        *self = s.to_vga(self.vram_size)?;
        Ok(())
    }
}

/// The adapter with video memory of its own: for tests, fuzzing, and an
/// embedder that draws a VGA without mapping its memory into a guest.
#[derive(Clone, Debug)]
pub struct Card {
    vga: Vga,
    vram: Vec<u8>,
}

impl Default for Card {
    fn default() -> Self {
        Self::new(DEFAULT_VRAM_SIZE)
    }
}

impl Card {
    /// An adapter with [`vram_size`]`(vram_size)` bytes of zeroed video
    /// memory.
    pub fn new(vram_size: usize) -> Self {
        let vga = Vga::new(vram_size);
        let vram = alloc::vec![0; vga.memory_size()];
        Self { vga, vram }
    }

    /// The adapter's state.
    pub fn vga(&self) -> &Vga {
        &self.vga
    }

    /// The register state.
    pub fn registers(&self) -> &Registers {
        self.vga.registers()
    }

    /// Device memory: video memory, then the text shadow.
    pub fn vram(&self) -> &[u8] {
        &self.vram
    }

    /// See [`Vga::io_read`].
    pub fn io_read(&mut self, port: u16) -> u8 {
        self.vga.io_read(port)
    }

    /// See [`Vga::io_read16`].
    pub fn io_read16(&mut self, port: u16) -> u16 {
        self.vga.io_read16(port)
    }

    /// See [`Vga::io_write`].
    pub fn io_write(&mut self, port: u16, v: u8) {
        self.vga.io_write(&mut self.vram, port, v);
    }

    /// See [`Vga::io_write16`].
    pub fn io_write16(&mut self, port: u16, v: u16) {
        self.vga.io_write16(&mut self.vram, port, v);
    }

    /// See [`Vga::window_read`].
    pub fn window_read(&mut self, offset: u64) -> u8 {
        self.vga.window_read(&self.vram, offset)
    }

    /// See [`Vga::window_write`].
    pub fn window_write(&mut self, offset: u64, v: u8) {
        self.vga.window_write(&mut self.vram, offset, v);
    }

    /// A guest read from the linear framebuffer at `offset`.
    pub fn lfb_read(&self, offset: u64) -> u8 {
        usize::try_from(offset)
            .ok()
            .and_then(|o| self.vram.get(o))
            .copied()
            .unwrap_or(0xff)
    }

    /// A guest write to the linear framebuffer at `offset`.
    pub fn lfb_write(&mut self, offset: u64, v: u8) {
        if let Some(b) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.vram.get_mut(o))
        {
            *b = v;
        }
    }

    /// See [`Vga::mmio_read`].
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        self.vga.mmio_read(offset, data);
    }

    /// See [`Vga::mmio_write`].
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        self.vga.mmio_write(&mut self.vram, offset, data);
    }

    /// See [`Vga::render`].
    pub fn render(&self) -> Display {
        self.vga.render(&self.vram)
    }

    /// See [`Vga::render_pixels`].
    pub fn render_pixels(&self) -> Option<render::Framebuffer> {
        self.vga.render_pixels(&self.vram)
    }

    /// See [`Vga::window_mapping`].
    pub fn window_mapping(&self) -> WindowMapping {
        self.vga.window_mapping()
    }
}
