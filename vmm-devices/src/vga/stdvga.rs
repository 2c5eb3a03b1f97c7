//! The VGA adapter as a PCI function, QEMU's "stdvga" (1234:1111, class
//! 03 00 00): BAR0 the linear framebuffer (prefetchable memory, the size of
//! video memory), BAR2 the 4 KiB MMIO register block, the expansion ROM
//! BAR with the VGA BIOS (SeaBIOS's `vgabios-stdvga.bin`), and the legacy
//! ports 0x3b0-0x3df, 0x1ce/0x1cf and the 0xa0000-0xbffff window, which
//! it decodes always, as QEMU's does.
//!
//! Video memory is a device block of the VM's memory map
//! (`GuestMemory::add_device_block`), so the guest reads and writes it as
//! RAM without exits wherever it is plain memory: at BAR0, and in the
//! legacy window when [`Vga::window_mapping`] says the current mode maps
//! it linearly (chain-4, VBE banks). The function asks the VM to remap
//! (`VmRequest::MapMemory`) when the guest moves a BAR or the mode
//! changes. A plain text mode maps the window to the text shadow after
//! video memory ([`super::TEXT_SHADOW_LEN`], a byte of the window for a
//! byte, moved to and from planes 0 and 1 when the mode changes), so
//! text output does not exit either; nor do a planar mode's plain writes
//! to a single plane (the VGA BIOS's font loads), which have a copy of
//! that plane in the same shadow. Only register I/O and the other
//! planar-mode window accesses exit, and those reach the same bytes
//! through `DmaGuard::device_memory`.
//! The ROM is a ROM block mapped read-only at the ROM BAR while it is
//! enabled, so the BIOS copies it without exits.

use super::render::Display;
use super::saved::{VgaState, VGA_STATE_VERSION};
use super::{
    Vga, WindowMapping, MMIO_BAR_SIZE, PCI_CLASS, PCI_DEVICE, PCI_VENDOR, VBE_PORT_INDEX,
    VGA_PORTS_COUNT, VGA_PORTS_FIRST, WINDOW_BASE,
};
use crate::pci::{
    Bar, BarKind, ConfigError, ConfigSpace, PciFunction, PciIds, PciRegion, RegionId, Space,
};
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::{self, SaveRestore, StateError};
use vmm_core::device::{DeviceContext, VmRequest};
use vmm_core::memory::{Backing, BlockId};

/// Where QEMU's PC puts its first display: device 2, function 0.
pub const STDVGA_SLOT: (u8, u8) = (2, 0);
/// The legacy register ports' fixed region.
const REGION_VGA_PORTS: RegionId = RegionId::Fixed(0);
/// The VBE index/data ports' fixed region.
const REGION_VBE_PORTS: RegionId = RegionId::Fixed(1);
/// The legacy memory window's fixed region.
const REGION_WINDOW: RegionId = RegionId::Fixed(2);
/// The linear framebuffer BAR.
const BAR_LFB: u8 = 0;
/// The MMIO register BAR.
const BAR_MMIO: u8 = 2;
/// Length of the legacy window.
const WINDOW_LEN: u64 = 0x2_0000;

/// The option ROM: a ROM block of the VM's memory map holding the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionRom {
    /// The block.
    pub block: BlockId,
    /// Its size: a power of two of at least 2 KiB (the ROM BAR's size).
    pub size: u64,
}

/// The stdvga PCI function.
pub struct StdVga {
    config: ConfigSpace,
    vga: Vga,
    vram: BlockId,
    rom: Option<OptionRom>,
    /// The BAR0 and ROM ranges mapped as memory now: (region, base, len).
    mapped: Vec<(RegionId, u64, u64)>,
    /// What the legacy window is mapped as now (`Emulated`: MMIO, every
    /// access exits to this function).
    window: WindowMapping,
}

