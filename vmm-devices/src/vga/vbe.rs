//! The Bochs VBE ("dispi") interface: an index port (0x1ce) and a 16-bit
//! data port (0x1cf), also reachable through the MMIO BAR at 0x500. It
//! sets linear modes directly, without the VGA registers.

/// Index of the ID register.
pub const INDEX_ID: u16 = 0;
/// Horizontal resolution.
pub const INDEX_XRES: u16 = 1;
/// Vertical resolution.
pub const INDEX_YRES: u16 = 2;
/// Bits per pixel.
pub const INDEX_BPP: u16 = 3;
/// Enable flags ([`ENABLED`], [`GETCAPS`], [`DAC8`], [`LFB`], [`NOCLEAR`]).
pub const INDEX_ENABLE: u16 = 4;
/// 64 KiB bank shown in the 0xa0000 window.
pub const INDEX_BANK: u16 = 5;
/// Virtual (line) width in pixels.
pub const INDEX_VIRT_WIDTH: u16 = 6;
/// Virtual height in lines.
pub const INDEX_VIRT_HEIGHT: u16 = 7;
/// Horizontal panning offset.
pub const INDEX_X_OFFSET: u16 = 8;
/// Vertical panning offset.
pub const INDEX_Y_OFFSET: u16 = 9;
/// Video memory size in 64 KiB units (read only).
pub const INDEX_VIDEO_MEMORY_64K: u16 = 10;
/// Number of registers.
pub const REGISTER_COUNT: usize = 11;

/// The lowest ID a guest may select.
pub const ID0: u16 = 0xb0c0;
/// The highest ID this interface implements.
pub const ID5: u16 = 0xb0c5;

/// Enable flag: the VBE mode is on.
pub const ENABLED: u16 = 0x01;
/// Enable flag: reads of xres/yres/bpp return the maxima.
pub const GETCAPS: u16 = 0x02;
/// Enable flag: the DAC takes 8-bit components.
pub const DAC8: u16 = 0x20;
/// Enable flag: the linear framebuffer is used (not banks).
pub const LFB: u16 = 0x40;
/// Enable flag: do not clear video memory on enabling.
pub const NOCLEAR: u16 = 0x80;

/// Largest horizontal resolution accepted.
pub const MAX_XRES: u16 = 2560;
/// Largest vertical resolution accepted.
pub const MAX_YRES: u16 = 1600;
/// Largest depth.
pub const MAX_BPP: u16 = 32;

/// The dispi register state.
#[derive(Clone, Debug)]
pub struct Vbe {
    /// Register selected by the index port.
    pub index: u16,
    /// The registers, indexed by the `INDEX_*` constants.
    pub regs: [u16; REGISTER_COUNT],
    /// Bytes a line takes in the current mode.
    pub line_bytes: usize,
    /// Byte offset of the shown picture (panning) in video memory.
    pub start: usize,
    vram_size: usize,
}

/// What a data-port write asks the device to do beyond storing a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VbeEffect {
    /// Nothing more.
    None,
    /// The mode was enabled without [`NOCLEAR`]: clear video memory.
    ClearMemory,
}

impl Vbe {
    /// Power-on state for `vram_size` bytes of video memory.
    pub fn new(vram_size: usize) -> Self {
        let mut regs = [0; REGISTER_COUNT];
        regs[usize::from(INDEX_ID)] = ID5;
        regs[usize::from(INDEX_VIDEO_MEMORY_64K)] =
            u16::try_from(vram_size / 65536).unwrap_or(u16::MAX);
        Self {
            index: 0,
            regs,
            line_bytes: 0,
            start: 0,
            vram_size,
        }
    }

    /// The state [`Vbe`] had with `regs` and `index`, if a guest could
    /// have left them so (resolutions, depth and bank within what the
    /// interface accepts for `vram_size`).
    pub fn restored(vram_size: usize, index: u16, regs: [u16; REGISTER_COUNT]) -> Option<Self> {
        let fresh = Self::new(vram_size);
        let ok = (ID0..=ID5).contains(&regs[usize::from(INDEX_ID)])
            && regs[usize::from(INDEX_XRES)] <= MAX_XRES
            && regs[usize::from(INDEX_YRES)] <= MAX_YRES
            && matches!(regs[usize::from(INDEX_BPP)], 0 | 4 | 8 | 15 | 16 | 24 | 32)
            && usize::from(regs[usize::from(INDEX_BANK)]) < (vram_size / 65536).max(1)
            && regs[usize::from(INDEX_VIDEO_MEMORY_64K)]
                == fresh.regs[usize::from(INDEX_VIDEO_MEMORY_64K)];
        if !ok {
            return None;
        }
        let mut v = Self {
            index,
            regs,
            ..fresh
        };
        v.update_geometry();
        Some(v)
    }

