//! What a person sees: the device state turned into a text screen or an
//! RGB picture, independent of any host, and the trait a host implements
//! to receive it.

use super::memory::{plane_byte, TEXT_SHADOW_LEN};
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

    /// Row `y` as text (characters only): NUL (cleared memory) shows as a
    /// blank, the other control codes as `.`, bytes from 0x80 as the
    /// Latin-1 character of that number.
    pub fn row_text(&self, y: usize) -> alloc::string::String {
        (0..self.cols)
            .filter_map(|x| self.cell(x, y))
            .map(|c| match c.ch {
                0 => ' ',
                1..=0x1f | 0x7f => '.',
                ch => char::from(ch),
            })
            .collect()
    }

    /// Every row as text (see [`TextScreen::row_text`]).
    pub fn lines(&self) -> Vec<alloc::string::String> {
        (0..self.rows).map(|y| self.row_text(y)).collect()
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

/// Where a text mode's characters and attributes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextSource {
    /// Planes 0 and 1 of video memory.
    Planes,
    /// The text shadow at this offset: byte `2n` character `n`, `2n + 1`
    /// its attribute.
    Shadow(usize),
}

/// Video memory as the renderer reads it: the planes, with one plane's
/// first [`TEXT_SHADOW_LEN`] bytes in the shadow while a planar mode has
/// the window served from there (see [`super::Shadow::Plane`]).
#[derive(Clone, Copy, Debug)]
pub struct VideoMemory<'a> {
    /// Device memory: video memory, then the shadow.
    pub vram: &'a [u8],
    /// The plane held in the shadow, and where the shadow starts.
    pub plane_shadow: Option<(usize, usize)>,
}

impl<'a> VideoMemory<'a> {
    /// Video memory with no plane in the shadow.
    pub fn planes(vram: &'a [u8]) -> Self {
        Self {
            vram,
            plane_shadow: None,
        }
    }

    /// Byte `i` of plane `p`, or 0 past the end.
    pub fn plane_byte(&self, p: usize, i: usize) -> u8 {
        match self.plane_shadow {
            Some((plane, base)) if plane == p & 3 && i < TEXT_SHADOW_LEN => {
                self.vram.get(base + i).copied().unwrap_or(0)
            }
            _ => plane_byte(self.vram, p, i),
        }
    }

    /// Byte `a` of interleaved video memory (plane `a % 4`, byte `a / 4`).
    pub fn byte(&self, a: usize) -> u8 {
        match self.plane_shadow {
            Some((plane, _)) if a & 3 == plane && a / 4 < TEXT_SHADOW_LEN => {
                self.plane_byte(plane, a / 4)
            }
            _ => self.vram.get(a).copied().unwrap_or(0),
        }
    }
}

/// Render the current state.
pub fn render(regs: &Registers, vbe: &Vbe, mem: &VideoMemory<'_>, text: TextSource) -> Display {
    if vbe.enabled() {
        return render_vbe(regs, vbe, mem.vram);
    }
    if !regs.screen_enabled() || regs.seq[1] & 0x20 != 0 {
        return Display::Blank;
    }
    if regs.graphics_mode() {
        render_planar(regs, mem)
    } else {
        render_text(regs, mem, text)
    }
}

fn render_text(regs: &Registers, mem: &VideoMemory<'_>, text: TextSource) -> Display {
    let cols = regs.display_columns().min(MAX_DIMENSION);
    let rows = (regs.display_lines() / regs.scan_lines_per_row()).min(MAX_DIMENSION);
    let start = regs.start_address();
    let mut cells = Vec::with_capacity(cols * rows);
    for i in 0..cols * rows {
        // Word mode: character address n is at plane offset 2n.
        let at = (start + i) * 2;
        cells.push(match text {
            TextSource::Planes => Cell {
                ch: mem.plane_byte(0, at),
                attr: mem.plane_byte(1, at),
            },
            TextSource::Shadow(base) => {
                let b = |o: usize| mem.vram.get(base + at + o).copied().unwrap_or(0);
                Cell {
                    ch: b(0),
                    attr: b(1),
                }
            }
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

fn render_planar(regs: &Registers, mem: &VideoMemory<'_>) -> Display {
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
                let idx = mem.byte(a);
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
                if planes & (1 << p) != 0 && (mem.plane_byte(p, a) >> bit) & 1 != 0 {
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

/// Font memory offset (in plane 2) of character map `n` (0-7), as the
/// sequencer's character map select numbers them.
fn font_map_offset(n: u8) -> usize {
    usize::from(n & 3) * 0x4000 + usize::from((n >> 2) & 1) * 0x2000
}

/// A text screen drawn as pixels with the font the guest loaded into plane
/// 2 (the VGA BIOS loads one at every text mode set): 9- or 8-dot cells
/// (sequencer register 1 bit 0), the character height of CRTC register 9,
/// colours through the attribute palette and the DAC, the cursor as the
/// scan lines of CRTC registers 0x0a/0x0b. What a monitor would show, for
/// screenshots.
pub fn text_pixels(regs: &Registers, mem: &VideoMemory<'_>, screen: &TextScreen) -> Framebuffer {
    let cell_w = if regs.seq[1] & 1 != 0 { 8 } else { 9 };
    let cell_h = (usize::from(regs.crtc[9] & 0x1f) + 1).min(32);
    let cols = screen.cols.min(MAX_DIMENSION / cell_w);
    let rows = screen.rows.min(MAX_DIMENSION / cell_h);
    let (width, height) = (cols * cell_w, rows * cell_h);
    let mut pixels = alloc::vec![0u32; width * height];
    let map_a = ((regs.seq[3] >> 2) & 3) | ((regs.seq[3] >> 3) & 4);
    let map_b = (regs.seq[3] & 3) | ((regs.seq[3] >> 2) & 4);
    let blink = regs.ar[0x10] & 0x08 != 0;
    let line_graphics = regs.ar[0x10] & 0x04 != 0;
    let colour = |c: u8| regs.dac_rgb(regs.palette_to_dac(c), false);
    let cursor_lines = (
        usize::from(regs.crtc[0x0a] & 0x1f),
        usize::from(regs.crtc[0x0b] & 0x1f),
    );
    for y in 0..rows {
        for x in 0..cols {
            let Some(cell) = screen.cell(x, y) else {
                continue;
            };
            let fg = colour(cell.attr & 0x0f);
            let bg = colour(if blink {
                (cell.attr >> 4) & 7
            } else {
                cell.attr >> 4
            });
            let map = if cell.attr & 0x08 != 0 { map_a } else { map_b };
            let glyph = font_map_offset(map) + usize::from(cell.ch) * 32;
            let is_cursor = screen.cursor == Some((x, y));
            for line in 0..cell_h {
                let bits = mem.plane_byte(2, glyph + line);
                let cursor_here = is_cursor && line >= cursor_lines.0 && line <= cursor_lines.1;
                for dot in 0..cell_w {
                    let on = if dot < 8 {
                        bits & (0x80 >> dot) != 0
                    } else {
                        line_graphics && (0xc0..=0xdf).contains(&cell.ch) && bits & 1 != 0
                    };
                    let at = (y * cell_h + line) * width + x * cell_w + dot;
                    if let Some(p) = pixels.get_mut(at) {
                        *p = if on || cursor_here { fg } else { bg };
                    }
                }
            }
        }
    }
    Framebuffer {
        width,
        height,
        pixels,
    }
}