impl core::fmt::Debug for StdVga {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StdVga")
            .field("vram", &self.vram)
            .field("vram_size", &self.vga.vram_size())
            .field("rom", &self.rom)
            .field("mapped", &self.mapped)
            .field("window", &self.window)
            .finish()
    }
}

/// Saved state of a [`StdVga`], version [`STDVGA_STATE_VERSION`].
#[derive(Serialize, Deserialize)]
struct StdVgaState {
    config: Vec<u8>,
    vga_version: u32,
    vga: VgaState,
}

/// Format version of the [`StdVga`]'s saved state.
pub const STDVGA_STATE_VERSION: u32 = 1;

impl StdVga {
    /// The function for the device memory `vram` (a device block of
    /// `vram_size` bytes of video memory, a power of two of at least 256
    /// KiB, then [`super::TEXT_SHADOW_LEN`] bytes of text shadow) and the
    /// option ROM `rom`, if any.
    pub fn new(
        vram: BlockId,
        vram_size: usize,
        rom: Option<OptionRom>,
    ) -> Result<Self, ConfigError> {
        let vga = Vga::new(vram_size);
        let mut config = ConfigSpace::new(PciIds {
            vendor: PCI_VENDOR,
            device: PCI_DEVICE,
            revision: 2,
            class: (
                (PCI_CLASS >> 16) as u8,
                (PCI_CLASS >> 8) as u8,
                PCI_CLASS as u8,
            ),
            // QEMU's subsystem IDs for its emulated devices.
            subsystem: (0x1af4, 0x1100),
        });
        config.set_bar(
            usize::from(BAR_LFB),
            Bar {
                kind: BarKind::Memory32 { prefetchable: true },
                size: (vga.vram_size() as u64).next_power_of_two(),
            },
        )?;
        config.set_bar(
            usize::from(BAR_MMIO),
            Bar {
                kind: BarKind::Memory32 {
                    prefetchable: false,
                },
                size: MMIO_BAR_SIZE,
            },
        )?;
        if let Some(r) = rom {
            config.set_rom(r.size)?;
        }
        Ok(Self {
            config,
            vga,
            vram,
            rom,
            mapped: Vec::new(),
            window: WindowMapping::Emulated,
        })
    }

    /// The adapter's state.
    pub fn vga(&self) -> &Vga {
        &self.vga
    }

    /// The video memory block (for a host that draws the screen).
    pub fn vram_block(&self) -> BlockId {
        self.vram
    }

    /// What the screen shows, drawn from `vram` (the bytes of
    /// [`StdVga::vram_block`]).
    pub fn render(&self, vram: &[u8]) -> Display {
        self.vga.render(vram)
    }

    /// What the screen shows as pixels (see [`Vga::render_pixels`]).
    pub fn render_pixels(&self, vram: &[u8]) -> Option<super::render::Framebuffer> {
        self.vga.render_pixels(vram)
    }

    /// Move the legacy window's mapping to what the mode calls for.
    fn sync_window(&mut self, ctx: &mut DeviceContext<'_>) {
        if let Some(vram) = ctx.dma.device_memory(self.vram) {
            self.vga.sync_text_shadow(vram);
        }
        let mut want = self.vga.window_mapping();
        if let WindowMapping::Linear {
            len, vram_offset, ..
        } = want
        {
            let fits = (vram_offset as u64)
                .checked_add(len)
                .is_some_and(|end| end <= self.vga.memory_size() as u64);
            if !fits {
                want = WindowMapping::Emulated;
            }
        }
        if want == self.window {
            return;
        }
        if let WindowMapping::Linear { gpa, len, .. } = self.window {
            ctx.request(VmRequest::MapMemory {
                gpa,
                len,
                read: Backing::Mmio,
                write: Backing::Mmio,
            });
        }
        if let WindowMapping::Linear {
            gpa,
            len,
            vram_offset,
        } = want
        {
            let at = Backing::Block {
                block: self.vram,
                offset: vram_offset as u64,
            };
            ctx.request(VmRequest::MapMemory {
                gpa,
                len,
                read: at,
                write: at,
            });
        }
        self.window = want;
    }