    fn reg(&self, i: u16) -> u16 {
        self.regs.get(usize::from(i)).copied().unwrap_or(0)
    }

    /// The mode is on.
    pub fn enabled(&self) -> bool {
        self.reg(INDEX_ENABLE) & ENABLED != 0
    }

    /// The linear framebuffer (not banking) is in use.
    pub fn lfb(&self) -> bool {
        self.reg(INDEX_ENABLE) & LFB != 0
    }

    /// The DAC takes 8-bit components.
    pub fn dac8(&self) -> bool {
        self.reg(INDEX_ENABLE) & DAC8 != 0
    }

    /// Horizontal resolution.
    pub fn xres(&self) -> usize {
        usize::from(self.reg(INDEX_XRES))
    }

    /// Vertical resolution.
    pub fn yres(&self) -> usize {
        usize::from(self.reg(INDEX_YRES))
    }

    /// Bits per pixel (8, 15, 16, 24 or 32; 4 is accepted but not drawn).
    pub fn bpp(&self) -> u16 {
        self.reg(INDEX_BPP)
    }

    /// Byte offset of the 64 KiB bank shown in the legacy window.
    pub fn bank_offset(&self) -> usize {
        usize::from(self.reg(INDEX_BANK)) * 65536
    }

    /// Read the data port.
    pub fn read_data(&self) -> u16 {
        let getcaps = self.reg(INDEX_ENABLE) & GETCAPS != 0;
        match self.index {
            INDEX_XRES if getcaps => MAX_XRES,
            INDEX_YRES if getcaps => MAX_YRES,
            INDEX_BPP if getcaps => MAX_BPP,
            i => self.reg(i),
        }
    }

    /// Write the data port.
    pub fn write_data(&mut self, v: u16) -> VbeEffect {
        let mut effect = VbeEffect::None;
        match self.index {
            INDEX_ID if (ID0..=ID5).contains(&v) => self.regs[usize::from(INDEX_ID)] = v,
            INDEX_ID => {}
            INDEX_XRES | INDEX_YRES | INDEX_BPP if self.enabled() => {
                // Changing the geometry needs the mode off first.
            }
            INDEX_XRES => self.regs[usize::from(INDEX_XRES)] = v.min(MAX_XRES) & !7,
            INDEX_YRES => self.regs[usize::from(INDEX_YRES)] = v.min(MAX_YRES),
            INDEX_BPP => {
                let bpp = if v == 0 { 8 } else { v };
                if matches!(bpp, 4 | 8 | 15 | 16 | 24 | 32) {
                    self.regs[usize::from(INDEX_BPP)] = bpp;
                }
            }
            INDEX_BANK => {
                let banks = self.vram_size / 65536;
                if usize::from(v) < banks {
                    self.regs[usize::from(INDEX_BANK)] = v;
                }
            }
            INDEX_ENABLE => {
                let was = self.enabled();
                self.regs[usize::from(INDEX_ENABLE)] = v;
                if v & ENABLED != 0 && !was {
                    let x = self.reg(INDEX_XRES);
                    self.regs[usize::from(INDEX_VIRT_WIDTH)] = x;
                    self.regs[usize::from(INDEX_X_OFFSET)] = 0;
                    self.regs[usize::from(INDEX_Y_OFFSET)] = 0;
                    self.update_geometry();
                    if v & NOCLEAR == 0 {
                        effect = VbeEffect::ClearMemory;
                    }
                }
                self.regs[usize::from(INDEX_BANK)] = 0;
            }
            INDEX_VIRT_WIDTH | INDEX_X_OFFSET | INDEX_Y_OFFSET => {
                self.regs[usize::from(self.index)] = v;
                self.update_geometry();
            }
            _ => {}
        }
        effect
    }

    fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bpp()).div_ceil(8)
    }

    /// Recompute line length, virtual height and start after a change,
    /// keeping the picture inside video memory.
    fn update_geometry(&mut self) {
        let bpp = self.bytes_per_pixel().max(1);
        let mut width = usize::from(self.reg(INDEX_VIRT_WIDTH)).max(self.xres());
        if width * bpp > self.vram_size {
            width = self.xres();
        }
        self.regs[usize::from(INDEX_VIRT_WIDTH)] = u16::try_from(width).unwrap_or(u16::MAX);
        self.line_bytes = width * bpp;
        let vheight = self.vram_size.checked_div(self.line_bytes).unwrap_or(0);
        self.regs[usize::from(INDEX_VIRT_HEIGHT)] = u16::try_from(vheight).unwrap_or(u16::MAX);
        let x = usize::from(self.reg(INDEX_X_OFFSET));
        let y = usize::from(self.reg(INDEX_Y_OFFSET));
        self.start = y
            .saturating_mul(self.line_bytes)
            .saturating_add(x.saturating_mul(bpp));
    }
}
