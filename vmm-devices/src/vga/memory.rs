//! Video memory and the legacy 0xa0000-0xbffff window: memory-map select
//! (GR6), chain-4, odd/even and planar access with the four latches, read
//! modes 0/1 and write modes 0-3 (rotate, set/reset, logical operation,
//! bit mask, map mask).
//!
//! Video memory is stored interleaved: byte `4 * i + p` is byte `i` of
//! plane `p`. A chain-4 (mode 13h) address `a` then is simply byte `a`, so
//! that window is a plain linear buffer (see [`super::WindowMapping`]).

use super::regs::Registers;

/// Size of the legacy window (0xa0000-0xbffff).
pub const WINDOW_SIZE: u64 = 0x20000;

/// Bytes after video memory that hold the window's shadow: the odd/even
/// window as the CPU sees it in a text mode ([`text_shadow_fits`]), or one
/// plane in a planar mode that writes just that plane
/// ([`plane_shadow_fits`]); byte `rel` of the window at `rel` (covering
/// the largest memory map, 128 KiB).
pub const TEXT_SHADOW_LEN: usize = 0x2_0000;

/// Whether the window may be served from the text shadow: an odd/even text
/// mode whose CPU accesses are plain loads and stores of planes 0 and 1
/// (odd/even reads and writes, planes 0-1 read, map mask exactly planes
/// 0 and 1, so the font in plane 2 is not written).
pub fn text_shadow_fits(regs: &Registers) -> bool {
    regs.seq[4] & 0x0c == 0
        && regs.gr[5] & 0x10 != 0
        && regs.gr[4] & 0x02 == 0
        && regs.seq[2] & 0x0f == 0x03
}

/// The plane whose window the shadow may hold in a planar (sequential,
/// not chain-4) mode whose CPU accesses are plain loads and stores of one
/// plane: write mode 0 without set/reset, rotation or logical operation,
/// every bit-mask bit, the map mask exactly that plane, and read mode 0
/// reading that same plane. The VGA BIOS loads fonts into plane 2 this
/// way, a byte of the window for a byte of the plane. Window offset `a` is
/// then plane byte `a`. What the window cannot do as memory: a read there
/// does not load the latches (a later write mode 1 or logical operation
/// without a read of its own sees the latches of the last emulated read).
pub fn plane_shadow_fits(regs: &Registers) -> Option<usize> {
    let plain = regs.seq[4] & 0x0c == 0x04
        && regs.gr[5] & 0x1b == 0
        && regs.gr[1] & 0x0f == 0
        && regs.gr[3] == 0
        && regs.gr[8] == 0xff;
    let plane = usize::from(regs.gr[4] & 3);
    (plain && usize::from(regs.seq[2] & 0x0f) == 1 << plane).then_some(plane)
}

/// Copy plane `p`'s first [`TEXT_SHADOW_LEN`] bytes into the shadow at
/// `vram[shadow]`, before the window is served from it.
pub fn plane_to_shadow(vram: &mut [u8], shadow: usize, p: usize) {
    for rel in 0..TEXT_SHADOW_LEN {
        let v = plane_byte(vram, p, rel);
        if let Some(b) = shadow.checked_add(rel).and_then(|a| vram.get_mut(a)) {
            *b = v;
        }
    }
}

/// Copy the shadow back into plane `p`, when the window stops being
/// served from it.
pub fn shadow_to_plane(vram: &mut [u8], shadow: usize, p: usize) {
    for rel in 0..TEXT_SHADOW_LEN {
        let Some(&v) = shadow.checked_add(rel).and_then(|a| vram.get(a)) else {
            return;
        };
        set_plane_byte(vram, p, rel, v);
    }
}

/// Copy the odd/even view of planes 0 and 1 into the text shadow (which
/// starts at `vram[shadow]`), before the window is served from it.
pub fn planes_to_shadow(vram: &mut [u8], shadow: usize) {
    for rel in 0..TEXT_SHADOW_LEN {
        let v = plane_byte(vram, rel & 1, rel & !1);
        if let Some(b) = shadow.checked_add(rel).and_then(|a| vram.get_mut(a)) {
            *b = v;
        }
    }
}

/// Copy the text shadow back into planes 0 and 1, when the window stops
/// being served from it.
pub fn shadow_to_planes(vram: &mut [u8], shadow: usize) {
    for rel in 0..TEXT_SHADOW_LEN {
        let Some(&v) = shadow.checked_add(rel).and_then(|a| vram.get(a)) else {
            return;
        };
        set_plane_byte(vram, rel & 1, rel & !1, v);
    }
}