    /// Put every range this function mapped as memory back to MMIO (before
    /// the bus moves its claims wholesale, after a restore).
    fn unmap_all(&mut self, ctx: &mut DeviceContext<'_>) {
        for (_, base, len) in core::mem::take(&mut self.mapped) {
            ctx.request(VmRequest::MapMemory {
                gpa: base,
                len,
                read: Backing::Mmio,
                write: Backing::Mmio,
            });
        }
        if let WindowMapping::Linear { gpa, len, .. } = self.window {
            ctx.request(VmRequest::MapMemory {
                gpa,
                len,
                read: Backing::Mmio,
                write: Backing::Mmio,
            });
        }
        self.window = WindowMapping::Emulated;
    }

    fn port(region: RegionId, offset: u64) -> Option<u16> {
        let base = match region {
            REGION_VGA_PORTS => VGA_PORTS_FIRST,
            REGION_VBE_PORTS => VBE_PORT_INDEX,
            _ => return None,
        };
        u16::try_from(offset).ok().map(|o| base.wrapping_add(o))
    }
}

impl SaveRestore for StdVga {
    fn state_version(&self) -> u32 {
        STDVGA_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&StdVgaState {
            config: self.config.save_bytes(),
            vga_version: super::saved::VGA_STATE_VERSION,
            vga: self.vga.save(),
        })
    }

    /// Video memory is guest memory and comes back with it; the mappings
    /// are made again when the bus re-establishes this function's claims.
    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: StdVgaState = save_restore::decode_version(version, STDVGA_STATE_VERSION, bytes)?;
        if s.vga_version != VGA_STATE_VERSION {
            return Err(StateError::Mismatch {
                what: "vga state version",
            });
        }
        let mut config = self.config.clone();
        config.restore_bytes(&s.config)?;
        let mut vga = self.vga.clone();
        vga.restore(&s.vga)?;
        self.unmap_all(ctx);
        self.config = config;
        self.vga = vga;
        Ok(())
    }
}

impl PciFunction for StdVga {
    fn name(&self) -> &str {
        "stdvga"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }

    fn decoded_regions(&self, out: &mut Vec<PciRegion>) {
        self.config.decoded_bars(out);
        out.push(PciRegion {
            id: REGION_VGA_PORTS,
            space: Space::Io,
            base: u64::from(VGA_PORTS_FIRST),
            len: u64::from(VGA_PORTS_COUNT),
        });
        out.push(PciRegion {
            id: REGION_VBE_PORTS,
            space: Space::Io,
            base: u64::from(VBE_PORT_INDEX),
            len: 2,
        });
        out.push(PciRegion {
            id: REGION_WINDOW,
            space: Space::Memory,
            base: WINDOW_BASE,
            len: WINDOW_LEN,
        });
    }

    fn regions_changed(&mut self, ctx: &mut DeviceContext<'_>, regions: &[PciRegion]) {
        let want: Vec<(RegionId, u64, u64)> = regions
            .iter()
            .filter(|r| {
                r.id == RegionId::Bar(BAR_LFB) || (r.id == RegionId::Rom && self.rom.is_some())
            })
            // BAR0 is a power of two at least as large as video memory;
            // only video memory is mapped, the rest stays MMIO.
            .map(|r| match r.id {
                RegionId::Rom => (r.id, r.base, r.len),
                _ => (r.id, r.base, r.len.min(self.vga.vram_size() as u64)),
            })
            .collect();
        for &(id, base, len) in &self.mapped {
            if !want.contains(&(id, base, len)) {
                ctx.request(VmRequest::MapMemory {
                    gpa: base,
                    len,
                    read: Backing::Mmio,
                    write: Backing::Mmio,
                });
            }
        }
        for &(id, base, len) in &want {
            if self.mapped.contains(&(id, base, len)) {
                continue;
            }
            let (read, write) = match (id, self.rom) {
                (RegionId::Rom, Some(rom)) => (
                    Backing::Block {
                        block: rom.block,
                        offset: 0,
                    },
                    Backing::Nothing,
                ),
                _ => {
                    let at = Backing::Block {
                        block: self.vram,
                        offset: 0,
                    };
                    (at, at)
                }
            };
            ctx.request(VmRequest::MapMemory {
                gpa: base,
                len,
                read,
                write,
            });
        }
        self.mapped = want;
        if regions.iter().any(|r| r.id == REGION_WINDOW) {
            self.sync_window(ctx);
        }
    }

