//! What a person sees: the device state turned into a text screen or an
//! RGB picture, independent of any host, and the trait a host implements
//! to receive it.

use super::memory::plane_byte;
use super::regs::Registers;
use super::vbe::Vbe;
use alloc::vec::Vec;

/// Largest picture rendered (width or height), bounding the work a
/// hostile register setting can cause.
pub const MAX_DIMENSION: usize = 4096;

/// One character cell of a text screen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    /// The code-page-437 character.
    pub ch: u8,
    /// The attribute: foreground in bits 0-3, background (or blink) in 4-7.
    pub attr: u8,
}

/// A text-mode screen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextScreen {
    /// Columns.
    pub cols: usize,
    /// Rows.
    pub rows: usize,
    /// `cols * rows` cells, row by row.
    pub cells: Vec<Cell>,
    /// The cursor's (column, row), if it is shown and on screen.
    pub cursor: Option<(usize, usize)>,
}

impl TextScreen {
    /// The cell at column `x`, row `y`.
    pub fn cell(&self, x: usize, y: usize) -> Option<Cell> {
        if x >= self.cols {
            return None;
        }
        self.cells
            .get(y.checked_mul(self.cols)?.checked_add(x)?)
            .copied()
    }

    /// Row `y` as text (characters only).
    pub fn row_text(&self, y: usize) -> alloc::string::String {
        (0..self.cols)
            .filter_map(|x| self.cell(x, y))
            .map(|c| char::from(c.ch))
            .collect()
    }
}

/// An RGB picture.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Framebuffer {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` pixels as 0x00RRGGBB, row by row.
    pub pixels: Vec<u32>,
}

impl Framebuffer {
    /// The pixel at (`x`, `y`).
    pub fn pixel(&self, x: usize, y: usize) -> Option<u32> {
        if x >= self.width {
            return None;
        }
        self.pixels
            .get(y.checked_mul(self.width)?.checked_add(x)?)
            .copied()
    }
}

/// What the adapter shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Display {
    /// Nothing (screen disabled or a mode this renderer does not draw).
    Blank,
    /// A text mode.
    Text(TextScreen),
    /// A graphics mode.
    Graphics(Framebuffer),
}

/// A host's display: receives what the adapter shows.
pub trait DisplayBackend {
    /// The guest shows `display`.
    fn update(&mut self, display: &Display);
}

/// Render the current state.
pub fn render(regs: &Registers, vbe: &Vbe, vram: &[u8]) -> Display {
    if vbe.enabled() {
        return render_vbe(regs, vbe, vram);
    }
    if !regs.screen_enabled() || regs.seq[1] & 0x20 != 0 {
        return Display::Blank;
    }
    if regs.graphics_mode() {
        render_planar(regs, vram)
    } else {
        render_text(regs, vram)
    }
}

fn render_text(regs: &Registers, vram: &[u8]) -> Display {
    let cols = regs.display_columns().min(MAX_DIMENSION);
    let rows = (regs.display_lines() / regs.scan_lines_per_row()).min(MAX_DIMENSION);
    let start = regs.start_address();
    let mut cells = Vec::with_capacity(cols * rows);
    for i in 0..cols * rows {
        // Word mode: character address n is at plane offset 2n.
        let at = (start + i) * 2;
        cells.push(Cell {
            ch: plane_byte(vram, 0, at),
            attr: plane_byte(vram, 1, at),
        });
    }
    let cursor_at = usize::from(regs.crtc[0x0e]) << 8 | usize::from(regs.crtc[0x0f]);
    let cursor = if regs.crtc[0x0a] & 0x20 != 0 || cols == 0 {
        None
    } else {
        cursor_at
            .checked_sub(start)
            .filter(|&c| c < cols * rows)
            .map(|c| (c % cols, c / cols))
    };
    Display::Text(TextScreen {
        cols,
        rows,
        cells,
        cursor,
    })
}

fn render_planar(regs: &Registers, vram: &[u8]) -> Display {
    let height = (regs.display_lines() / regs.scan_lines_per_row()).min(MAX_DIMENSION);
    let start = regs.start_address();
    let mut pixels = Vec::new();
    if regs.gr[5] & 0x40 != 0 {
        // 256 colours: one byte a pixel, chain-4 (dword addressing).
        let width = (regs.display_columns() * 4).min(MAX_DIMENSION);
        let line = usize::from(regs.crtc[0x13]) * 8;
        pixels.reserve(width * height);
        for y in 0..height {
            for x in 0..width {
                let a = start * 4 + y * line + x;
                let idx = vram.get(a).copied().unwrap_or(0);
                pixels.push(regs.dac_rgb(idx, false));
            }
        }
        return Display::Graphics(Framebuffer {
            width,
            height,
            pixels,
        });
    }
    // 16 colours: one bit a pixel in each plane.
    let width = (regs.display_columns() * 8).min(MAX_DIMENSION);
    let line = usize::from(regs.crtc[0x13]) * 2;
    let planes = regs.ar[0x12] & 0x0f;
    pixels.reserve(width * height);
    for y in 0..height {
        for x in 0..width {
            let a = start + y * line + x / 8;
            let bit = 7 - (x & 7);
            let mut c = 0u8;
            for p in 0..4 {
                if planes & (1 << p) != 0 && (plane_byte(vram, p, a) >> bit) & 1 != 0 {
                    c |= 1 << p;
                }
            }
            pixels.push(regs.dac_rgb(regs.palette_to_dac(c), false));
        }
    }
    Display::Graphics(Framebuffer {
        width,
        height,
        pixels,
    })
}

fn render_vbe(regs: &Registers, vbe: &Vbe, vram: &[u8]) -> Display {
    let width = vbe.xres().min(MAX_DIMENSION);
    let height = vbe.yres().min(MAX_DIMENSION);
    let bpp = vbe.bpp();
    if !matches!(bpp, 8 | 15 | 16 | 24 | 32) {
        return Display::Blank;
    }
    let bytes = usize::from(bpp).div_ceil(8);
    let mut pixels = Vec::with_capacity(width * height);
    let b = |a: usize| u32::from(vram.get(a).copied().unwrap_or(0));
    for y in 0..height {
        for x in 0..width {
            let a = vbe.start + y * vbe.line_bytes + x * bytes;
            let rgb = match bpp {
                8 => regs.dac_rgb(vram.get(a).copied().unwrap_or(0), vbe.dac8()),
                15 | 16 => {
                    let v = b(a) | b(a + 1) << 8;
                    let (r, g, bl) = if bpp == 15 {
                        ((v >> 10) & 0x1f, (v >> 5) & 0x1f, v & 0x1f)
                    } else {
                        ((v >> 11) & 0x1f, (v >> 5) & 0x3f, v & 0x1f)
                    };
                    let g8 = if bpp == 15 {
                        (g << 3) | (g >> 2)
                    } else {
                        (g << 2) | (g >> 4)
                    };
                    ((r << 3) | (r >> 2)) << 16 | g8 << 8 | ((bl << 3) | (bl >> 2))
                }
                _ => b(a + 2) << 16 | b(a + 1) << 8 | b(a),
            };
            pixels.push(rgb);
        }
    }
    Display::Graphics(Framebuffer {
        width,
        height,
        pixels,
    })
}