/// The part of the window the memory-map select (GR6) decodes, as (offset
/// in the window, length).
pub fn map_range(regs: &Registers) -> (u64, u64) {
    match (regs.gr[6] >> 2) & 3 {
        0 => (0, 0x20000),
        1 => (0, 0x10000),
        2 => (0x10000, 0x8000),
        _ => (0x18000, 0x8000),
    }
}

/// Where an access in the window lands, if the memory-map select decodes it.
pub fn window_offset(regs: &Registers, offset: u64) -> Option<usize> {
    let (base, size) = map_range(regs);
    let rel = offset.checked_sub(base)?;
    if rel < size {
        usize::try_from(rel).ok()
    } else {
        None
    }
}

/// Byte `i` of plane `p` of `vram`, or 0 past the end.
pub fn plane_byte(vram: &[u8], p: usize, i: usize) -> u8 {
    i.checked_mul(4)
        .and_then(|a| a.checked_add(p & 3))
        .and_then(|a| vram.get(a))
        .copied()
        .unwrap_or(0)
}

fn set_plane_byte(vram: &mut [u8], p: usize, i: usize, v: u8) {
    if let Some(b) = i
        .checked_mul(4)
        .and_then(|a| a.checked_add(p & 3))
        .and_then(|a| vram.get_mut(a))
    {
        *b = v;
    }
}

/// The four latches, filled by every planar read. Video memory itself is
/// a byte slice the caller passes in (the adapter's own buffer, or the
/// memory block the guest maps as its framebuffer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latches(pub [u8; 4]);

impl Latches {
    /// A guest read at `addr` (the decoded window offset).
    pub fn read(&mut self, regs: &Registers, vram: &[u8], addr: usize) -> u8 {
        if regs.seq[4] & 0x08 != 0 {
            return vram.get(addr).copied().unwrap_or(0xff);
        }
        if regs.gr[5] & 0x10 != 0 {
            // Odd/even: A0 picks the plane within the pair GR4 selects.
            let plane = usize::from(regs.gr[4] & 2) | (addr & 1);
            return plane_byte(vram, plane, addr & !1);
        }
        for (p, l) in self.0.iter_mut().enumerate() {
            *l = addr
                .checked_mul(4)
                .and_then(|a| vram.get(a + p))
                .copied()
                .unwrap_or(0xff);
        }
        if regs.gr[5] & 0x08 == 0 {
            self.0[usize::from(regs.gr[4] & 3)]
        } else {
            // Read mode 1: a bit is set where every plane enabled by the
            // colour don't-care register matches the colour compare.
            let mut differ = 0u8;
            for (p, l) in self.0.iter().enumerate() {
                if regs.gr[7] & (1 << p) != 0 {
                    let want = if regs.gr[2] & (1 << p) != 0 { 0xff } else { 0 };
                    differ |= l ^ want;
                }
            }
            !differ
        }
    }

    /// A guest write of `v` at `addr` (the decoded window offset).
    pub fn write(&self, regs: &Registers, vram: &mut [u8], addr: usize, v: u8) {
        let map_mask = regs.seq[2] & 0x0f;
        if regs.seq[4] & 0x08 != 0 {
            if map_mask & (1 << (addr & 3)) != 0 {
                if let Some(b) = vram.get_mut(addr) {
                    *b = v;
                }
            }
            return;
        }
        if regs.seq[4] & 0x04 == 0 {
            // Odd/even: even addresses reach planes 0 and 2, odd 1 and 3.
            for p in (addr & 1..4).step_by(2) {
                if map_mask & (1 << p) != 0 {
                    set_plane_byte(vram, p, addr & !1, v);
                }
            }
            return;
        }
        let mode = regs.gr[5] & 3;
        let set_reset = regs.gr[0];
        let rotated = v.rotate_right(u32::from(regs.gr[3] & 7));
        let mut mask = regs.gr[8];
        let mut out = [0u8; 4];
        for (p, o) in out.iter_mut().enumerate() {
            let sr = if set_reset & (1 << p) != 0 { 0xff } else { 0 };
            *o = match mode {
                0 if regs.gr[1] & (1 << p) != 0 => sr,
                0 => rotated,
                1 => self.0[p],
                2 => {
                    if v & (1 << p) != 0 {
                        0xff
                    } else {
                        0
                    }
                }
                _ => sr,
            };
        }
        if mode == 3 {
            mask &= rotated;
        }
        if mode != 1 {
            for (p, o) in out.iter_mut().enumerate() {
                let l = self.0[p];
                let r = match (regs.gr[3] >> 3) & 3 {
                    0 => *o,
                    1 => *o & l,
                    2 => *o | l,
                    _ => *o ^ l,
                };
                *o = (r & mask) | (l & !mask);
            }
        }
        for (p, o) in out.iter().enumerate() {
            if map_mask & (1 << p) != 0 {
                set_plane_byte(vram, p, addr, *o);
            }
        }
    }
}