    fn power_on(&mut self, ctx: &mut DeviceContext<'_>) {
        self.sync_window(ctx);
    }

    fn io_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &mut [u8],
    ) {
        let Some(port) = Self::port(region, offset) else {
            data.fill(0xff);
            return;
        };
        if data.len() == 2 {
            data.copy_from_slice(&self.vga.io_read16(port).to_le_bytes());
        } else {
            for (i, d) in data.iter_mut().enumerate() {
                *d = self.vga.io_read(port.wrapping_add(i as u16));
            }
        }
    }

    fn io_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &[u8],
    ) {
        let Some(port) = Self::port(region, offset) else {
            return;
        };
        let vram = ctx.dma.device_memory(self.vram).unwrap_or_default();
        if let [lo, hi] = *data {
            self.vga
                .io_write16(vram, port, u16::from_le_bytes([lo, hi]));
        } else {
            for (i, &d) in data.iter().enumerate() {
                self.vga.io_write(vram, port.wrapping_add(i as u16), d);
            }
        }
        self.sync_window(ctx);
    }

    fn mmio_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &mut [u8],
    ) {
        match region {
            REGION_WINDOW => {
                let vram = ctx.dma.device_memory(self.vram).unwrap_or_default();
                for (i, d) in data.iter_mut().enumerate() {
                    *d = self.vga.window_read(vram, offset.wrapping_add(i as u64));
                }
            }
            RegionId::Bar(BAR_MMIO) => self.vga.mmio_read(offset, data),
            RegionId::Bar(BAR_LFB) => {
                // Past video memory (BAR0 is rounded up to a power of two)
                // or before the mapping is in place.
                let vram = ctx.dma.device_memory(self.vram).unwrap_or_default();
                let end = self.vga.vram_size().min(vram.len());
                let vram = &vram[..end];
                for (i, d) in data.iter_mut().enumerate() {
                    *d = offset
                        .checked_add(i as u64)
                        .and_then(|o| usize::try_from(o).ok())
                        .and_then(|o| vram.get(o))
                        .copied()
                        .unwrap_or(0xff);
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn mmio_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &[u8],
    ) {
        let vram = ctx.dma.device_memory(self.vram).unwrap_or_default();
        match region {
            REGION_WINDOW => {
                for (i, &d) in data.iter().enumerate() {
                    self.vga
                        .window_write(vram, offset.wrapping_add(i as u64), d);
                }
            }
            RegionId::Bar(BAR_MMIO) => {
                self.vga.mmio_write(vram, offset, data);
                self.sync_window(ctx);
            }
            RegionId::Bar(BAR_LFB) => {
                let end = self.vga.vram_size().min(vram.len());
                let vram = &mut vram[..end];
                for (i, &d) in data.iter().enumerate() {
                    if let Some(b) = offset
                        .checked_add(i as u64)
                        .and_then(|o| usize::try_from(o).ok())
                        .and_then(|o| vram.get_mut(o))
                    {
                        *b = d;
                    }
                }
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        // The mappings stay as they are until the bus's power-on call
        // (window) and claim changes (BAR0, ROM) move them.
        self.config.reset();
        self.vga.reset();
    }
}
