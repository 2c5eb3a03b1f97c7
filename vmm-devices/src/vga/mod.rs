//! A standard VGA adapter with the Bochs VBE extensions (QEMU's "stdvga"
//! personality): the legacy registers at 0x3b0-0x3df, the 0xa0000-0xbffff
//! window, the dispi interface at 0x1ce/0x1cf, a linear framebuffer and
//! the 4 KiB MMIO register block (VGA ports at 0x400, VBE at 0x500).
//!
//! Everything the guest sends is bounds-checked; nothing here panics.
//! [`Vga::render`] gives what a person sees; [`Vga::window_mapping`] says
//! whether the legacy window may be mapped as plain memory.

pub mod memory;
pub mod regs;
pub mod render;
#[cfg(test)]
mod tests;
pub mod vbe;

use memory::{window_offset, VideoMemory};
use regs::Registers;
use render::{Display, DisplayBackend};
use vbe::{Vbe, VbeEffect};
use vmm_core::device::{Device, DeviceContext, IoOutcome, Mmio, MmioAddress, PortAddress, PortIo};

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

/// The adapter.
#[derive(Debug)]
pub struct Vga {
    regs: Registers,
    vbe: Vbe,
    mem: VideoMemory,
}

impl Default for Vga {
    fn default() -> Self {
        Self::new(DEFAULT_VRAM_SIZE)
    }
}

impl Vga {
    /// An adapter with `vram_size` bytes of video memory (rounded up to a
    /// 64 KiB multiple, at least 256 KiB).
    pub fn new(vram_size: usize) -> Self {
        let size = vram_size.max(256 << 10).next_multiple_of(65536);
        Self {
            regs: Registers::default(),
            vbe: Vbe::new(size),
            mem: VideoMemory::new(size),
        }
    }

    /// The register state.
    pub fn registers(&self) -> &Registers {
        &self.regs
    }

    /// The VBE state.
    pub fn vbe(&self) -> &Vbe {
        &self.vbe
    }

    /// Video memory.
    pub fn vram(&self) -> &[u8] {
        &self.mem.bytes
    }

    /// Video memory, writable (a host serving a directly mapped window).
    pub fn vram_mut(&mut self) -> &mut [u8] {
        &mut self.mem.bytes
    }

    /// Read a byte from an I/O port (legacy registers or VBE).
    pub fn io_read(&mut self, port: u16) -> u8 {
        match port {
            VBE_PORT_INDEX => self.vbe.index as u8,
            0x1cf => (self.vbe.read_data() >> 8) as u8,
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
    pub fn io_write(&mut self, port: u16, v: u8) {
        match port {
            VBE_PORT_INDEX => self.vbe.index = u16::from(v),
            VBE_PORT_DATA => self.vbe_write(u16::from(v)),
            0x3b0..=0x3df => self.regs.write(port, v),
            _ => {}
        }
    }

    /// Write a 16-bit I/O port value; elsewhere than VBE, a word write to
    /// an index port writes index then data.
    pub fn io_write16(&mut self, port: u16, v: u16) {
        match port {
            VBE_PORT_INDEX => self.vbe.index = v,
            VBE_PORT_DATA => self.vbe_write(v),
            _ => {
                self.io_write(port, v as u8);
                self.io_write(port.wrapping_add(1), (v >> 8) as u8);
            }
        }
    }

    fn vbe_write(&mut self, v: u16) {
        if self.vbe.write_data(v) == VbeEffect::ClearMemory {
            self.mem.bytes.fill(0);
        }
    }

    /// A guest read at `offset` into the legacy window.
    pub fn window_read(&mut self, offset: u64) -> u8 {
        if self.vbe.enabled() {
            let at = usize::try_from(offset).ok().filter(|&o| o < 0x10000);
            return at
                .and_then(|o| self.mem.bytes.get(self.vbe.bank_offset() + o))
                .copied()
                .unwrap_or(0xff);
        }
        match window_offset(&self.regs, offset) {
            Some(a) => self.mem.read(&self.regs, a),
            None => 0xff,
        }
    }

    /// A guest write at `offset` into the legacy window.
    pub fn window_write(&mut self, offset: u64, v: u8) {
        if self.vbe.enabled() {
            if let Some(o) = usize::try_from(offset).ok().filter(|&o| o < 0x10000) {
                let at = self.vbe.bank_offset() + o;
                if let Some(b) = self.mem.bytes.get_mut(at) {
                    *b = v;
                }
            }
            return;
        }
        if let Some(a) = window_offset(&self.regs, offset) {
            self.mem.write(&self.regs, a, v);
        }
    }

    /// A guest read from the linear framebuffer BAR at `offset`.
    pub fn lfb_read(&self, offset: u64) -> u8 {
        usize::try_from(offset)
            .ok()
            .and_then(|o| self.mem.bytes.get(o))
            .copied()
            .unwrap_or(0xff)
    }

    /// A guest write to the linear framebuffer BAR at `offset`.
    pub fn lfb_write(&mut self, offset: u64, v: u8) {
        if let Some(b) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.mem.bytes.get_mut(o))
        {
            *b = v;
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
                    *d = if at % 2 == 0 { w as u8 } else { (w >> 8) as u8 };
                }
                self.vbe.index = saved;
            }
            _ => {}
        }
    }

    /// A write to the MMIO register BAR (see [`Vga::mmio_read`]).
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0x400..=0x41f => {
                for (i, &d) in data.iter().enumerate() {
                    let port = 0x3c0 + (offset - 0x400) + i as u64;
                    if port <= 0x3df {
                        self.io_write(port as u16, d);
                    }
                }
            }
            0x500..=0x515 if offset % 2 == 0 && data.len() >= 2 => {
                let saved = self.vbe.index;
                for (i, w) in data.chunks_exact(2).enumerate() {
                    self.vbe.index = ((offset - 0x500) / 2 + i as u64) as u16;
                    self.vbe_write(u16::from_le_bytes([w[0], w[1]]));
                }
                self.vbe.index = saved;
            }
            _ => {}
        }
    }

    /// What the screen shows now.
    pub fn render(&self) -> Display {
        render::render(&self.regs, &self.vbe, &self.mem)
    }

    /// Render and hand the picture to `backend`.
    pub fn update(&self, backend: &mut dyn DisplayBackend) {
        backend.update(&self.render());
    }

    /// Whether the legacy window may be mapped as plain memory for the
    /// current register state: yes in chain-4 (mode 13h) and for a VBE
    /// bank; planar and odd/even (text) modes go through the latches and
    /// plane logic, so their accesses must exit.
    pub fn window_mapping(&self) -> WindowMapping {
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

    /// The linear framebuffer BAR is always plain memory.
    pub fn lfb_mapping(&self, bar_gpa: u64) -> WindowMapping {
        WindowMapping::Linear {
            gpa: bar_gpa,
            len: self.mem.bytes.len() as u64,
            vram_offset: 0,
        }
    }
}

impl PortIo for Vga {
    fn port_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        let p = port.port();
        if data.len() == 2 {
            data.copy_from_slice(&self.io_read16(p).to_le_bytes());
        } else {
            for (i, d) in data.iter_mut().enumerate() {
                *d = self.io_read(p.wrapping_add(i as u16));
            }
        }
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        let p = port.port();
        if let [lo, hi] = *data {
            self.io_write16(p, u16::from_le_bytes([lo, hi]));
        } else {
            for (i, &d) in data.iter().enumerate() {
                self.io_write(p.wrapping_add(i as u16), d);
            }
        }
        IoOutcome::Done
    }
}

impl Mmio for Vga {
    fn mmio_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        addr: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        // Claimed as the legacy window for now (see docs/ARCHITECTURE.md).
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.window_read(addr.gpa().wrapping_sub(WINDOW_BASE).wrapping_add(i as u64));
        }
        IoOutcome::Done
    }

    fn mmio_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        addr: MmioAddress,
        data: &[u8],
    ) -> IoOutcome {
        for (i, &d) in data.iter().enumerate() {
            self.window_write(
                addr.gpa().wrapping_sub(WINDOW_BASE).wrapping_add(i as u64),
                d,
            );
        }
        IoOutcome::Done
    }
}

impl Device for Vga {
    fn name(&self) -> &str {
        "vga"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        Some(self)
    }
    fn reset(&mut self) {
        let size = self.mem.bytes.len();
        *self = Self::new(size);
    }
}
